"""A projection runner killed with SIGKILL while catching up loses nothing and
repeats nothing (SPEC invariant 1: a processed event's tracking and the view's
update commit together or not at all).

A child process runs a ProjectionRunner (batches of 50 events, 1 ms of work
per event) over 6,000 recorded events into a view that records every
processed notification id with its tracking; it is killed with SIGKILL at
random moments, 10 times, each time while it is catching up. After each
kill the view holds exactly the events up to its tracking position, each
once; the next child resumes from there; the last one finishes the job.
Run on Postgres and on SQLite files.

The same is done with the bulk event counters of examples/eventcounters
(one view command per batch, with the tracking of its last event), over
3,000 aggregates of two events each: after each kill, its counters equal
the created and subsequent events up to its tracking position. And with
version 2 of the bulk counters, rebuilt beside version 1 (which serves):
a building version's transactions also read its record, locked.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from asyncsourcing.application import Application
from asyncsourcing.domain import Aggregate
from asyncsourcing.persistence import InfrastructureFactory, Tracking
from asyncsourcing.projection import ProjectionRunner
from asyncsourcing.projection.environment import construct_env
from asyncsourcing.versions import VersionStatus
from examples.eventcounters.postgres import PostgresEventCounters
from examples.eventcounters.projection import BulkEventCountersProjection
from examples.eventcounters.sqlite import SQLiteEventCounters
from tests.support.faults import (
    Counter,
    Counters,
    PostgresRecordingView,
    SQLiteRecordingView,
    check_exactly_once,
)
from tests.support.paths import ROOT
from tests.support.postgres import factory_env

N_EVENTS = 6000
KILLS = 10


async def record_events(env: dict[str, str]) -> list[int]:
    ids: list[int] = []
    async with Counters(env) as app:
        for _ in range(N_EVENTS // 200):
            recordings = await app.save(*(Counter() for _ in range(200)))
            ids.extend(r.notification.id for r in recordings)
    return ids


async def record_counted_events(env: dict[str, str]) -> list[int]:
    """Aggregates created and then updated: odd indexes of the ids are the
    subsequent events."""
    ids: list[int] = []
    async with Application[UUID](env) as app:
        for _ in range(N_EVENTS // 200):
            aggregates = [Aggregate() for _ in range(100)]
            for aggregate in aggregates:
                aggregate.trigger_event(Aggregate.Event)
            recordings = await app.save(*aggregates)
            ids.extend(r.notification.id for r in recordings)
    return ids


async def check_counted_once(
    view: Any, app_name: str, ids: Sequence[int]
) -> tuple[int | None, list[int]]:
    """Assert the counters counted exactly the events up to the view's
    position, once each; return the position and the ids counted."""
    position = await view.max_tracking_id(app_name)
    counted = [i for i in ids if position is not None and i <= position]
    created = sum(1 for i in ids[0::2] if position is not None and i <= position)
    assert await view.get_created_event_counter() == created
    assert await view.get_subsequent_event_counter() == len(counted) - created
    return position, sorted(counted)


class SlowBulkEventCounters(BulkEventCountersProjection):
    """The bulk event counters, with ``delay`` seconds of "work" per event,
    done inside the batch's transaction (before its one write)."""

    delay = 0.0

    async def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        await asyncio.sleep(self.delay)
        await super().process_event(domain_event, tracking)

    async def process_events(self, events: Sequence[tuple[Any, Tracking]]) -> None:
        await asyncio.sleep(self.delay * len(events))
        await super().process_events(events)


async def record_counted_events_beside_version_1(env: dict[str, str]) -> list[int]:
    """The events of :func:`record_counted_events`, and version 1 of the
    bulk counters registered (serving), so that version 2 builds."""
    ids = await record_counted_events(env)
    async with ProjectionRunner(
        application_class=Application[UUID],
        projection_class=BulkEventCountersProjection,
        view_class=BULK_VIEWS[env["PERSISTENCE_MODULE"].rsplit(".", 1)[-1]],
        env=env,
    ) as runner:
        runner.stop()
    return ids


async def run_bulk_counters(backend: str, delay: float, version: int) -> None:
    """The child process of the bulk counters cases (``python -m`` this module)."""
    view_class = BULK_VIEWS[backend]
    runner_class = type("Runner", (ProjectionRunner,), {"max_batch_size": 50})
    projection_class = type(
        "SlowBulkEventCounters",
        (SlowBulkEventCounters,),
        {"delay": delay, "name": BulkEventCountersProjection.name, "version": version},
    )
    async with runner_class(
        application_class=Application[UUID],
        projection_class=projection_class,
        view_class=view_class,
    ) as runner:
        print("ready", flush=True)
        await runner.run_forever()


BULK_VIEWS: dict[str, type[Any]] = {
    "postgres": PostgresEventCounters,
    "sqlite": SQLiteEventCounters,
}


@dataclass(frozen=True)
class Case:
    """A projection to kill: how to record its events, run it in a child
    process, and check its view."""

    projection_name: str
    app_name: str
    views: dict[str, type[Any]]
    record: Callable[[dict[str, str]], Awaitable[list[int]]]
    child_args: tuple[str, ...]
    check: Callable[[Any, str, Sequence[int]], Awaitable[tuple[int | None, list[int]]]]
    version: int = 1


CASES = {
    "recording": Case(
        "recording",
        "Counters",
        {"postgres": PostgresRecordingView, "sqlite": SQLiteRecordingView},
        record_events,
        ("tests.support.faults", "runner"),
        check_exactly_once,
    ),
    "bulk-counters": Case(
        BulkEventCountersProjection.name,
        "Application",
        BULK_VIEWS,
        record_counted_events,
        ("tests.faults.test_crash", "1"),
        check_counted_once,
    ),
    "bulk-counters-v2": Case(
        BulkEventCountersProjection.name,
        "Application",
        BULK_VIEWS,
        record_counted_events_beside_version_1,
        ("tests.faults.test_crash", "2"),
        check_counted_once,
        version=2,
    ),
}


@pytest.fixture(params=list(CASES))
def case(request: pytest.FixtureRequest) -> Case:
    return CASES[request.param]


async def start_runner(
    env: dict[str, str], backend: str, delay: float, case: Case
) -> Any:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        *case.child_args,
        backend,
        str(delay),
        cwd=ROOT,
        env={**os.environ, **env, "FAULTS_MAX_BATCH_SIZE": "50"},
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None
    line = await asyncio.wait_for(child.stdout.readline(), 30)
    assert line.strip() == b"ready", line
    return child


async def kill_and_restart(
    env: dict[str, str], backend: str, case: Case, ids: list[int]
) -> None:
    rng = random.Random()
    # The view as the runner's projection configures it.
    factory: InfrastructureFactory[Any] = InfrastructureFactory.construct(
        construct_env(case.projection_name, env, version=case.version)
    )
    view = factory.construct_tracking_recorder(case.views[backend])
    positions: list[int | None] = []
    try:
        for _ in range(KILLS):
            child = await start_runner(env, backend, 0.001, case)
            try:
                await asyncio.sleep(rng.uniform(0.05, 0.5))
                assert child.returncode is None, "the runner stopped by itself"
            finally:
                child.send_signal(signal.SIGKILL)
                await child.wait()
            assert child.returncode == -signal.SIGKILL
            position, _ = await case.check(view, case.app_name, ids)
            # Killed while catching up, not after.
            assert position is None or position < max(ids)
            positions.append(position)
        # Progress was made across the kills (batches were committed).
        assert positions[-1] is not None and positions[-1] > min(ids)

        if case.version > 1:
            record = next(
                r
                for r in await view.versions.records(case.projection_name)
                if r.version == case.version
            )
            assert record.status is VersionStatus.BUILDING

        # The last runner finishes the job: every event exactly once.
        child = await start_runner(env, backend, 0.0, case)
        try:
            for _ in range(600):
                if await view.max_tracking_id(case.app_name) == max(ids):
                    break
                await asyncio.sleep(0.05)
        finally:
            child.send_signal(signal.SIGTERM)
            await child.wait()
        position, processed = await case.check(view, case.app_name, ids)
        assert position == max(ids)
        assert processed == sorted(ids)
    finally:
        await factory.close()


@pytest.fixture
def sqlite_env(tmp_path: Path) -> dict[str, str]:
    return {
        "PERSISTENCE_MODULE": "asyncsourcing.sqlite",
        "SQLITE_DBNAME": str(tmp_path / "app.sqlite"),
        "RECORDING_SQLITE_DBNAME": str(tmp_path / "view.sqlite"),
        "BULKEVENTCOUNTERS_SQLITE_DBNAME": str(tmp_path / "view.sqlite"),
    }


async def test_sigkilled_runner_resumes_exactly_once_on_sqlite(
    sqlite_env: dict[str, str], case: Case
) -> None:
    async with asyncio.timeout(120):
        ids = await case.record(sqlite_env)
        await kill_and_restart(sqlite_env, "sqlite", case, ids)


@pytest.mark.postgres
async def test_sigkilled_runner_resumes_exactly_once_on_postgres(
    postgres_env: dict[str, str], pg_schema: str, case: Case
) -> None:
    env = factory_env(postgres_env, pg_schema)
    async with asyncio.timeout(120):
        ids = await case.record(env)
        await kill_and_restart(env, "postgres", case, ids)


if __name__ == "__main__":
    # The bulk counters' child process: python -m tests.faults.test_crash
    # VERSION BACKEND DELAY (the projection's topics name no class of this
    # module).
    asyncio.run(run_bulk_counters(sys.argv[2], float(sys.argv[3]), int(sys.argv[1])))
