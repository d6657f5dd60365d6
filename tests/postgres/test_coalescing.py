"""Coalesced writes on PostgreSQL: saves that arrive together share a transaction.

Their effect and errors, the same as separate saves', are in tests/support/suites.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any
from uuid import UUID

import pytest

from asyncsourcing.application import Application
from asyncsourcing.coalescing import WriteCoalescer
from asyncsourcing.domain import Aggregate
from asyncsourcing.persistence import StoredEvent
from asyncsourcing.postgres import PostgresApplicationRecorder
from tests.support.postgres import admin_connection, factory_env

pytestmark = pytest.mark.postgres


def stored(originator_id: UUID, version: int) -> StoredEvent:
    return StoredEvent(originator_id, version, "tests:Topic", b"{}")


@pytest.fixture
async def app(
    postgres_env: dict[str, str], pg_schema: str
) -> AsyncIterator[Application[UUID]]:
    async with Application[UUID](factory_env(postgres_env, pg_schema)) as app:
        yield app


async def test_concurrent_saves_share_transactions(app: Application[UUID]) -> None:
    recorder = app.recorder
    assert isinstance(recorder, PostgresApplicationRecorder)
    await app.save(Aggregate())
    transactions = 0
    call_insert_function = recorder._call_insert_function

    async def counted(stored_events: Any) -> Sequence[int]:
        nonlocal transactions
        transactions += 1
        return await call_insert_function(stored_events)

    recorder._coalescer = WriteCoalescer(counted)
    await asyncio.gather(*(app.save(Aggregate()) for _ in range(200)))
    # One transaction (one function call) per batch, not per save.
    assert 1 < transactions < 50
    assert await recorder.max_notification_id() == 201


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
        functions = await conn.fetch(
            "SELECT p.oid::regprocedure::text FROM pg_proc p "
            "JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = $1 AND p.proname LIKE 'asyncsourcing_insert_%'",
            pg_schema,
        )
        assert len(functions) == 3  # The table's two, and earlier versions'.
        for (function,) in functions:
            await conn.execute(f"DROP FUNCTION {function}")
    async with Application[UUID]({**env, "CREATE_TABLE": "false"}) as app:
        results: list[Any] = await asyncio.gather(
            *(app.save(Aggregate()) for _ in range(5))
        )
        assert sorted(r[0].notification.id for r in results) == [2, 3, 4, 5, 6]
