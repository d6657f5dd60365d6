"""Several runners of one projection at once: every event applied exactly once.

Replicas of a service each run the projection. With leadership (the
default) one runner processes and the others stand by; without it
(``LEADERSHIP=false``) the runners of one view race for the same events,
which is what these tests do. Each runner's view transaction locks the
application's tracking first and skips what another runner recorded
meanwhile; a batch's tracking is a compare-and-set against the position it
started from. Whoever wins, the view counts each event once, no runner
stops, and none deadlocks.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from asyncsourcing.application import Application
from asyncsourcing.domain import Aggregate
from asyncsourcing.projection import ProjectionRunner
from examples.eventcounters.postgres import PostgresEventCounters
from examples.eventcounters.projection import EventCountersProjection
from examples.eventcounters.sqlite import SQLiteEventCounters
from tests.support.postgres import factory_env

RUNNERS = 3
SAVES_PER_RUNNER = 20
AGGREGATES_PER_SAVE = 5  # Two events each: created, and one more.


async def run_trial(env: dict[str, str], view_class: type[Any]) -> None:
    """Three runners follow while each of their applications records events."""
    env = {**env, "LEADERSHIP": "false"}
    runners = [
        ProjectionRunner(
            application_class=Application[UUID],
            projection_class=EventCountersProjection,
            view_class=view_class,
            env=env,
            # An error of any kind would be counted, and stop the runner.
            error_policy="stop",
        )
        for _ in range(RUNNERS)
    ]
    async with contextlib.AsyncExitStack() as stack:
        for runner in runners:
            await stack.enter_async_context(runner)

        async def write(app: Application[UUID]) -> None:
            for _ in range(SAVES_PER_RUNNER):
                aggregates = []
                for _ in range(AGGREGATES_PER_SAVE):
                    aggregate = Aggregate()
                    aggregate.trigger_event(Aggregate.Event)
                    aggregates.append(aggregate)
                await app.save(*aggregates)

        await asyncio.gather(*(write(runner.app) for runner in runners))
        last = await runners[0].app.recorder.max_notification_id()
        assert last is not None
        for runner in runners:
            await runner.wait(last, timeout=30)

        aggregates = RUNNERS * SAVES_PER_RUNNER * AGGREGATES_PER_SAVE
        view = runners[0].view
        assert await view.get_created_event_counter() == aggregates
        assert await view.get_subsequent_event_counter() == aggregates
        processed = 0
        for runner in runners:
            stats = await runner.statistics()
            assert stats.is_running, stats
            assert stats.errors == 0, stats.last_error
            assert stats.skipped == stats.parked == 0
            processed += stats.events_processed
        # Between them, the runners processed each event once.
        assert processed == last == 2 * aggregates


@pytest.mark.parametrize("trial", range(5))
async def test_sqlite_runners_of_one_view_apply_each_event_once(
    tmp_path: Path, trial: int
) -> None:
    env = {
        "PERSISTENCE_MODULE": "asyncsourcing.sqlite",
        "SQLITE_DBNAME": str(tmp_path / "app.sqlite"),
        "EVENTCOUNTERS_SQLITE_DBNAME": str(tmp_path / "view.sqlite"),
    }
    await run_trial(env, SQLiteEventCounters)


@pytest.mark.postgres
@pytest.mark.parametrize("trial", range(12))
async def test_postgres_runners_of_one_view_apply_each_event_once(
    postgres_env: dict[str, str], pg_schema: str, trial: int
) -> None:
    await run_trial(factory_env(postgres_env, pg_schema), PostgresEventCounters)
