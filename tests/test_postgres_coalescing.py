"""Coalesced writes on PostgreSQL: saves that arrive together share a transaction,
with the effect and the errors of separate saves."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID, uuid4

import pytest

from asyncsourcing.application import Application
from asyncsourcing.domain import Aggregate
from asyncsourcing.persistence import IntegrityError, StoredEvent
from asyncsourcing.postgres import PostgresApplicationRecorder
from tests.test_postgres_support import admin_connection, factory_env, pg_schema

__all__ = ["pg_schema"]

pytestmark = pytest.mark.postgres


def stored(originator_id: UUID, version: int) -> StoredEvent:
    return StoredEvent(originator_id, version, "tests:Topic", b"{}")


@pytest.fixture
async def app(
    postgres_env: dict[str, str], pg_schema: str
) -> AsyncIterator[Application[UUID]]:
    async with Application[UUID](factory_env(postgres_env, pg_schema)) as app:
        yield app


async def test_concurrent_saves_each_get_their_own_events_ids(
    app: Application[UUID],
) -> None:
    aggregates = [Aggregate() for _ in range(64)]
    for aggregate in aggregates:
        aggregate.trigger_event(Aggregate.Event)
    await app.save(Aggregate())  # Tables made, pool warm.

    results = await asyncio.gather(*(app.save(a) for a in aggregates))

    ids = [r.notification.id for recordings in results for r in recordings]
    assert len(set(ids)) == 128
    notifications = {
        n.id: n for n in await app.recorder.select_notifications(None, 1000)
    }
    for aggregate, recordings in zip(aggregates, results, strict=True):
        # Each save's ids are its own events', in order, and consecutive.
        assert [
            (notifications[r.notification.id].originator_id, r.notification.id)
            for r in recordings
        ] == [(aggregate.id, recordings[0].notification.id + i) for i in range(2)]


async def test_concurrent_saves_share_transactions(app: Application[UUID]) -> None:
    recorder = app.recorder
    assert isinstance(recorder, PostgresApplicationRecorder)
    await app.save(Aggregate())
    transactions = 0
    call_insert_function = recorder._call_insert_function

    async def counted(stored_events: Any) -> list[int]:
        nonlocal transactions
        transactions += 1
        return await call_insert_function(stored_events)

    recorder._call_insert_function = counted  # type: ignore[method-assign]
    await asyncio.gather(*(app.save(Aggregate()) for _ in range(200)))
    # One transaction (one function call) per batch, not per save.
    assert 1 < transactions < 50
    assert await recorder.max_notification_id() == 201


async def test_a_conflict_fails_only_its_own_save(app: Application[UUID]) -> None:
    recorder = app.recorder
    assert isinstance(recorder, PostgresApplicationRecorder)
    taken = uuid4()
    await recorder.insert_events([stored(taken, 1)])

    writes = [[stored(uuid4(), 1)] for _ in range(20)]
    writes.insert(7, [stored(uuid4(), 1), stored(taken, 1)])  # Conflicts.
    results = await asyncio.gather(
        *(recorder.insert_events(w) for w in writes), return_exceptions=True
    )

    failed = [i for i, r in enumerate(results) if isinstance(r, BaseException)]
    assert failed == [7]
    assert isinstance(results[7], IntegrityError)
    notifications = await recorder.select_notifications(None, 100)
    assert len(notifications) == 1 + 20  # None of the conflicting write's events.
    ids = [n.id for n in notifications]
    assert ids == sorted(ids)


async def test_a_cancelled_queued_save_records_nothing(app: Application[UUID]) -> None:
    await app.save(Aggregate())
    first, queued = Aggregate(), Aggregate()
    running = asyncio.create_task(app.save(first))
    waiting = asyncio.create_task(app.save(queued))
    await asyncio.sleep(0)  # Both have started; one is queued behind the other.
    waiting.cancel()
    await running
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert await app.recorder.select_events(first.id)
    # Cancelled while queued behind the running save: nothing of it recorded.
    assert await app.recorder.select_events(queued.id) == []
    await asyncio.sleep(0.05)
    assert await app.recorder.select_events(queued.id) == []


async def test_tables_made_elsewhere_without_the_function_still_work(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    env = factory_env(postgres_env, pg_schema)
    async with Application[UUID](env) as app:
        await app.save(Aggregate())
    async with admin_connection(postgres_env) as conn:
        await conn.execute(
            f'DROP FUNCTION "{pg_schema}".asyncsourcing_insert_events_uuid'
        )
    async with Application[UUID]({**env, "CREATE_TABLE": "false"}) as app:
        results: list[Any] = await asyncio.gather(
            *(app.save(Aggregate()) for _ in range(5))
        )
        assert sorted(r[0].notification.id for r in results) == [2, 3, 4, 5, 6]
