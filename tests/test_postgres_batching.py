"""Transactions of one task join, so a projection runner catches up in batches."""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.persistence import ProgrammingError, Tracking
from eventsourcing.utils import Environment

from asyncsourcing.application import Application
from asyncsourcing.domain import Aggregate
from asyncsourcing.postgres import PostgresFactory
from asyncsourcing.projection import ProjectionRunner
from examples.eventcounters.postgres import PostgresEventCounters
from examples.eventcounters.projection import (
    EventCountersProjection,
    SpannerThrown,
    SpannerThrownError,
)
from tests.test_postgres_support import factory, factory_env, pg_schema

__all__ = ["pg_schema"]

pytestmark = pytest.mark.postgres


class CountingBatches(PostgresEventCounters):
    """Counts the batch transactions the runner opens."""

    batches = 0

    def batch_transaction(self) -> AbstractAsyncContextManager[object]:
        type(self).batches += 1
        return super().batch_transaction()


@pytest.fixture
def env(postgres_env: dict[str, str], pg_schema: str) -> dict[str, str]:
    CountingBatches.batches = 0
    return factory_env(postgres_env, pg_schema)


def runner_of(env: dict[str, str]) -> ProjectionRunner[Any, Any]:
    return ProjectionRunner(
        application_class=Application[UUID],
        projection_class=EventCountersProjection,
        view_class=CountingBatches,
        env=env,
    )


async def record(env: dict[str, str], *aggregates: Aggregate) -> int:
    async with Application[UUID](env) as app:
        recordings = await app.save(*aggregates)
        return recordings[-1].notification.id


def aggregate_with(*event_classes: type[Aggregate.Event]) -> Aggregate:
    aggregate = Aggregate()
    for event_class in event_classes:
        aggregate.trigger_event(event_class)
    return aggregate


async def test_catching_up_commits_in_batches_and_counts_once(
    env: dict[str, str],
) -> None:
    last = await record(env, *(aggregate_with(Aggregate.Event) for _ in range(600)))
    assert last == 1200

    async with runner_of(env) as runner:
        view = runner.projection.view
        await view.wait(runner.app.name, last, timeout=30)
        assert await view.get_created_event_counter() == 600
        assert await view.get_subsequent_event_counter() == 600
        assert 3 <= CountingBatches.batches <= 6

        # Live events come one at a time.
        batches = CountingBatches.batches
        recordings = await runner.app.save(aggregate_with())
        await view.wait(runner.app.name, recordings[-1].notification.id)
        assert CountingBatches.batches == batches
        assert await view.get_created_event_counter() == 601


async def test_failing_batch_commits_the_good_prefix_and_raises(
    env: dict[str, str],
) -> None:
    await record(env, *(aggregate_with(Aggregate.Event) for _ in range(10)))
    spanner = await record(env, aggregate_with(SpannerThrown))
    await record(env, *(aggregate_with() for _ in range(10)))

    runner = runner_of(env)
    with pytest.raises(SpannerThrownError):
        await runner.run_forever(timeout=10)
    assert CountingBatches.batches == 1  # Tried as a batch, then one at a time.

    async with PostgresFactory(Environment(EventCountersProjection.name, env)) as f:
        view = await f.tracking_recorder(CountingBatches)
        assert isinstance(view, CountingBatches)
        assert await view.max_tracking_id("Application") == spanner - 1
        assert await view.get_created_event_counter() == 11
        assert await view.get_subsequent_event_counter() == 10


async def test_transactions_of_a_task_join_the_enclosing_one(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    async with factory(postgres_env, pg_schema) as f:
        view = await f.tracking_recorder()
        store = f.datastore
        woken = asyncio.create_task(view.wait("upstream", 2, timeout=5))
        await asyncio.sleep(0.05)

        async with store.transaction(commit=True) as outer:
            assert store.in_transaction()
            async with store.transaction(commit=True) as inner:
                assert inner is outer
                await view._insert_tracking(inner, Tracking("upstream", 1))
            await view.insert_tracking(Tracking("upstream", 2))
            # Reads join too: they see the transaction's own writes.
            assert await view.max_tracking_id("upstream") == 2
            await asyncio.sleep(0.1)
            assert not woken.done()  # Not committed yet.
        assert not store.in_transaction()
        await asyncio.wait_for(woken, 1)

        # Rolled back as a whole.
        async def fail() -> None:
            async with store.transaction(commit=True):
                await view.insert_tracking(Tracking("upstream", 3))
                raise RuntimeError

        with pytest.raises(RuntimeError):
            await fail()
        assert await view.max_tracking_id("upstream") == 2

        # Other tasks don't join: they have transactions of their own.
        async with store.transaction(commit=False) as conn:
            other = asyncio.create_task(view.max_tracking_id("upstream"))
            assert await other == 2
            # A write cannot join a read transaction.
            with pytest.raises(ProgrammingError, match="cannot join"):
                await view.insert_tracking(Tracking("upstream", 3))
            assert conn is not None
