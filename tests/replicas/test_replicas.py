"""Replicas in real processes: ``asyncsourcing run`` started several times.

One process leads and the others stand by. Whatever happens to the leader
(SIGKILL, SIGSTOP past its lease, its connections terminated), a standby
takes over and every event is counted exactly once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from asyncsourcing.application import Application
from asyncsourcing.domain import Aggregate
from asyncsourcing.leases import Lease
from asyncsourcing.persistence import InfrastructureFactory, PersistenceError
from asyncsourcing.testing.pgserver import TemporaryPostgres
from asyncsourcing.utils import Environment
from examples.eventcounters.postgres import PostgresEventCounters
from examples.eventcounters.projection import EventCountersProjection
from tests.support.paths import ROOT
from tests.support.postgres import admin_connection, factory_env

pytestmark = pytest.mark.postgres

REPLICA = "asyncsourcing-replica"  # The replicas' connections, not the test's.
COMMAND = [
    sys.executable,
    "-m",
    "asyncsourcing",
    "run",
    "--app",
    "asyncsourcing.application:Application",
    "--projection",
    "examples.eventcounters.projection:EventCountersProjection",
    "--view",
    "examples.eventcounters.postgres:PostgresEventCounters",
    "--no-progress",
    "--log-level",
    "INFO",
    "--timeout",
    "120",
]


class Replicas:
    """Processes running the event counters projection, and the test's view."""

    def __init__(
        self, env: dict[str, str], log_dir: Path, command: list[str] = COMMAND
    ) -> None:
        self.env = env
        self.log_dir = log_dir
        self.command = command
        self.processes: list[subprocess.Popen[bytes]] = []
        factory = InfrastructureFactory.construct(
            Environment(EventCountersProjection.name, env)
        )
        self.factory = factory
        self.view: PostgresEventCounters = factory.construct_tracking_recorder(
            PostgresEventCounters
        )
        self.app = Application[UUID](env)

    def start(self) -> subprocess.Popen[bytes]:
        log = self.log_dir / f"replica{len(self.processes)}.log"
        process = subprocess.Popen(
            self.command,
            cwd=ROOT,
            env={**os.environ, **self.env, "POSTGRES_APPLICATION_NAME": REPLICA},
            stdout=subprocess.DEVNULL,
            stderr=log.open("wb"),
        )
        self.processes.append(process)
        return process

    def log(self, process: subprocess.Popen[bytes]) -> str:
        index = self.processes.index(process)
        return (self.log_dir / f"replica{index}.log").read_text()

    async def lease(self) -> Lease:
        leases = self.view.leases
        lease = await leases.read(self.app.name, EventCountersProjection.name)
        assert lease is not None
        return lease

    async def leader(self, *, after_epoch: int = 0, timeout: float = 15) -> Any:
        """The process that holds the lease at an epoch above ``after_epoch``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            with suppress(AssertionError):
                lease = await self.lease()
                if lease.epoch > after_epoch:
                    pid = int(lease.owner.split(":")[1])
                    for process in self.processes:
                        if process.pid == pid:
                            return process, lease
            await asyncio.sleep(0.05)
        pytest.fail(f"no leader after epoch {after_epoch}: {self.logs()}")

    async def all_running(self, timeout: float = 15) -> None:
        """Wait until every live process has started, as leader or standby."""
        leases = self.view.leases
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        live = {str(p.pid) for p in self.processes if p.poll() is None}
        while loop.time() < deadline:
            present = await leases.present(self.app.name, EventCountersProjection.name)
            if live <= {runner.owner.split(":")[1] for runner in present}:
                return
            await asyncio.sleep(0.05)
        pytest.fail(f"not all replicas are running: {self.logs()}")

    async def save(self, count: int) -> int:
        recordings = await self.app.save(*(Aggregate() for _ in range(count)))
        return recordings[-1].notification.id

    async def assert_counted_once(self, count: int, last: int) -> None:
        await self.view.wait(self.app.name, last, timeout=20)
        assert await self.view.get_created_event_counter() == count, self.logs()

    def logs(self) -> str:
        return "\n".join(self.log(p) for p in self.processes)

    def stop(self) -> None:
        for process in self.processes:
            with suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGCONT)
            process.kill()
            process.wait(10)


@asynccontextmanager
async def replicas(
    postgres_env: dict[str, str],
    schema: str,
    tmp_path: Path,
    count: int,
    command: list[str] = COMMAND,
    **env: str,
) -> AsyncIterator[Replicas]:
    group = Replicas(factory_env(postgres_env, schema, **env), tmp_path, command)
    await group.view.create_table()
    await group.view.leases.create_table()
    try:
        for _ in range(count):
            group.start()
        yield group
    finally:
        group.stop()
        await group.app.close()
        await group.factory.close()


@contextmanager
def stopped(process: subprocess.Popen[bytes]) -> Iterator[None]:
    os.kill(process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(process.pid, signal.SIGCONT)


async def test_sigkill_of_the_leader_a_standby_takes_over_exactly_once(
    postgres_env: dict[str, str], pg_schema: str, tmp_path: Path
) -> None:
    async with replicas(postgres_env, pg_schema, tmp_path, 3) as group:
        leader, lease = await group.leader()
        last = await group.save(30)
        await group.assert_counted_once(30, last)

        leader.kill()  # SIGKILL: no clean release.
        writing = asyncio.create_task(group.save(30))
        successor, new_lease = await group.leader(after_epoch=lease.epoch, timeout=5)
        assert successor is not leader
        last = await writing
        await group.assert_counted_once(60, last)
        # The takeover went through the fast path, not the lease's expiry.
        assert (new_lease.acquired_at - lease.acquired_at).total_seconds() < 10


async def test_a_leader_paused_past_its_lease_is_fenced_and_stands_by(
    postgres_env: dict[str, str], pg_schema: str, tmp_path: Path
) -> None:
    async with replicas(postgres_env, pg_schema, tmp_path, 2, LEASE_TTL="1") as group:
        leader, lease = await group.leader()
        last = await group.save(20)
        await group.assert_counted_once(20, last)

        with stopped(leader):  # SIGSTOP; SIGCONT on the way out.
            # Its session lives on, so only the lease's expiry lets the
            # standby take over.
            successor, new_lease = await group.leader(after_epoch=lease.epoch)
            assert successor is not leader
            last = await group.save(20)
            await group.assert_counted_once(40, last)

        # Resumed, the former leader finds its lease gone and stands by.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while "standing by" not in group.log(leader):
            assert loop.time() < deadline, group.log(leader)
            await asyncio.sleep(0.05)
        assert leader.poll() is None  # Still running, as a standby.
        last = await group.save(20)
        await group.assert_counted_once(60, last)
        assert (await group.lease()).epoch == new_lease.epoch


async def test_the_leaders_connections_terminated_a_leader_goes_on(
    postgres_env: dict[str, str], pg_schema: str, tmp_path: Path
) -> None:
    async with replicas(postgres_env, pg_schema, tmp_path, 2) as group:
        leader, lease = await group.leader()
        await group.all_running()  # Not starting: a failed start exits.
        last = await group.save(20)
        await group.assert_counted_once(20, last)

        writing = asyncio.create_task(group.save(40))
        async with admin_connection(postgres_env) as admin:
            terminated = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = $1",
                REPLICA,
            )
        assert terminated >= 4  # Each replica's pool and its lock's session.
        last = await writing
        # The projection's policy is "stop": a leader whose work is cut
        # stops, and a standby (which stands by again after a database
        # error) takes over. A leader that was idle when its sessions ended
        # reconnects as it next reads, and leads on: either way, one leads.
        await group.assert_counted_once(60, last)
        current, current_lease = await group.leader()
        assert current.poll() is None, group.logs()
        if current is leader:
            assert current_lease.epoch == lease.epoch


class RetryingCounters(EventCountersProjection):
    """The event counters, reconnecting after database errors."""

    name = EventCountersProjection.name
    error_policy = "retry"


async def test_the_database_restarted_the_replicas_carry_on_exactly_once(
    tmp_path: Path,
) -> None:
    with TemporaryPostgres(dbname="replicas") as server:
        env = {**server.env(), "POSTGRES_SCHEMA": "public"}
        command = [*COMMAND]
        command[command.index("--projection") + 1] = (
            "tests.replicas.test_replicas:RetryingCounters"
        )
        async with replicas(env, "public", tmp_path, 2, command=command) as group:
            await group.all_running()  # Not starting: a failed start exits.
            last = await group.save(20)
            await group.assert_counted_once(20, last)

            server.restart("immediate")  # A crash of the database server.

            last = await eventually_saved(group, 20)
            await group.assert_counted_once(40, last)
            assert all(p.poll() is None for p in group.processes), group.logs()


async def eventually_saved(group: Replicas, count: int, timeout: float = 20) -> int:
    """Save, trying again while the restarted server refuses connections."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            return await group.save(count)
        except PersistenceError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.2)
