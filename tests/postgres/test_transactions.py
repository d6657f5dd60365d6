"""Transactions of one task join, so a projection runner catches up in batches
(the batching itself: tests/persistence/test_batching.py)."""

from __future__ import annotations

import asyncio

import pytest
from eventsourcing.persistence import ProgrammingError, Tracking

from tests.support.postgres import factory

pytestmark = pytest.mark.postgres


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
