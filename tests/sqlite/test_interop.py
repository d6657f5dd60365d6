"""One SQLite file, two libraries: what eventsourcing 9.5 writes we read, and back.

eventsourcing's own (synchronous) SQLite recorders and application are used
as they are, on the same file as ours.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from eventsourcing import sqlite as es_sqlite
from eventsourcing.application import Application as ESApplication

from asyncsourcing.application import Application
from asyncsourcing.domain import Aggregate, event
from asyncsourcing.persistence import IntegrityError, StoredEvent, Tracking
from asyncsourcing.sqlite import SQLiteFactory


class Dog(Aggregate):
    @event("Registered")
    def __init__(self, name: str) -> None:
        self.name = name
        self.tricks: list[str] = []

    @event("TrickAdded")
    def add_trick(self, trick: str) -> None:
        self.tricks.append(trick)


def new_dog(name: str, *tricks: str) -> Dog:
    dog = Dog(name)
    for trick in tricks:
        dog.add_trick(trick)
    return dog


@contextmanager
def es_datastore(db_name: str, **kwargs: Any) -> Iterator[es_sqlite.SQLiteDatastore]:
    datastore = es_sqlite.SQLiteDatastore(db_name, **kwargs)
    try:
        yield datastore
    finally:
        datastore.close()


def es_tracking_recorder(
    datastore: es_sqlite.SQLiteDatastore,
) -> es_sqlite.SQLiteTrackingRecorder:
    recorder = es_sqlite.SQLiteTrackingRecorder(datastore)
    recorder.create_table()
    return recorder


def schema(db_path: Path) -> dict[str, Any]:
    """What a table is made of, per table: columns, keys, indexes, rowid-ness."""
    with closing(sqlite3.connect(db_path)) as connection:
        tables = connection.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = ? ORDER BY name",
            ("table",),
        ).fetchall()
        return {
            name: {
                # Identical but for the quotes we put around table names.
                "sql": sql.replace('"', ""),
                "columns": connection.execute(
                    "SELECT * FROM pragma_table_xinfo(?)", (name,)
                ).fetchall(),
                "indexes": connection.execute(
                    "SELECT * FROM pragma_index_list(?)", (name,)
                ).fetchall(),
                "list": connection.execute(
                    "SELECT type, ncol, wr, strict FROM pragma_table_list(?)", (name,)
                ).fetchall(),
                "rows": connection.execute(
                    f'SELECT * FROM "{name}" ORDER BY 1'
                ).fetchall(),
            }
            for name, sql in tables
        }


async def test_tables_are_eventsourcings(tmp_path: Path) -> None:
    ours, theirs = tmp_path / "ours.sqlite", tmp_path / "theirs.sqlite"
    async with SQLiteFactory({"SQLITE_DBNAME": str(ours)}) as factory:
        await factory.application_recorder()
        await factory.aggregate_recorder("snapshots")
        await factory.tracking_recorder()
    with es_datastore(str(theirs)) as datastore:
        es_sqlite.SQLiteApplicationRecorder(datastore).create_table()
        es_sqlite.SQLiteAggregateRecorder(datastore, "stored_snapshots").create_table()
        es_tracking_recorder(datastore)

    assert set(schema(ours)) == {"stored_events", "stored_snapshots", "tracking"}
    assert schema(ours) == schema(theirs)
    for path in (ours, theirs):
        with closing(sqlite3.connect(path)) as connection:
            assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_eventsourcing_writes_asyncsourcing_reads(tmp_path: Path) -> None:
    db_name = str(tmp_path / "shared.sqlite")
    es_app = ESApplication[UUID](
        {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": db_name}
    )
    fido, milo = new_dog("Fido", "roll over", "play dead"), new_dog("Milo")
    es_recordings = es_app.save(fido, milo)
    es_app.close()
    with es_datastore(db_name) as datastore:
        es_tracking_recorder(datastore).insert_tracking(Tracking("upstream", 7))

    env = {"PERSISTENCE_MODULE": "asyncsourcing.sqlite", "SQLITE_DBNAME": db_name}
    async with Application[UUID](env) as app:
        copy = await app.repository.get(fido.id)
        assert isinstance(copy, Dog)
        assert (copy.name, copy.tricks, copy.version) == (
            "Fido",
            ["roll over", "play dead"],
            3,
        )
        notifications = await app.recorder.select_notifications(None, 10)
        assert [n.id for n in notifications] == [
            r.notification.id for r in es_recordings
        ]
        assert await app.recorder.max_notification_id() == 4
        async with app.recorder.subscribe(gt=2) as subscription:
            followed = [await anext(subscription), await anext(subscription)]
        assert [n.id for n in followed] == [3, 4]

        # Our writes continue their sequences.
        copy.add_trick("sit")
        recordings = await app.save(copy)
        assert [r.notification.id for r in recordings] == [5]

    async with SQLiteFactory({"SQLITE_DBNAME": db_name}) as factory:
        tracking = await factory.tracking_recorder()
        assert await tracking.max_tracking_id("upstream") == 7
        with pytest.raises(IntegrityError):
            await tracking.insert_tracking(Tracking("upstream", 7))
        await tracking.insert_tracking(Tracking("upstream", 8))

    with closing(sqlite3.connect(db_name)) as connection:
        tables = connection.execute("SELECT name FROM sqlite_master").fetchall()
    # Our table creation found their single-row table as it is: no migration.
    assert ("old1_tracking",) not in tables


async def test_asyncsourcing_writes_eventsourcing_reads(tmp_path: Path) -> None:
    db_name = str(tmp_path / "shared.sqlite")
    env = {"PERSISTENCE_MODULE": "asyncsourcing.sqlite", "SQLITE_DBNAME": db_name}
    fido = new_dog("Fido", "roll over")
    async with Application[UUID](env) as app:
        recordings = await app.save(fido, new_dog("Milo"))
    async with SQLiteFactory(env) as factory:
        process_recorder = await factory.process_recorder()
        await process_recorder.insert_events(
            [StoredEvent(uuid4(), 1, "tests:Topic", b"{}")],
            tracking=Tracking("upstream", 3),
        )

    es_app = ESApplication[UUID](
        {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": db_name}
    )
    try:
        copy: Dog = es_app.repository.get(fido.id)
        assert (copy.name, copy.tricks, copy.version) == ("Fido", ["roll over"], 2)
        notifications = es_app.recorder.select_notifications(None, 10)
        assert [n.id for n in notifications[:3]] == [
            r.notification.id for r in recordings
        ]
        assert es_app.recorder.max_notification_id() == 4
        copy.add_trick("sit")
        assert [r.notification.id for r in es_app.save(copy)] == [5]
    finally:
        es_app.close()

    with es_datastore(db_name) as datastore:
        tracking = es_tracking_recorder(datastore)
        assert tracking.max_tracking_id("upstream") == 3
        with pytest.raises(IntegrityError):
            tracking.insert_tracking(Tracking("upstream", 3))
        # Their table creation found ours single-row: no migration.
        assert tracking.tracking_migration_previous == 1
    with closing(sqlite3.connect(db_name)) as connection:
        tables = connection.execute("SELECT name FROM sqlite_master").fetchall()
    assert ("old1_tracking",) not in tables


async def test_multi_row_tracking_table_is_migrated_as_eventsourcing_does(
    tmp_path: Path,
) -> None:
    db_name = str(tmp_path / "legacy.sqlite")
    with es_datastore(db_name, single_row_tracking=False) as datastore:
        legacy = es_tracking_recorder(datastore)
        for name, position in [("a", 1), ("a", 2), ("a", 3), ("b", 5)]:
            legacy.insert_tracking(Tracking(name, position))

    async with SQLiteFactory({"SQLITE_DBNAME": db_name}) as factory:
        tracking = await factory.tracking_recorder()
        assert await tracking.max_tracking_id("a") == 3
        assert await tracking.max_tracking_id("b") == 5
        with pytest.raises(IntegrityError):
            await tracking.insert_tracking(Tracking("a", 3))
        await tracking.insert_tracking(Tracking("a", 4))
        # Creating again changes nothing.
        await tracking.create_table()
        assert await tracking.max_tracking_id("a") == 4

    with closing(sqlite3.connect(db_name)) as connection:
        kept = connection.execute(
            "SELECT application_name, notification_id FROM old1_tracking ORDER BY 1, 2"
        ).fetchall()
    assert kept == [("a", 1), ("a", 2), ("a", 3), ("b", 5)]
    with es_datastore(db_name) as datastore:
        tracking_es = es_tracking_recorder(datastore)
        assert tracking_es.max_tracking_id("a") == 4
        assert tracking_es.max_tracking_id("b") == 5


async def test_subscription_follows_eventsourcings_commits(tmp_path: Path) -> None:
    # eventsourcing's commits do not go through our notifier: they are
    # found as another process's would be, by polling.
    db_name = str(tmp_path / "shared.sqlite")
    env = {"SQLITE_DBNAME": db_name, "SQLITE_POLL_INTERVAL": "0.02"}
    es_env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": db_name}
    async with SQLiteFactory(env) as factory:
        recorder = await factory.application_recorder()
        tracking = await factory.tracking_recorder()
        async with recorder.subscribe() as subscription:
            reading = asyncio.create_task(anext(subscription))
            waiting = asyncio.create_task(tracking.wait("upstream", 1, timeout=5))
            await asyncio.sleep(0.1)
            assert not reading.done()
            es_app = ESApplication[UUID](es_env)
            try:
                es_app.save(new_dog("Fido"))
            finally:
                es_app.close()
            with es_datastore(db_name) as datastore:
                es_tracking_recorder(datastore).insert_tracking(Tracking("upstream", 1))
            notification = await asyncio.wait_for(reading, 2)
            assert notification.id == 1
            await asyncio.wait_for(waiting, 2)


async def test_shared_cache_memory_database_is_shared_with_eventsourcing() -> None:
    db_name = f"file:{uuid4().hex}?mode=memory&cache=shared"
    with es_datastore(db_name) as datastore:
        es_recorder = es_sqlite.SQLiteApplicationRecorder(datastore)
        es_recorder.create_table()
        es_recorder.insert_events([StoredEvent(uuid4(), 1, "tests:Topic", b"{}")])
        async with SQLiteFactory({"SQLITE_DBNAME": db_name}) as factory:
            recorder = await factory.application_recorder()
            assert await recorder.max_notification_id() == 1
            await recorder.insert_events(
                [StoredEvent(uuid4(), 1, "tests:Topic", b"{}")]
            )
        assert es_recorder.max_notification_id() == 2
