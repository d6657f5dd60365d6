"""The datastore protocol (asyncsourcing.sql.datastore), checked alike on the
SQLite and the Postgres datastores: joined transactions, after-commit
callbacks, reads, table creators, position boards."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from asyncsourcing.persistence import InterfaceError, OperationalError, ProgrammingError
from asyncsourcing.postgres import PostgresDatastore
from asyncsourcing.sql.datastore import SQLDatastore
from asyncsourcing.sqlite import SQLiteDatastore
from tests.support.postgres import admin_connection, datastore, quote


class Abort(Exception):
    """Raised in a block to roll its transaction back."""


@dataclass
class Subject:
    """A datastore under test, and how its backend names and reads tables."""

    backend: str
    datastore: SQLDatastore[Any]
    schema: str | None = None

    def table(self, name: str) -> str:
        return name if self.schema is None else f"{quote(self.schema)}.{name}"

    async def value(self, conn: Any, sql: str) -> Any:
        if isinstance(conn, aiosqlite.Connection):
            rows = list(await conn.execute_fetchall(sql))
            return rows[0][0]
        return await conn.fetchval(sql)

    async def exists(self, table: str) -> bool:
        """Whether ``table`` exists, read outside any transaction under test."""
        if self.schema is None:
            sql = f"SELECT count(*) FROM sqlite_master WHERE name = '{table}'"
        else:
            sql = (
                "SELECT count(*) FROM pg_tables "
                f"WHERE schemaname = '{self.schema}' AND tablename = '{table}'"
            )
        return bool(await self.datastore.read(partial(self.value, sql=sql)))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def new_subject(request: pytest.FixtureRequest, tmp_path: Path) -> Subject:
    # Synchronous, so that it may ask for the async fixture pg_schema.
    if request.param == "sqlite":
        return Subject("sqlite", SQLiteDatastore(str(tmp_path / "db.sqlite")))
    env: dict[str, str] = request.getfixturevalue("postgres_env")
    schema: str = request.getfixturevalue("pg_schema")
    return Subject("postgres", datastore(env, schema), schema)


@pytest.fixture
async def subject(new_subject: Subject) -> AsyncIterator[Subject]:
    """A datastore with an empty table ``t``, closed after the test."""
    try:
        async with new_subject.datastore.transaction(commit=True) as conn:
            await conn.execute(f"CREATE TABLE {new_subject.table('t')} (x integer)")
        yield new_subject
    finally:
        await new_subject.datastore.close()


async def count(subject: Subject) -> int:
    result: int = await subject.datastore.read(
        partial(subject.value, sql=f"SELECT count(*) FROM {subject.table('t')}")
    )
    return result


# Transactions.


async def test_a_tasks_nested_transactions_join_its_transaction(
    subject: Subject,
) -> None:
    ds = subject.datastore
    assert not ds.in_transaction()

    async def nested() -> None:
        async with ds.transaction(commit=True) as outer:
            assert ds.in_transaction()
            async with ds.transaction(commit=True) as inner:
                assert inner is outer
                await inner.execute(f"INSERT INTO {subject.table('t')} VALUES (1)")
            async with ds.transaction() as reading:
                assert reading is outer
                assert await subject.value(
                    reading, f"SELECT count(*) FROM {subject.table('t')}"
                )
            # The enclosing transaction decides for the whole.
            raise Abort

    with pytest.raises(Abort):
        await nested()
    assert not ds.in_transaction()
    assert await count(subject) == 0


async def test_another_tasks_transaction_is_not_joined(subject: Subject) -> None:
    ds = subject.datastore
    async with ds.transaction() as conn:

        async def other() -> tuple[bool, Any]:
            async with ds.transaction() as theirs:
                return ds.in_transaction(), theirs

        in_transaction, theirs = await asyncio.create_task(other())
        assert in_transaction
        assert theirs is not conn


async def test_a_write_cannot_join_a_read(subject: Subject) -> None:
    ds = subject.datastore
    async with ds.transaction():
        with pytest.raises(ProgrammingError, match="cannot join the read"):
            async with ds.transaction(commit=True):
                pass
        # The read transaction goes on.
        assert ds.in_transaction()


async def test_after_commit_callbacks_run_only_after_a_commit(
    subject: Subject, caplog: pytest.LogCaptureFixture
) -> None:
    ds = subject.datastore
    called: list[str] = []
    async with ds.transaction(commit=True) as conn:
        ds.call_after_commit(conn, partial(called.append, "committed"))
        ds.call_after_commit(conn, partial(fail, "failing"))
        ds.call_after_commit(conn, partial(called.append, "after the failure"))
        assert called == []
    assert called == ["committed", "after the failure"]
    assert "After-commit callback failed" in caplog.text

    called.clear()

    async def rolled_back() -> None:
        async with ds.transaction(commit=True) as conn:
            ds.call_after_commit(conn, partial(called.append, "rolled back"))
            raise Abort

    with pytest.raises(Abort):
        await rolled_back()
    async with ds.transaction() as conn:
        ds.call_after_commit(conn, partial(called.append, "read"))
    assert called == []


def fail(name: str) -> None:
    raise ValueError(name)


async def test_call_after_commit_outside_a_transaction(subject: Subject) -> None:
    ds = subject.datastore
    called: list[int] = []
    if isinstance(ds, SQLiteDatastore):
        async with ds.autocommit() as connection:
            # Outside a transaction of the datastore: refused.
            with pytest.raises(ProgrammingError):
                ds.call_after_commit(connection, partial(called.append, 1))
    else:
        assert isinstance(ds, PostgresDatastore)
        async with ds.connection() as conn:
            # Each statement has committed already: called at once.
            ds.call_after_commit(conn, partial(called.append, 1))
            assert called == [1]


# Reads.


async def test_read_sees_the_writes_of_the_enclosing_transaction(
    subject: Subject,
) -> None:
    ds = subject.datastore
    async with ds.transaction(commit=True) as conn:
        await conn.execute(f"INSERT INTO {subject.table('t')} VALUES (1)")
        assert await count(subject) == 1
        assert ds.in_transaction()
    assert not ds.in_transaction()
    assert await count(subject) == 1


async def test_read_is_retried_when_its_connection_is_lost(
    subject: Subject, request: pytest.FixtureRequest
) -> None:
    if subject.backend != "postgres":
        pytest.skip("SQLite connections are not lost")
    postgres_env: dict[str, str] = request.getfixturevalue("postgres_env")
    attempts: list[int] = []

    async def query(conn: Any) -> int:
        attempts.append(conn.get_server_pid())
        if len(attempts) == 1:
            async with admin_connection(postgres_env) as admin:
                assert await admin.fetchval(
                    "SELECT pg_terminate_backend($1, 5000)", conn.get_server_pid()
                )
        result: int = await conn.fetchval("SELECT 42")
        return result

    assert await subject.datastore.read(query) == 42
    assert len(attempts) == 2
    assert attempts[0] != attempts[1]

    # In a transaction, the transaction is lost too: no retry.
    attempts.clear()
    with pytest.raises((OperationalError, InterfaceError)):
        async with subject.datastore.transaction():
            await subject.datastore.read(query)
    assert len(attempts) == 1


# Tables.


async def test_creators_run_once_before_the_next_transaction(
    subject: Subject,
) -> None:
    ds = subject.datastore
    runs: list[int] = []

    async def creator(conn: Any) -> None:
        runs.append(1)
        await conn.execute(f"CREATE TABLE IF NOT EXISTS {subject.table('c')} (x int)")

    ds.create_tables_on_first_use(creator)
    ds.create_tables_on_first_use(creator)
    assert runs == []
    async with ds.transaction():
        assert runs == [1]
    async with ds.transaction():
        pass
    assert runs == [1]
    assert await subject.exists("c")


async def test_a_failed_creator_runs_again(subject: Subject) -> None:
    ds = subject.datastore
    runs: list[int] = []

    async def creator(conn: Any) -> None:
        runs.append(1)
        await conn.execute(f"CREATE TABLE IF NOT EXISTS {subject.table('c')} (x int)")
        if len(runs) == 1:
            raise RuntimeError("first run")

    ds.create_tables_on_first_use(creator)
    with pytest.raises(RuntimeError, match="first run"):
        async with ds.transaction():
            pass
    assert runs == [1]
    # The next use runs it again (here, the read of exists()).
    assert await subject.exists("c")
    assert runs == [1, 1]
    assert await subject.exists("c")
    async with ds.transaction():
        pass
    assert runs == [1, 1]


async def test_a_created_creator_is_not_run(subject: Subject) -> None:
    ds = subject.datastore
    runs: list[int] = []

    async def creator(conn: Any) -> None:
        runs.append(1)

    ds.create_tables_on_first_use(creator)
    ds.tables_created(creator)
    async with ds.transaction():
        pass
    assert runs == []


async def test_creating_tables_commits(subject: Subject) -> None:
    async with subject.datastore.creating_tables() as conn:
        await conn.execute(f"CREATE TABLE {subject.table('made')} (x integer)")
    assert await subject.exists("made")

    async def rolled_back() -> None:
        async with subject.datastore.creating_tables() as conn:
            await conn.execute(f"CREATE TABLE {subject.table('gone')} (x integer)")
            raise Abort

    with pytest.raises(Abort):
        await rolled_back()
    assert not await subject.exists("gone")


# Position boards.


async def nothing_recorded(application_name: str) -> int | None:
    return None


async def test_one_position_board_per_tracking_table(subject: Subject) -> None:
    ds = subject.datastore

    async def other_fetch(application_name: str) -> int | None:
        return None

    board = ds.position_board("tracking", nothing_recorded)
    assert ds.position_board("tracking", other_fetch) is board
    assert ds.position_board("other_tracking", nothing_recorded) is not board


async def test_a_commit_advances_the_board_of_its_table(subject: Subject) -> None:
    ds = subject.datastore
    # Before any board: SQLite makes one (shared with the process's other
    # datastores on the file), Postgres leaves it to the first waiter to read.
    ds.advance_position_board("tracking", "app", 1)
    board = ds.position_board("tracking", nothing_recorded)
    assert board.known("app") == (1 if subject.backend == "sqlite" else None)

    waiting = asyncio.create_task(board.wait("app", 2, timeout=5))
    await asyncio.sleep(0.05)
    async with ds.transaction(commit=True) as conn:
        ds.call_after_commit(
            conn, partial(ds.advance_position_board, "tracking", "app", 2)
        )
        await asyncio.sleep(0.05)
        assert not waiting.done()
    await asyncio.wait_for(waiting, 2)
    assert board.known("app") == 2


async def test_a_commit_wakes_the_waiters_of_another_datastore(
    subject: Subject, tmp_path: Path
) -> None:
    if subject.backend != "sqlite":
        pytest.skip("Postgres datastores are woken by NOTIFY (test_postgres_listen)")
    async with SQLiteDatastore(str(tmp_path / "db.sqlite")) as other:
        board = other.position_board("tracking", nothing_recorded)
        waiting = asyncio.create_task(board.wait("app", 1, timeout=5))
        await asyncio.sleep(0.05)
        async with subject.datastore.transaction(commit=True) as conn:
            subject.datastore.call_after_commit(
                conn,
                partial(subject.datastore.advance_position_board, "tracking", "app", 1),
            )
        await asyncio.wait_for(waiting, 1)


# Closing.


async def test_close_is_idempotent_and_refuses_transactions(
    subject: Subject,
) -> None:
    ds = subject.datastore
    assert not ds.is_closed
    await ds.close()
    await ds.close()
    assert ds.is_closed
    with pytest.raises(InterfaceError):
        async with ds.transaction():
            pass
