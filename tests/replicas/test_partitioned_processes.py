"""A partitioned projection in real processes: ``asyncsourcing run`` started,
stopped and SIGKILLed while a writer saves events.

Runners join (they are given partitions that others release), leave (their
partitions are claimed by the others) and die (their partitions are taken
over). Whatever happens, the audit log has every event exactly once, and
each aggregate's events in order.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from asyncsourcing.application import Application
from asyncsourcing.domain import Aggregate
from asyncsourcing.leases import partition_lease_name
from asyncsourcing.persistence import InfrastructureFactory
from asyncsourcing.utils import Environment
from examples.auditlog.postgres import PostgresAuditLog
from examples.auditlog.projection import AuditLogProjection
from examples.auditlog.sqlite import SQLiteAuditLog
from tests.projection.test_partitioned import check_exactly_once_in_order
from tests.support.paths import ROOT

PARTITIONS = AuditLogProjection.partitions

VIEWS: dict[str, type[Any]] = {
    "sqlite": SQLiteAuditLog,
    "postgres": PostgresAuditLog,
}


def command(view: type[Any]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "asyncsourcing",
        "run",
        "--app",
        "asyncsourcing.application:Application",
        "--projection",
        "examples.auditlog.projection:AuditLogProjection",
        "--view",
        f"{view.__module__}:{view.__qualname__}",
        "--no-progress",
        "--log-level",
        "INFO",
        "--timeout",
        "120",
    ]


class Runners:
    """Processes running the audit log, the test's view of it, and a writer."""

    def __init__(self, backend: str, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.command = command(VIEWS[backend])
        self.processes: list[subprocess.Popen[bytes]] = []
        self.factory = InfrastructureFactory.construct(
            Environment(AuditLogProjection.name, env)
        )
        self.view: Any = self.factory.construct_tracking_recorder(VIEWS[backend])
        self.app = Application[UUID](env)
        self.saved = 0

    def start(self) -> subprocess.Popen[bytes]:
        log = self.log_dir / f"runner{len(self.processes)}.log"
        process = subprocess.Popen(
            self.command,
            cwd=ROOT,
            env={**os.environ, **self.env},
            stdout=subprocess.DEVNULL,
            stderr=log.open("wb"),
        )
        self.processes.append(process)
        return process

    def logs(self) -> str:
        return "\n".join(
            (self.log_dir / f"runner{i}.log").read_text()
            for i in range(len(self.processes))
        )

    async def owners(self) -> dict[int, str | None]:
        """Each partition's owner's process id, as its lease says."""
        leases = self.view.leases
        owners: dict[int, str | None] = {}
        for partition in range(PARTITIONS):
            lease = await leases.read(
                self.app.name, partition_lease_name(AuditLogProjection.name, partition)
            )
            live = lease is not None and lease.expires_at > datetime.now(UTC)
            owners[partition] = lease.owner.split(":")[1] if lease and live else None
        return owners

    async def owned_by(self, processes: list[subprocess.Popen[bytes]]) -> None:
        """Wait until the partitions are shared by ``processes``, each owning some."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        pids = {str(p.pid) for p in processes}
        while loop.time() < deadline:
            owners = await self.owners()
            if set(owners.values()) == pids:
                return
            await asyncio.sleep(0.1)
        pytest.fail(f"partitions not shared by {pids}: {owners}\n{self.logs()}")

    async def write(self, stop: asyncio.Event) -> None:
        """Save events of a few aggregates, a few at a time, until ``stop``."""
        aggregates = [Aggregate() for _ in range(20)]
        while not stop.is_set():
            chosen = random.sample(aggregates, 3)
            for aggregate in chosen:
                aggregate.trigger_event(Aggregate.Event)
            await self.app.save(*chosen)
            self.saved += 1
            await asyncio.sleep(0.01)

    def stop_all(self) -> None:
        for process in self.processes:
            with suppress(ProcessLookupError):
                process.kill()
            process.wait(10)


@asynccontextmanager
async def runners(
    backend: str, env: dict[str, str], tmp_path: Path
) -> AsyncIterator[Runners]:
    group = Runners(backend, {**env, "LEASE_TTL": "2"}, tmp_path)
    await group.view.leases.create_table()
    try:
        yield group
    finally:
        group.stop_all()
        await group.app.close()
        await group.factory.close()


async def test_runners_join_leave_and_die_while_events_are_written(
    audit_backend: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    name, env = audit_backend
    async with runners(name, env, tmp_path) as group:
        stop_writing = asyncio.Event()
        writing = asyncio.create_task(group.write(stop_writing))
        try:
            first = group.start()
            await group.owned_by([first])
            second = group.start()  # Joins: the first releases some.
            await group.owned_by([first, second])
            third = group.start()
            await group.owned_by([first, second, third])

            second.kill()  # Dies: its partitions are taken over.
            await group.owned_by([first, third])
            first.send_signal(signal.SIGTERM)  # Leaves: releases them.
            assert first.wait(20) == 0, group.logs()
            await group.owned_by([third])
            fourth = group.start()
            await group.owned_by([third, fourth])
        finally:
            stop_writing.set()
            await writing
        last = await group.app.recorder.max_notification_id()
        assert last is not None and group.saved > 0
        await group.view.wait(group.app.name, last, timeout=30)
        check_exactly_once_in_order(await group.view.entries(), last)
        assert third.poll() is None and fourth.poll() is None, group.logs()
