"""runner.statistics(): position, lag, counts, rate, last error, running state."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import pytest

from asyncsourcing.application import Application
from asyncsourcing.domain import Aggregate
from asyncsourcing.persistence import ProgrammingError, Tracking
from asyncsourcing.projection import (
    EventSourcedProjectionRunner,
    ProjectionStoppedError,
    RunnerStatistics,
)
from examples.eventcounters.projection import (
    EventCountersProjection,
    SpannerThrown,
    SpannerThrownError,
)
from tests.support.backends import Backend, aggregate_with
from tests.support.postgres import admin_connection, factory_env, quote
from tests.support.projections import Copies


async def test_statistics_before_start_while_running_and_after_close(
    backend: Backend,
) -> None:
    runner = backend.runner()
    before = await runner.statistics()
    assert isinstance(before, RunnerStatistics)
    assert before.application_name == "Application"
    assert before.projection_name == "eventcounters"
    assert not before.is_running
    assert before.position is None
    assert before.lag == 0
    assert before.events_processed == 0
    assert before.events_per_second == 0.0
    assert before.last_error is None
    assert before.started_at is None

    await runner.app.save(*(aggregate_with(Aggregate.Event) for _ in range(5)))
    assert (await runner.statistics()).lag == 10
    async with runner:
        recordings = await runner.app.save(aggregate_with())
        last = recordings[-1].notification.id
        await runner.wait(last, timeout=10)
        stats = await runner.statistics()
        assert stats.is_running
        assert stats.position == last == 11
        assert stats.lag == 0
        assert stats.events_processed == 11
        assert stats.events_per_second > 0
        assert (stats.retries, stats.skipped, stats.parked) == (0, 0, 0)
        assert stats.reconnections == 0
        assert stats.last_error is None
        assert stats.last_error_at is None
        assert stats.started_at is not None
        assert stats.started_at <= datetime.now(UTC)
        with pytest.raises(dataclasses.FrozenInstanceError):
            stats.position = 3  # type: ignore[misc]
    after = await runner.statistics()
    assert not after.is_running
    assert after.position == 11
    assert after.events_processed == 11


async def test_lag_counts_what_is_not_processed_yet() -> None:
    gate = asyncio.Event()

    class Gated(EventCountersProjection):
        name = "eventcounters"

        async def process_event(self, domain_event: Any, tracking: Tracking) -> None:
            if tracking.notification_id > 2:
                await gate.wait()
            await super().process_event(domain_event, tracking)

    runner = Backend("popo", {}).runner(projection_class=Gated)
    async with runner:
        await runner.app.save(aggregate_with(Aggregate.Event))
        await runner.wait(2, timeout=5)
        await runner.app.save(*(aggregate_with(Aggregate.Event) for _ in range(3)))
        await asyncio.sleep(0.01)
        stats = await runner.statistics()
        assert (stats.position, stats.lag, stats.events_processed) == (2, 6, 2)
        gate.set()
        await runner.wait(8, timeout=5)
        stats = await runner.statistics()
        assert (stats.position, stats.lag, stats.events_processed) == (8, 0, 8)


async def test_a_resumed_runner_counts_from_its_start(backend: Backend) -> None:
    if backend.name == "popo":
        pytest.skip("an in-memory view does not outlive its runner")
    runner = backend.runner()
    await runner.app.save(*(aggregate_with() for _ in range(4)))
    await runner.run_forever(timeout=0.3)
    runner = backend.runner()
    async with runner:
        stats = await runner.statistics()
        assert (stats.position, stats.events_processed, stats.lag) == (4, 0, 0)
        await runner.app.save(aggregate_with(SpannerThrown))
        with pytest.raises(SpannerThrownError):
            await runner.run_forever(timeout=5)
        stats = await runner.statistics()
        assert (stats.position, stats.events_processed, stats.lag) == (5, 1, 1)
        assert stats.last_error is not None
        assert stats.last_error_at is not None
        assert not stats.is_running


async def test_event_sourced_runner_statistics() -> None:
    async with EventSourcedProjectionRunner(
        application_class=Application[UUID], projection_class=Copies
    ) as runner:
        recordings = await runner.app.save(aggregate_with(Aggregate.Event))
        # Only the created event is one of its topics; once caught up, the
        # runner records the position of the other one too: no lag is left.
        await runner.wait(recordings[-1].notification.id, timeout=5)
        stats = await runner.statistics()
        assert stats.projection_name == "Copies"
        assert (stats.position, stats.events_processed, stats.lag) == (2, 1, 0)


@pytest.mark.postgres
async def test_an_error_reading_the_events_is_counted_and_shown(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    env = factory_env(postgres_env, pg_schema, POSTGRES_POLL_INTERVAL="0.1")
    # "retry" reconnects after connection errors; a missing table is not one.
    async with Backend("postgres", env).runner(error_policy="retry") as runner:
        recordings = await runner.app.save(aggregate_with())
        await runner.wait(recordings[-1].notification.id, timeout=10)

        # Someone renames the application's events table under the runner.
        table = runner.app.recorder.events_table_name  # type: ignore[attr-defined]
        async with admin_connection(postgres_env) as conn:
            await conn.execute(
                f"ALTER TABLE {quote(pg_schema)}.{quote(table)} RENAME TO renamed"
            )
        with pytest.raises(ProjectionStoppedError) as stopped:
            await runner.wait(recordings[-1].notification.id + 1, timeout=10)
        error = stopped.value.__cause__
        assert isinstance(error, ProgrammingError)
        assert table in str(error)  # relation "..." does not exist

        stats = await runner.statistics()
        assert not stats.is_running
        assert stats.errors == 1
        assert stats.last_error == repr(error)
        assert stats.last_error_at is not None
        assert stats.lag is None  # The events cannot be read.
        with pytest.raises(ProgrammingError):
            await runner.run_forever()


@pytest.mark.parametrize(
    "backend",
    ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
    indirect=True,
)
async def test_a_snapshot_is_taken_in_one_step(backend: Backend) -> None:
    """Sampled while events are processed, every snapshot holds together.

    The runner starts on an empty view and is the only one processing: each
    event it processes has a notification id of its own, at most the
    position, so ``position >= events_processed`` in every snapshot.
    """
    total = 400
    runner = backend.runner()
    async with runner:

        async def write() -> None:
            for _ in range(total // 10):
                await runner.app.save(*(aggregate_with() for _ in range(10)))

        writing = asyncio.create_task(write())
        snapshots: list[RunnerStatistics] = []
        async with asyncio.timeout(30):
            while not snapshots or snapshots[-1].events_processed < total:
                snapshots.append(await runner.statistics())
        await writing

    assert len(snapshots) > 10
    behind = [
        (s.position, s.events_processed)
        for s in snapshots
        if (s.position or 0) < s.events_processed
    ]
    assert behind == []
    assert snapshots[-1].position == snapshots[-1].events_processed == total
