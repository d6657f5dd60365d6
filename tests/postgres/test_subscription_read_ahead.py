"""A Postgres subscription catching up: it reads the next batch ahead, in a
task of its own, while the current one is consumed; and the topics filter
reads the notification id index in order, even on a table not analysed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from uuid import uuid4

import asyncpg
import pytest
from eventsourcing.persistence import ProgrammingError, StoredEvent

from asyncsourcing.persistence import ApplicationRecorder, Notification
from asyncsourcing.postgres import PostgresFactory, PostgresSubscription
from asyncsourcing.postgres.identifiers import qualified, quote_identifier
from tests.support.postgres import admin_connection, factory

pytestmark = pytest.mark.postgres

PAGE = 50
TOPICS = ("tests:A", "tests:B")
READ_AHEAD = "asyncsourcing postgres subscription read-ahead"


@pytest.fixture
async def recorded(
    postgres_env: dict[str, str], pg_schema: str
) -> AsyncIterator[tuple[PostgresFactory, ApplicationRecorder]]:
    """A factory and its recorder, with 520 events of topics A, B and C."""
    async with factory(postgres_env, pg_schema) as f:
        recorder = await f.application_recorder()
        originator_id = uuid4()
        topics = [TOPICS[0], TOPICS[1], "tests:C"]
        await recorder.insert_events(
            [StoredEvent(originator_id, v, topics[v % 3], b"{}") for v in range(1, 521)]
        )
        yield f, recorder


def subscribe(
    recorder: ApplicationRecorder, topics: tuple[str, ...] = ()
) -> PostgresSubscription:
    subscription = recorder.subscribe(topics=topics)
    assert isinstance(subscription, PostgresSubscription)
    subscription.batch_size = PAGE
    return subscription


def read_aheads() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == READ_AHEAD]


async def consume(
    subscription: PostgresSubscription,
    count: int,
    taken: list[Notification] | None = None,
) -> list[Notification]:
    """``count`` notifications more in ``taken``, taken as a projection
    runner takes them: one awaited, then up to 6 already read."""
    taken = [] if taken is None else taken
    target = len(taken) + count
    async for notification in subscription:
        taken += [notification, *subscription.take_ready(6)]
        if len(taken) >= target:
            break
    return taken


@pytest.mark.parametrize("topics", [(), TOPICS])
async def test_reading_ahead_yields_each_notification_once_in_order(
    recorded: tuple[PostgresFactory, ApplicationRecorder], topics: tuple[str, ...]
) -> None:
    _, recorder = recorded
    expected = [
        n.id for n in await recorder.select_notifications(1, 1000, topics=topics)
    ]
    assert len(expected) == (520 if not topics else 347)
    async with subscribe(recorder, topics) as subscription:
        first = await subscription.__anext__()
        # The first batch came full: the next one is being read already.
        assert len(read_aheads()) == 1
        taken = [first, *await consume(subscription, len(expected) - 1)]
        assert [n.id for n in taken] == expected
        # Past the last full batch, no read ahead.
        assert read_aheads() == []
        waiting = asyncio.create_task(subscription.__anext__())
        await asyncio.sleep(0.05)
        assert not waiting.done()
        # A new event, read (not ahead) once announced.
        await recorder.insert_events([StoredEvent(uuid4(), 1, TOPICS[0], b"{}")])
        notification = await asyncio.wait_for(waiting, 5)
        assert notification.id == (await recorder.max_notification_id())


async def block_the_read_ahead(
    subscription: PostgresSubscription, admin: asyncpg.Connection[Any], table: str
) -> asyncio.Task[Any]:
    """Consume the first batch, the second being read ahead, then lock the
    table: the read ahead of the third batch waits for the lock, in the
    server. It is returned; ``admin`` has the lock, in a transaction."""
    await subscription.__anext__()
    (second_batch,) = read_aheads()
    await asyncio.wait({second_batch})
    await admin.execute("BEGIN")
    await admin.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
    assert len(subscription.take_ready(PAGE)) == PAGE - 1
    assert (await subscription.__anext__()).id == PAGE + 1
    (third_batch,) = read_aheads()
    await asyncio.sleep(0.1)
    assert not third_batch.done()
    assert await admin.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted")
    return third_batch


@pytest.mark.parametrize("how", ["close", "stop", "cancel"])
async def test_ending_cancels_the_read_ahead_and_releases_its_connection(
    recorded: tuple[PostgresFactory, ApplicationRecorder],
    postgres_env: dict[str, str],
    pg_schema: str,
    how: str,
) -> None:
    # A datastore of its own, which only the subscription uses.
    async with factory(postgres_env, pg_schema) as reading:
        recorder = await reading.application_recorder()
        table = recorder.events_dialect.table  # type: ignore[attr-defined]
        async with admin_connection(postgres_env) as admin:
            async with subscribe(recorder) as subscription:
                read_ahead = await block_the_read_ahead(subscription, admin, table)
                subscription.take_ready(PAGE)
                if how != "close":
                    # Waiting for the read ahead, then stopped or cancelled.
                    consumer = asyncio.create_task(subscription.__anext__())
                    await asyncio.sleep(0.05)
                    assert not consumer.done()
                    if how == "stop":
                        subscription.stop()
                        # The end of the iteration, not the read's cancellation.
                        with pytest.raises(StopAsyncIteration):
                            await consumer
                    else:
                        consumer.cancel()
                        with pytest.raises(asyncio.CancelledError):
                            await consumer
                    assert read_ahead.cancelling()
            assert read_ahead.cancelled()
            assert read_aheads() == []
            # No connection is lent any more. The read ahead's, interrupted
            # mid-query, was closed: its backend ends as it answers, once
            # the lock is released.
            pool = reading.datastore._connections._pool
            assert pool is not None
            assert pool.get_idle_size() == pool.get_size()
            await admin.execute("ROLLBACK")
        assert len(await recorder.select_notifications(1, 600)) == 520


async def test_a_cancelled_consumer_reads_again(
    recorded: tuple[PostgresFactory, ApplicationRecorder],
    postgres_env: dict[str, str],
) -> None:
    _, recorder = recorded
    table = recorder.events_dialect.table  # type: ignore[attr-defined]
    async with (
        admin_connection(postgres_env) as admin,
        subscribe(recorder) as subscription,
    ):
        await block_the_read_ahead(subscription, admin, table)
        taken = [n.id for n in subscription.take_ready(PAGE)]
        consumer = asyncio.create_task(subscription.__anext__())
        await asyncio.sleep(0.05)
        consumer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await consumer
        await admin.execute("ROLLBACK")
        # Nothing lost, nothing twice: the third batch is read again.
        rest = await consume(subscription, 520 - 2 * PAGE)
        assert [n.id for n in rest] == list(range(2 * PAGE + 1, 521))
        assert taken[-1] == 2 * PAGE


async def test_an_error_of_the_read_ahead_comes_out_of_anext(
    recorded: tuple[PostgresFactory, ApplicationRecorder],
    postgres_env: dict[str, str],
    pg_schema: str,
) -> None:
    _, recorder = recorded
    table = recorder.events_dialect.table  # type: ignore[attr-defined]
    name = recorder.events_dialect.table_name  # type: ignore[attr-defined]
    renamed = quote_identifier("renamed_events")
    async with (
        subscribe(recorder) as subscription,
        admin_connection(postgres_env) as admin,
    ):
        first = await subscription.__anext__()
        await admin.execute(f"ALTER TABLE {table} RENAME TO {renamed}")
        taken = [first]
        with pytest.raises(ProgrammingError, match="does not exist"):
            await consume(subscription, 519, taken)
        # What was read before is yielded, in order; the error comes at the
        # end of a batch.
        assert [n.id for n in taken] == list(range(1, len(taken) + 1))
        assert len(taken) % PAGE == 0
        await admin.execute(
            f"ALTER TABLE {qualified(pg_schema, 'renamed_events')} "
            f"RENAME TO {quote_identifier(name)}"
        )
        # The subscription goes on from where it was.
        await consume(subscription, 520 - len(taken), taken)
    assert [n.id for n in taken] == list(range(1, 521))


async def test_topics_are_filtered_in_notification_id_order_on_a_fresh_table(
    recorded: tuple[PostgresFactory, ApplicationRecorder],
    postgres_env: dict[str, str],
) -> None:
    _, recorder = recorded
    originator_id = uuid4()
    for start in range(0, 20_000, 5000):
        await recorder.insert_events(
            [
                StoredEvent(originator_id, v, TOPICS[v % 2], b"{}")
                for v in range(start + 1, start + 5001)
            ]
        )
    # Never analysed: the planner knows nothing of the topics' frequencies.
    # Given them, it would read every row after the start, and sort them,
    # for each batch.
    statement = recorder.events_dialect._select_notifications_statement(  # type: ignore[attr-defined]
        True, False, False, True
    )
    async with admin_connection(postgres_env) as admin:
        for start in (0, 10_000):
            plan = "\n".join(
                row[0]
                for row in await admin.fetch(
                    f"EXPLAIN {statement}", start, list(TOPICS), PAGE
                )
            )
            assert "Index Scan using" in plan, plan
            assert "Sort" not in plan, plan
