"""Takeover latency: replicas of a projection in processes of their own,
their leader killed one time after another.

``--replicas`` processes run ``python -m asyncsourcing run`` with the example
event counters projection on PostgreSQL, as ``tests/replicas/test_replicas.py`` does:
one leads, the others stand by. For each kill, once the leader has processed
an event and every other replica stands by, :class:`TakeoverRun` SIGKILLs
the leader, saves one event from this process at once, and times from the
SIGKILL until this process's own view's ``wait()`` returns for that event's
position; then it starts a replacement, so that there are always standbys.
Used by :mod:`benchmarks.takeover`.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg

from asyncsourcing.application import Application
from asyncsourcing.domain import Aggregate
from asyncsourcing.leases import Lease
from asyncsourcing.persistence import InfrastructureFactory
from asyncsourcing.utils import Environment
from benchmarks.config import APP_NAME, PROJECTION_NAME
from benchmarks.progress import log
from benchmarks.server import PostgresServer
from examples.eventcounters.postgres import PostgresEventCounters

__all__ = [
    "Configuration",
    "Replicas",
    "TakeoverRun",
    "Takeovers",
    "measure_takeovers",
]

ROOT = Path(__file__).resolve().parent.parent

#: The replicas' connections are named ``REPLICA-<n>`` (``:listen`` for the
#: fast path's lock session), so that each replica's can be told apart.
REPLICA = "takeover-replica"
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
    # A safety net: replicas left behind by a harness that was killed end
    # by themselves.
    "--timeout",
    "1800",
]

#: Seconds a replica may take to start and stand by (a loaded machine).
READY_TIMEOUT = 60.0


@dataclass(frozen=True)
class Configuration:
    """Lease settings the replicas run with, and the issue's goal for them."""

    label: str
    fast_takeover: bool
    ttl: float

    @property
    def goal(self) -> float:
        """Seconds the p99 should stay under: 1 s, or the TTL plus 1 s."""
        return 1.0 if self.fast_takeover else self.ttl + 1.0

    @property
    def goal_text(self) -> str:
        if self.fast_takeover:
            return "p99 <= 1 s"
        return f"p99 <= TTL + 1 s = {self.goal:g} s"

    def env(self) -> dict[str, str]:
        return {
            "LEASE_FAST_TAKEOVER": "true" if self.fast_takeover else "false",
            "LEASE_TTL": f"{self.ttl:g}",
        }


@dataclass
class Takeovers:
    """The takeover latencies (seconds) of one configuration."""

    configuration: Configuration
    latencies: list[float] = field(default_factory=list)
    #: Of each latency, the part until a standby took the lease: from the
    #: server's clock just before the SIGKILL to the lease's ``acquired_at``.
    until_lease: list[float] = field(default_factory=list)
    #: Notes on the replicas' logs: warnings, errors, tracebacks.
    log_notes: list[str] = field(default_factory=list)


class Replicas:
    """``asyncsourcing run`` processes of the event counters projection."""

    def __init__(self, env: dict[str, str], log_dir: Path, prefix: str) -> None:
        self.env = env
        self.log_dir = log_dir
        self.prefix = prefix
        self.started: list[subprocess.Popen[bytes]] = []
        self.live: list[subprocess.Popen[bytes]] = []

    def name(self, process: subprocess.Popen[bytes]) -> str:
        return f"{REPLICA}-{self.started.index(process)}"

    def log_path(self, process: subprocess.Popen[bytes]) -> Path:
        return self.log_dir / f"{self.prefix}-{self.started.index(process)}.log"

    def start(self) -> subprocess.Popen[bytes]:
        index = len(self.started)
        log_file = (self.log_dir / f"{self.prefix}-{index}.log").open("wb")
        with log_file:
            process = subprocess.Popen(
                COMMAND,
                cwd=ROOT,
                env={
                    **os.environ,
                    **self.env,
                    "POSTGRES_APPLICATION_NAME": f"{REPLICA}-{index}",
                },
                stdout=subprocess.DEVNULL,
                stderr=log_file,
            )
        self.started.append(process)
        self.live.append(process)
        return process

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        """SIGKILL: no clean release of the lease, as in a crash."""
        os.kill(process.pid, signal.SIGKILL)
        self.live.remove(process)

    def by_owner(self, owner: str) -> subprocess.Popen[bytes] | None:
        """The live process named in a lease's owner (``host:pid:suffix``)."""
        pid_text = owner.split(":")[1] if owner.count(":") >= 2 else ""
        for process in self.live:
            if str(process.pid) == pid_text:
                return process
        return None

    def check_alive(self) -> None:
        for process in self.live:
            if process.poll() is not None:
                log_text = self.log_path(process).read_text()[-2000:]
                msg = (
                    f"replica {self.name(process)} exited with status "
                    f"{process.returncode}:\n{log_text}"
                )
                raise RuntimeError(msg)

    def stop(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.kill()
            process.wait(10)

    def log_notes(self) -> list[str]:
        """Each distinct WARNING, ERROR or traceback line of the replicas' logs,
        with the number of times it occurred."""
        counts: dict[str, int] = {}
        for process in self.started:
            for line in self.log_path(process).read_text(errors="replace").splitlines():
                if line.startswith(("WARNING", "ERROR", "CRITICAL", "Traceback")):
                    # Owners and epochs differ from one line to the next.
                    key = re.sub(r"'[^']*:\d+:[0-9a-f]{8}'|\d+", "N", line)[:200]
                    counts[key] = counts.get(key, 0) + 1
        return [f"{n}x {line}" for line, n in counts.items()]


async def _admin(server: PostgresServer) -> asyncpg.Connection[Any]:
    s = server.settings
    return await asyncpg.connect(
        host=s["POSTGRES_HOST"],
        port=int(s["POSTGRES_PORT"]),
        user=s["POSTGRES_USER"],
        password=s["POSTGRES_PASSWORD"],
        database=s["POSTGRES_DBNAME"],
        server_settings={"application_name": "takeover-harness"},
    )


async def _standing_by(
    admin: asyncpg.Connection[Any], replicas: Replicas, process: Any, fast: bool
) -> bool:
    """Whether ``process`` is up and would take over now.

    Seen from the server, not from the replica's log: on the fast path its
    lock session waits for the advisory lock; without it, its pool has
    connected (it tries to take the lease every ``standby_interval``).
    """
    name = replicas.name(process)
    if fast:
        found = await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 "
            "AND wait_event_type = 'Lock' AND wait_event = 'advisory'",
            f"{name}:listen",
        )
    else:
        found = await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            name,
        )
    return bool(found)


class TakeoverRun:
    """One configuration's replicas, this process's application and view."""

    def __init__(
        self,
        server: PostgresServer,
        configuration: Configuration,
        replicas: int,
        log_dir: Path,
    ) -> None:
        self.configuration = configuration
        self.count = replicas
        self.env = {
            "PERSISTENCE_MODULE": "asyncsourcing.postgres",
            **server.env(),
            **configuration.env(),
        }
        prefix = "fast" if configuration.fast_takeover else "expiry"
        self.replicas = Replicas(self.env, log_dir, prefix)
        self.server = server
        self.factory: InfrastructureFactory[Any] = InfrastructureFactory.construct(
            Environment(PROJECTION_NAME, self.env)
        )
        self.view: PostgresEventCounters = self.factory.construct_tracking_recorder(
            PostgresEventCounters
        )
        self.app = Application[UUID](self.env)
        self.saved = 0

    async def lease(self) -> Lease | None:
        return await self.view.leases.read(APP_NAME, PROJECTION_NAME)

    async def leader(self, after_epoch: int) -> tuple[Any, Lease]:
        """The live replica leading at an epoch above ``after_epoch``."""
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            self.replicas.check_alive()
            lease = await self.lease()
            if lease is not None and lease.epoch > after_epoch:
                process = self.replicas.by_owner(lease.owner)
                if process is not None:
                    return process, lease
            await asyncio.sleep(0.02)
        msg = f"no leader after epoch {after_epoch} in {READY_TIMEOUT:g} s"
        raise TimeoutError(msg)

    async def all_standing_by(
        self, admin: asyncpg.Connection[Any], leader: Any
    ) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        fast = self.configuration.fast_takeover
        for process in self.replicas.live:
            if process is leader:
                continue
            while not await _standing_by(admin, self.replicas, process, fast):
                self.replicas.check_alive()
                if time.monotonic() > deadline:
                    msg = f"{self.replicas.name(process)} not standing by"
                    raise TimeoutError(msg)
                await asyncio.sleep(0.02)

    async def save(self) -> int:
        recordings = await self.app.save(Aggregate())
        self.saved += 1
        return recordings[-1].notification.id

    async def run(self, kills: int) -> Takeovers:
        result = Takeovers(self.configuration)
        await self.view.create_table()
        await self.view.leases.create_table()
        admin = await _admin(self.server)
        try:
            for _ in range(self.count):
                self.replicas.start()
            epoch = 0
            for kill in range(kills):
                leader, lease = await self.leader(after_epoch=epoch)
                epoch = lease.epoch
                # The leader processes: an event it has processed, not just
                # a lease it has taken.
                await self.view.wait(APP_NAME, await self.save(), timeout=60)
                await self.all_standing_by(admin, leader)
                # Uniformly placed in the leader's renewal cycle (a third of
                # the TTL): without the fast path, the lease's remaining
                # time at the kill depends on it.
                ttl = self.configuration.ttl
                await asyncio.sleep(random.uniform(0, min(ttl / 3, 1.0)))

                # The server's clock, which stamps the lease's acquired_at.
                killed_at = await admin.fetchval("SELECT clock_timestamp()")
                started = time.perf_counter()
                self.replicas.kill(leader)
                position = await self.save()
                await self.view.wait(APP_NAME, position, timeout=ttl + 60)
                latency = time.perf_counter() - started

                successor, new_lease = await self.leader(after_epoch=epoch)
                if successor is leader:  # pragma: no cover (by_owner: live only)
                    msg = "the killed leader still holds the lease"
                    raise AssertionError(msg)
                until_lease = (new_lease.acquired_at - killed_at).total_seconds()
                result.latencies.append(latency)
                result.until_lease.append(until_lease)
                log(
                    f"  {self.configuration.label} kill {kill + 1}/{kills}: "
                    f"{latency * 1000:.0f} ms, lease taken after "
                    f"{until_lease * 1000:.0f} ms (epoch {epoch} -> {new_lease.epoch})"
                )
                leader.wait(10)  # Reaped: gone from the process table too.
                self.replicas.start()
            counted = await self.view.get_created_event_counter()
            if counted != self.saved:
                msg = f"the view counted {counted} events, {self.saved} were saved"
                raise AssertionError(msg)
        finally:
            self.replicas.stop()
            await admin.close()
            await self.app.close()
            await self.factory.close()
            result.log_notes = self.replicas.log_notes()
        return result


def measure_takeovers(
    server: PostgresServer,
    configurations: Sequence[Configuration],
    kills: int,
    replicas: int,
) -> list[Takeovers]:
    results = []
    with tempfile.TemporaryDirectory(prefix="asyncsourcing-takeover-") as log_dir:
        for configuration in configurations:
            log(f"takeover / {configuration.label}: {kills} kills, {replicas} replicas")
            server.drop_tables()
            run = TakeoverRun(server, configuration, replicas, Path(log_dir))
            results.append(asyncio.run(run.run(kills)))
    return results
