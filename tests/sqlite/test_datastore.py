"""The SQLite datastore: lazy connections, sharing, tables, closing, cancelling."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest

from asyncsourcing.application import AggregateNotFoundError, Application
from asyncsourcing.domain import Aggregate
from asyncsourcing.persistence import (
    InterfaceError,
    OperationalError,
    StoredEvent,
    Tracking,
    WaitInterruptedError,
)
from asyncsourcing.sqlite import (
    SQLiteApplicationRecorder,
    SQLiteDatastore,
    SQLiteFactory,
    SQLiteProcessRecorder,
    SQLiteTrackingRecorder,
)


def stored(originator_id: UUID | None = None, version: int = 1) -> StoredEvent:
    return StoredEvent(originator_id or uuid4(), version, "tests:Topic", b"{}")


def new_threads(before: set[threading.Thread]) -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t not in before and t.is_alive()}


def other_tasks() -> set[asyncio.Task[Any]]:
    current = asyncio.current_task()
    return {t for t in asyncio.all_tasks() if t is not current and not t.done()}


@contextmanager
def write_locked(path: Path) -> Iterator[None]:
    with closing(sqlite3.connect(path, isolation_level=None)) as connection:
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            connection.rollback()


async def test_constructing_does_no_io(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    path = tmp_path / "db.sqlite"
    factory = SQLiteFactory({"SQLITE_DBNAME": str(path)})
    factory.construct_application_recorder()
    factory.construct_aggregate_recorder("snapshots")
    factory.construct_tracking_recorder()
    factory.construct_process_recorder()
    Application[UUID](
        {"PERSISTENCE_MODULE": "asyncsourcing.sqlite", "SQLITE_DBNAME": str(path)}
    )
    assert not path.exists()
    assert not new_threads(before)
    await factory.close()


async def test_application_creates_its_tables_on_first_use(tmp_path: Path) -> None:
    env = {
        "PERSISTENCE_MODULE": "asyncsourcing.sqlite",
        "SQLITE_DBNAME": str(tmp_path / "db.sqlite"),
    }
    async with Application[UUID](env) as app:
        # A read first: the tables are there, the aggregate is not.
        with pytest.raises(AggregateNotFoundError):
            await app.repository.get(uuid4())
        aggregate = Aggregate()
        recordings = await app.save(aggregate)
        assert recordings[-1].notification.id == 1
        assert (await app.repository.get(aggregate.id)).version == 1
    async with Application[UUID]({**env, "IS_SNAPSHOTTING_ENABLED": "y"}) as app:
        await app.take_snapshot(aggregate.id)
        assert app.snapshots is not None
        assert len(list(await app.snapshots.get(aggregate.id))) == 1


async def test_memory_database_is_shared_by_the_datastores_recorders() -> None:
    before = set(threading.enumerate())
    async with (
        SQLiteFactory({"SQLITE_DBNAME": ":memory:"}) as factory,
        SQLiteFactory({"SQLITE_DBNAME": ":memory:"}) as other,
    ):
        writer = factory.construct_application_recorder()
        await writer.insert_events([stored()])
        process_recorder = factory.construct_process_recorder()
        assert await process_recorder.max_notification_id() == 1
        await process_recorder.insert_events([stored()], tracking=Tracking("a", 1))
        assert await factory.construct_tracking_recorder().max_tracking_id("a") == 1
        assert await writer.max_notification_id() == 2
        # One connection, so one thread, for all of them.
        assert len(new_threads(before)) == 1
        # Another datastore's ":memory:" is another database.
        assert (
            await other.construct_application_recorder().max_notification_id() is None
        )
    assert not new_threads(before)


async def test_memory_subscription_and_waiter_are_woken_without_polling() -> None:
    async with SQLiteFactory({"SQLITE_DBNAME": ":memory:"}) as factory:
        recorder = await factory.process_recorder()
        async with recorder.subscribe() as subscription:
            reading = asyncio.create_task(anext(subscription))
            waiting = asyncio.create_task(recorder.wait("up", 1, timeout=5))
            await asyncio.sleep(0.05)
            # No poller: only the waiter's and the reader's tasks exist.
            assert other_tasks() == {reading, waiting}
            await recorder.insert_events([stored()], tracking=Tracking("up", 1))
            assert (await asyncio.wait_for(reading, 1)).id == 1
            await asyncio.wait_for(waiting, 1)


async def test_shared_cache_memory_database_is_shared_between_factories() -> None:
    db_name = f"file:{uuid4().hex}?mode=memory&cache=shared"
    env = {"SQLITE_DBNAME": db_name, "SQLITE_POLL_INTERVAL": "600"}
    async with SQLiteFactory(env) as first, SQLiteFactory(env) as second:
        reader = await first.application_recorder()
        writer = await second.application_recorder()
        async with reader.subscribe() as subscription:
            reading = asyncio.create_task(anext(subscription))
            await asyncio.sleep(0.02)
            await writer.insert_events([stored()])
            assert (await asyncio.wait_for(reading, 1)).id == 1


async def test_file_database_readers_are_pooled(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    datastore = SQLiteDatastore(str(tmp_path / "db.sqlite"), pool_size=2)
    recorder = SQLiteApplicationRecorder(datastore)
    await recorder.insert_events([stored()])
    results = await asyncio.gather(*(recorder.max_notification_id() for _ in range(20)))
    assert results == [1] * 20
    # One writer and at most two readers.
    assert len(new_threads(before)) <= 3
    await datastore.close()
    assert not new_threads(before)


async def test_close_is_idempotent_and_concurrent_closes_both_wait(
    tmp_path: Path,
) -> None:
    before = set(threading.enumerate())
    factory = SQLiteFactory({"SQLITE_DBNAME": str(tmp_path / "db.sqlite")})
    recorder = await factory.application_recorder()
    await recorder.insert_events([stored()])
    await recorder.max_notification_id()
    await asyncio.gather(factory.close(), factory.close())
    assert not new_threads(before)
    await factory.close()
    with pytest.raises(InterfaceError, match="closed"):
        await recorder.insert_events([stored()])


async def test_cancelled_tasks_leave_no_connections_threads_or_tasks(
    tmp_path: Path,
) -> None:
    before = set(threading.enumerate())
    tasks_before = other_tasks()
    path = tmp_path / "db.sqlite"
    env = {"SQLITE_DBNAME": str(path), "SQLITE_LOCK_TIMEOUT": "10"}
    factory = SQLiteFactory(env)
    recorder = await factory.process_recorder()
    await recorder.insert_events([stored()], tracking=Tracking("up", 1))

    subscription = recorder.subscribe(gt=1)
    await subscription.__aenter__()
    reading = asyncio.create_task(anext(subscription))
    waiting = asyncio.create_task(recorder.wait("up", 5, timeout=30))
    with write_locked(path):
        # This writer waits in SQLite for the lock, in its connection's thread.
        writing = asyncio.create_task(
            recorder.insert_events([stored()], tracking=Tracking("up", 2))
        )
        await asyncio.sleep(0.1)
        for task in (reading, waiting, writing):
            assert not task.done()
            task.cancel()
        # The lock is released as the cancelled writer still waits for it.
    for task in (reading, waiting, writing):
        with pytest.raises(asyncio.CancelledError):
            await task

    # The cancelled writer's transaction was rolled back, not left open.
    assert await recorder.max_tracking_id("up") == 1
    assert await recorder.insert_events([stored()], tracking=Tracking("up", 2)) == [2]

    await subscription.aclose()
    await factory.close()
    await asyncio.sleep(0.05)  # Let pollers notice they have no waiters.
    assert not new_threads(before)
    assert other_tasks() == tasks_before


@pytest.mark.parametrize("delay", [0, 0.0001, 0.001, 0.005])
async def test_cancelling_a_first_use_leaves_no_thread(
    tmp_path: Path, delay: float
) -> None:
    before = set(threading.enumerate())
    factory = SQLiteFactory({"SQLITE_DBNAME": str(tmp_path / "db.sqlite")})
    recorder = factory.construct_application_recorder()
    task = asyncio.create_task(recorder.insert_events([stored()]))
    await asyncio.sleep(delay)
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task
    # Whatever the moment of cancelling, the datastore is still usable.
    assert await recorder.max_notification_id() in (None, 1)
    await factory.close()
    assert not new_threads(before)


async def test_closing_ends_subscriptions_and_fails_waiters(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    factory = SQLiteFactory({"SQLITE_DBNAME": str(tmp_path / "db.sqlite")})
    recorder = await factory.process_recorder()

    async def follow() -> list[int]:
        async with recorder.subscribe() as subscription:
            return [notification.id async for notification in subscription]

    following = asyncio.create_task(follow())
    waiting = asyncio.create_task(recorder.wait("up", 1, timeout=30))
    await recorder.insert_events([stored()])
    await asyncio.sleep(0.05)
    await factory.close()
    assert await asyncio.wait_for(following, 1) == [1]
    with pytest.raises(WaitInterruptedError):
        await asyncio.wait_for(waiting, 1)
    assert not new_threads(before)


async def test_closing_one_factory_leaves_the_others_waiters_served(
    tmp_path: Path,
) -> None:
    env = {"SQLITE_DBNAME": str(tmp_path / "db.sqlite"), "SQLITE_POLL_INTERVAL": "600"}
    first, second = SQLiteFactory(env), SQLiteFactory(env)
    try:
        waiting_recorder = await second.tracking_recorder()
        writing_recorder = await first.tracking_recorder()
        assert waiting_recorder.position_board is writing_recorder.position_board
        await first.close()
        # The board now reads through the second factory's datastore.
        waiting_recorder.position_board.forget()
        third = SQLiteFactory(env)
        try:
            writer = await third.tracking_recorder()
            waiting = asyncio.create_task(waiting_recorder.wait("up", 1, timeout=5))
            await asyncio.sleep(0.02)
            await writer.insert_tracking(Tracking("up", 1))
            await asyncio.wait_for(waiting, 1)
        finally:
            await third.close()
    finally:
        await first.close()
        await second.close()


async def test_process_recorder_rolls_back_events_with_failed_tracking(
    tmp_path: Path,
) -> None:
    async with SQLiteDatastore(str(tmp_path / "db.sqlite")) as datastore:
        recorder = SQLiteProcessRecorder(datastore)
        await recorder.insert_tracking(Tracking("up", 3))
        with pytest.raises(Exception, match="not greater"):
            await recorder.insert_events([stored()], tracking=Tracking("up", 3))
        assert await recorder.max_notification_id() is None
        assert recorder.position_board.known("up") == 3


async def test_writes_in_a_read_transaction_are_rolled_back_and_wake_nobody(
    tmp_path: Path,
) -> None:
    async with SQLiteDatastore(str(tmp_path / "db.sqlite")) as datastore:
        recorder = SQLiteTrackingRecorder(datastore)
        await recorder.create_table()
        async with datastore.transaction(commit=False) as connection:
            await recorder._insert_tracking(connection, Tracking("up", 1))
        assert await recorder.max_tracking_id("up") is None
        assert recorder.position_board.known("up") is None


async def test_wal_mode_and_lock_timeout(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    async with SQLiteDatastore(str(path), lock_timeout=0.1) as datastore:
        recorder = SQLiteApplicationRecorder(datastore)
        await recorder.insert_events([stored()])
        with closing(sqlite3.connect(path)) as connection:
            assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        loop = asyncio.get_running_loop()
        with write_locked(path):
            started = loop.time()
            with pytest.raises(OperationalError, match="locked"):
                await recorder.insert_events([stored()])
            assert 0.09 < loop.time() - started < 2


async def test_text_originator_ids(tmp_path: Path) -> None:
    env = {"SQLITE_DBNAME": str(tmp_path / "db.sqlite"), "ORIGINATOR_ID_TYPE": "text"}
    async with SQLiteFactory(env) as factory:
        recorder = await factory.application_recorder()
        event = StoredEvent("dog-1", 1, "tests:Topic", b"{}")
        await recorder.insert_events([event])
        assert await recorder.select_events("dog-1") == [event]
        notifications = await recorder.select_notifications(None, 1)
        assert notifications[0].originator_id == "dog-1"


async def test_read_only_uri_reads_without_changing_the_file(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    async with SQLiteFactory({"SQLITE_DBNAME": str(path)}) as factory:
        await (await factory.application_recorder()).insert_events([stored()])
    env = {"SQLITE_DBNAME": f"file:{path}?mode=ro", "CREATE_TABLE": "false"}
    async with SQLiteFactory(env) as factory:
        recorder = await factory.application_recorder()
        assert await recorder.max_notification_id() == 1
        with pytest.raises(OperationalError, match="readonly"):
            await recorder.insert_events([stored()])
