"""Bad input on SQLite: clear errors that name what to fix, and nothing lost."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from uuid import uuid4

import pytest

from asyncsourcing.persistence import (
    DatabaseError,
    InfrastructureFactory,
    InfrastructureFactoryError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    ProgrammingError,
    StoredEvent,
    Tracking,
)
from asyncsourcing.sqlite import (
    SQLiteApplicationRecorder,
    SQLiteDatastore,
    SQLiteFactory,
    SQLiteTrackingRecorder,
)
from asyncsourcing.sqlite.datastore import translate_error


def stored(version: int = 1) -> StoredEvent:
    return StoredEvent(uuid4(), version, "tests:Topic", b"{}")


async def test_database_in_a_missing_folder(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "folder"
    db_name = str(missing / "db.sqlite")
    async with SQLiteFactory({"SQLITE_DBNAME": db_name}) as factory:
        recorder = factory.construct_application_recorder()
        with pytest.raises(OperationalError) as raised:
            await recorder.insert_events([stored()])
    message = str(raised.value)
    assert db_name in message
    assert "SQLITE_DBNAME" in message
    assert "folder" in message
    assert isinstance(raised.value.__cause__, sqlite3.OperationalError)
    assert not missing.parent.parent.exists()


async def test_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    content = b"These are my notes, not a database. " * 200
    path.write_bytes(content)
    async with SQLiteFactory({"SQLITE_DBNAME": str(path)}) as factory:
        with pytest.raises(DatabaseError) as raised:
            await factory.application_recorder()
        with pytest.raises(DatabaseError):
            await factory.construct_tracking_recorder().max_tracking_id("upstream")
    message = str(raised.value)
    assert str(path) in message
    assert "not a SQLite database" in message
    assert isinstance(raised.value.__cause__, sqlite3.DatabaseError)
    assert path.read_bytes() == content
    assert os.listdir(tmp_path) == ["notes.txt"]


@contextmanager
def write_locked(path: Path) -> Iterator[None]:
    """Holds the write lock of the database at ``path``, as another writer would."""
    with closing(sqlite3.connect(path, isolation_level=None)) as connection:
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            connection.rollback()


async def test_locked_database_past_the_timeout(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    env = {"SQLITE_DBNAME": str(path), "SQLITE_LOCK_TIMEOUT": "0.2"}
    async with SQLiteFactory(env) as factory:
        recorder = await factory.process_recorder()
        await recorder.insert_events([stored()], tracking=Tracking("upstream", 1))
        with write_locked(path):
            with pytest.raises(OperationalError) as raised:
                await recorder.insert_events(
                    [stored()], tracking=Tracking("upstream", 2)
                )
            with pytest.raises(OperationalError):
                await recorder.insert_tracking(Tracking("upstream", 2))
            # Readers are not blocked by a writer (WAL).
            assert await recorder.max_notification_id() == 1
        message = str(raised.value)
        assert str(path) in message
        assert "SQLITE_LOCK_TIMEOUT" in message
        assert "0.2 seconds" in message
        assert isinstance(raised.value.__cause__, sqlite3.OperationalError)
        # Nothing was changed, and the recorder works once the lock is released.
        assert await recorder.max_notification_id() == 1
        assert await recorder.max_tracking_id("upstream") == 1
        await recorder.insert_events([stored()], tracking=Tracking("upstream", 2))
        assert await recorder.max_tracking_id("upstream") == 2


async def test_table_creation_on_a_locked_database_is_retried(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    with closing(sqlite3.connect(path)) as connection:
        connection.execute("PRAGMA journal_mode=WAL")
    env = {"SQLITE_DBNAME": str(path), "SQLITE_LOCK_TIMEOUT": "0.1"}
    async with SQLiteFactory(env) as factory:
        recorder = factory.construct_application_recorder()
        with write_locked(path), pytest.raises(OperationalError, match="locked"):
            await recorder.max_notification_id()
        assert await recorder.max_notification_id() is None


@pytest.mark.parametrize(
    ("env", "key", "detail"),
    [
        ({}, "SQLITE_DBNAME", "not found"),
        ({"SQLITE_DBNAME": ""}, "SQLITE_DBNAME", "not found"),
        ({"SQLITE_LOCK_TIMEOUT": "soon"}, "SQLITE_LOCK_TIMEOUT", "'soon'"),
        ({"SQLITE_LOCK_TIMEOUT": "-1"}, "SQLITE_LOCK_TIMEOUT", ">= 0"),
        ({"SQLITE_POLL_INTERVAL": "0"}, "SQLITE_POLL_INTERVAL", "> 0"),
        ({"SQLITE_POLL_INTERVAL": "nan"}, "SQLITE_POLL_INTERVAL", "'nan'"),
        ({"SQLITE_POLL_INTERVAL": "inf"}, "SQLITE_POLL_INTERVAL", "'inf'"),
        ({"ORIGINATOR_ID_TYPE": "int"}, "ORIGINATOR_ID_TYPE", "'int'"),
        ({"SINGLE_ROW_TRACKING": "no"}, "SINGLE_ROW_TRACKING", "single-row"),
        ({"CREATE_TABLE": "maybe"}, "CREATE_TABLE", "'maybe'"),
    ],
)
def test_bad_settings_are_named(env: dict[str, str], key: str, detail: str) -> None:
    if key != "SQLITE_DBNAME":
        env = {"SQLITE_DBNAME": ":memory:", **env}
    with pytest.raises(InfrastructureFactoryError) as raised:
        InfrastructureFactory.construct(
            {"PERSISTENCE_MODULE": "asyncsourcing.sqlite", **env}
        )
    assert key in str(raised.value)
    assert detail in str(raised.value)
    # What eventsourcing.sqlite raises for the same mistakes.
    assert isinstance(raised.value, OSError)


def test_prefixed_settings_are_named_too() -> None:
    from asyncsourcing.utils import Environment

    env = Environment("myview", {"MYVIEW_SQLITE_DBNAME": ":memory:"})
    env["MYVIEW_SQLITE_LOCK_TIMEOUT"] = "x"
    with pytest.raises(InfrastructureFactoryError, match="MYVIEW_SQLITE_LOCK_TIMEOUT"):
        SQLiteFactory(env)


@pytest.mark.parametrize(
    "name", ["", "1abc", "bad name", 'x"; DROP TABLE y; --', "sqlite_master", "a-b"]
)
def test_bad_table_names_are_refused(name: str) -> None:
    datastore = SQLiteDatastore(":memory:")
    with pytest.raises(ProgrammingError, match="Invalid SQLite table name"):
        SQLiteTrackingRecorder(datastore, tracking_table_name=name)
    with pytest.raises(ProgrammingError, match="Invalid SQLite table name"):
        SQLiteApplicationRecorder(datastore, events_table_name=name)


async def test_sqlite_errors_become_pep_249_errors_with_their_cause(
    tmp_path: Path,
) -> None:
    async with SQLiteDatastore(str(tmp_path / "db.sqlite")) as datastore:
        recorder = SQLiteApplicationRecorder(datastore)
        event = stored()
        await recorder.insert_events([event])
        with pytest.raises(IntegrityError) as raised:
            await recorder.insert_events([event])
        assert isinstance(raised.value.__cause__, sqlite3.IntegrityError)
        with pytest.raises(OperationalError, match="no such table") as no_table:
            async with datastore.transaction(commit=False) as connection:
                await connection.execute("SELECT * FROM nowhere")
        assert isinstance(no_table.value.__cause__, sqlite3.OperationalError)
        with pytest.raises(ProgrammingError):
            async with datastore.transaction(commit=False) as connection:
                await connection.execute("SELECT ?", (1, 2))

    cases = [
        (sqlite3.InterfaceError("x"), "InterfaceError"),
        (sqlite3.DataError("x"), "DataError"),
        (sqlite3.InternalError("x"), "InternalError"),
        (sqlite3.NotSupportedError("x"), "NotSupportedError"),
        (sqlite3.DatabaseError("x"), "DatabaseError"),
        (sqlite3.Error("x"), "PersistenceError"),
    ]
    for error, name in cases:
        assert type(translate_error(error, "db")).__name__ == name


async def test_create_table_false_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    env = {"SQLITE_DBNAME": str(path), "CREATE_TABLE": "false"}
    async with SQLiteFactory(env) as factory:
        recorder = await factory.application_recorder()
        with pytest.raises(OperationalError, match="no such table: stored_events"):
            await recorder.max_notification_id()
        # Made elsewhere, here by create_table(): then it is used.
        await recorder.create_table()
        assert await recorder.max_notification_id() is None


async def test_nested_transaction_joins_the_enclosing_one() -> None:
    async with SQLiteDatastore(":memory:") as datastore:
        recorder = SQLiteTrackingRecorder(datastore)
        async with datastore.transaction(commit=True) as connection:
            await recorder._insert_tracking(connection, Tracking("upstream", 1))
            # Sees the enclosing transaction's writes; doesn't wait for itself.
            assert await recorder.max_tracking_id("upstream") == 1
            await recorder.insert_tracking(Tracking("upstream", 2))
        assert await recorder.max_tracking_id("upstream") == 2

        # The enclosing transaction decides: an error rolls back the whole.
        async def failing_batch() -> None:
            async with datastore.transaction(commit=True):
                await recorder.insert_tracking(Tracking("upstream", 3))
                raise RuntimeError("batch failed")

        with pytest.raises(RuntimeError, match="batch failed"):
            await failing_batch()
        assert await recorder.max_tracking_id("upstream") == 2


async def test_write_cannot_join_a_read_transaction() -> None:
    async with SQLiteDatastore(":memory:") as datastore:
        recorder = SQLiteTrackingRecorder(datastore)
        async with datastore.transaction(commit=False):
            with pytest.raises(ProgrammingError, match="cannot join"):
                await recorder.insert_tracking(Tracking("upstream", 1))
        assert await recorder.max_tracking_id("upstream") is None


async def test_call_after_commit_needs_a_transaction_of_the_datastore() -> None:
    async with (
        SQLiteDatastore(":memory:") as datastore,
        SQLiteDatastore(":memory:") as other,
        other.transaction(commit=False) as connection,
    ):
        with pytest.raises(ProgrammingError, match="not in a transaction"):
            datastore.call_after_commit(connection, lambda: None)


async def test_closed_datastore_refuses_use() -> None:
    datastore = SQLiteDatastore(":memory:")
    recorder = SQLiteApplicationRecorder(datastore)
    await recorder.insert_events([stored()])
    await datastore.close()
    with pytest.raises(InterfaceError, match="closed"):
        await recorder.max_notification_id()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"db_name": ""},
        {"db_name": "x", "lock_timeout": -1},
        {"db_name": "x", "pool_size": 0},
        {"db_name": "x", "poll_interval": 0},
        {"db_name": "x", "originator_id_type": "int"},
    ],
)
def test_bad_datastore_arguments(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="must"):
        SQLiteDatastore(**kwargs)  # type: ignore[arg-type]
