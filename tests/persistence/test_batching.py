"""Adaptive batching: catching up in few transactions, with the same effect.

On SQLite and PostgreSQL; the in-memory backend does not batch."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from asyncsourcing.application import Application
from asyncsourcing.domain import Aggregate
from asyncsourcing.projection import ProjectionRunner
from examples.eventcounters.projection import (
    EventCountersProjection,
    SpannerThrown,
    SpannerThrownError,
)
from tests.support.batches import PostgresCountingBatches, SQLiteCountingBatches
from tests.support.postgres import factory_env

CountingBatches = SQLiteCountingBatches | PostgresCountingBatches
Backend = tuple[dict[str, str], type[CountingBatches]]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """The environment of an application and its view, and the view's class."""
    if request.param == "sqlite":
        SQLiteCountingBatches.batches = 0
        env = {
            "PERSISTENCE_MODULE": "asyncsourcing.sqlite",
            "SQLITE_DBNAME": str(tmp_path / "app.sqlite"),
            "EVENTCOUNTERS_SQLITE_DBNAME": str(tmp_path / "view.sqlite"),
        }
        return env, SQLiteCountingBatches
    PostgresCountingBatches.batches = 0
    schema = request.getfixturevalue("pg_schema")
    postgres_env = request.getfixturevalue("postgres_env")
    return factory_env(postgres_env, schema), PostgresCountingBatches


def runner_of(backend: Backend) -> ProjectionRunner[Any, Any]:
    env, view_class = backend
    return ProjectionRunner(
        application_class=Application[UUID],
        projection_class=EventCountersProjection,
        view_class=view_class,
        env=env,
    )


async def record(env: dict[str, str], *aggregates: Aggregate) -> int:
    """Record before any runner runs, so a runner has to catch up."""
    async with Application[UUID](env) as app:
        recordings = await app.save(*aggregates)
        return recordings[-1].notification.id


def aggregate_with(*event_classes: type[Aggregate.Event]) -> Aggregate:
    aggregate = Aggregate()
    for event_class in event_classes:
        aggregate.trigger_event(event_class)
    return aggregate


async def test_catching_up_commits_in_batches_and_counts_once(
    backend: Backend,
) -> None:
    env, view_class = backend
    aggregates = [aggregate_with(Aggregate.Event) for _ in range(600)]
    last = await record(env, *aggregates)
    assert last == 1200

    async with runner_of(backend) as runner:
        view = runner.projection.view
        await view.wait(runner.app.name, last, timeout=30)
        assert await view.get_created_event_counter() == 600
        assert await view.get_subsequent_event_counter() == 600
        # 1,200 events in batches of at most 500 (as read), not 1,200 commits.
        assert 3 <= view_class.batches <= 6

        # A live event comes alone: no batch of it.
        batches = view_class.batches
        recordings = await runner.app.save(aggregate_with())
        await view.wait(runner.app.name, recordings[-1].notification.id)
        assert view_class.batches == batches
        assert await view.get_created_event_counter() == 601


async def test_failing_batch_commits_the_good_prefix_and_raises(
    backend: Backend,
) -> None:
    env, view_class = backend
    good = [aggregate_with(Aggregate.Event) for _ in range(10)]
    await record(env, *good)
    spanner = await record(env, aggregate_with(SpannerThrown))
    await record(env, *(aggregate_with() for _ in range(10)))

    with pytest.raises(SpannerThrownError):
        await runner_of(backend).run_forever(timeout=10)
    # Split in halves to find the spanner (22): of the batches 1-32 (failed),
    # 1-16, 17-24 (failed), 17-20 and 21-22 (failed), the last tracked one
    # event only (not counted); 21 and 22 were then processed alone.
    assert view_class.batches == 4

    # Exactly the events before the failing one were counted, once each.
    runner = runner_of(backend)
    view = runner.projection.view
    try:
        assert await view.max_tracking_id("Application") == spanner - 1
        # The spanner's aggregate was created before it threw the spanner.
        assert await view.get_created_event_counter() == 11
        assert await view.get_subsequent_event_counter() == 10
    finally:
        await runner.aclose()

    # Run again: it resumes at the failing event and fails the same way.
    with pytest.raises(SpannerThrownError):
        await runner_of(backend).run_forever(timeout=10)
