"""PostgreSQL's write path: one round trip per save, on a connection kept
from one save to the next, through a function of the events table's own.

The kept connection is one of the pool's: given back when the pool has none
other to lend, replaced when lost, given back when the datastore closes.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from uuid import UUID

import pytest

from asyncsourcing.application import Application
from asyncsourcing.domain import Aggregate
from asyncsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from asyncsourcing.postgres.events import insert_function_name
from asyncsourcing.postgres.identifiers import MAX_IDENTIFIER_LEN
from tests.support.postgres import admin_connection, factory_env, our_connections

pytestmark = pytest.mark.postgres


def datastore_of(app: Application[UUID]) -> PostgresDatastore:
    recorder = app.recorder
    assert isinstance(recorder, PostgresApplicationRecorder)
    return recorder.datastore


async def test_a_lone_save_is_one_statement_on_one_kept_connection(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    async with Application[UUID](factory_env(postgres_env, pg_schema)) as app:
        await app.save(Aggregate())
        queries: list[str] = []
        pids: set[int] = set()

        async def watch(conn: Any) -> None:
            conn.add_query_logger(lambda record: queries.append(record.query))

        # The connection that the next writes alone get.
        await datastore_of(app).write(watch)
        for _ in range(10):
            recordings = await app.save(Aggregate())
            pids.add(await datastore_of(app).write(_backend_pid))
            assert recordings[0].notification.id > 1
        await asyncio.sleep(0)  # Query loggers are called soon, not at once.
        saves = [q for q in queries if "asyncsourcing_insert_application_events" in q]
        # One statement each, no BEGIN, LOCK or COMMIT of their own, and all
        # on one connection.
        assert len(saves) == 10
        assert len(queries) == 20  # And pg_backend_pid().
        assert len(pids) == 1


async def _backend_pid(conn: Any) -> int:
    pid: int = await conn.fetchval("SELECT pg_backend_pid()")
    return pid


async def test_the_kept_connection_is_lent_rather_than_waited_for(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    # Two connections: the one kept for saves, and one more.
    env = factory_env(
        postgres_env,
        pg_schema,
        POSTGRES_POOL_SIZE="1",
        POSTGRES_MAX_OVERFLOW="1",
        POSTGRES_CONNECT_TIMEOUT="5",
    )
    async with Application[UUID](env) as app:
        await app.save(Aggregate())
        datastore = datastore_of(app)
        async with datastore.transaction(commit=True):
            # The other connection is in use: a read in another task gets the
            # kept one at once, instead of waiting for either.
            started = time.perf_counter()
            read = asyncio.create_task(app.recorder.max_notification_id())
            assert await asyncio.wait_for(read, 2) == 1
            assert time.perf_counter() - started < 1
            # A save, in another task, takes it back.
            saving = asyncio.create_task(app.save(Aggregate()))
            recordings = await asyncio.wait_for(saving, 2)
            assert recordings[0].notification.id == 2
            # And a read gets it again at once.
            read = asyncio.create_task(app.recorder.max_notification_id())
            assert await asyncio.wait_for(read, 2) == 2
        assert (await app.save(Aggregate()))[0].notification.id == 3


async def test_a_lost_kept_connection_is_replaced(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    env = factory_env(postgres_env, pg_schema)
    async with Application[UUID](env) as app:
        await app.save(Aggregate())
        pid = await datastore_of(app).write(_backend_pid)
        async with admin_connection(postgres_env) as conn:
            assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
        for _ in range(100):  # Until asyncpg has seen it go.
            await asyncio.sleep(0.01)
            if await datastore_of(app).write(_backend_pid) != pid:
                break
        recordings = await app.save(Aggregate())
        assert recordings[0].notification.id == 2
        assert await datastore_of(app).write(_backend_pid) != pid


async def test_closing_gives_the_kept_connection_back(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    async with Application[UUID](factory_env(postgres_env, pg_schema)) as app:
        await app.save(Aggregate())
        assert await our_connections(postgres_env, pg_schema)
    for _ in range(40):
        if not await our_connections(postgres_env, pg_schema):
            break
        await asyncio.sleep(0.05)
    assert await our_connections(postgres_env, pg_schema) == []


def test_insert_function_names_fit_and_differ() -> None:
    assert insert_function_name("dogschool_events") == (
        "asyncsourcing_insert_dogschool_events"
    )
    long_a = "a" * 55 + "_events"
    long_b = "a" * 55 + "_Events"
    names = {insert_function_name(long_a), insert_function_name(long_b)}
    assert len(names) == 2
    for name in names:
        assert len(name.encode()) <= MAX_IDENTIFIER_LEN
        assert name.startswith("asyncsourcing_insert_aaa")


async def test_saves_into_a_table_with_a_long_name(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    # The events table's name is 63 bytes: its function's is shortened.
    name = "x" * (MAX_IDENTIFIER_LEN - len("_events"))
    env = factory_env(postgres_env, pg_schema)

    class LongNamed(Application[UUID]):
        pass

    LongNamed.name = name
    async with LongNamed(env) as app:
        recordings = await app.save(Aggregate(), Aggregate())
        assert [r.notification.id for r in recordings] == [1, 2]
    async with admin_connection(postgres_env) as conn:
        functions = await conn.fetch(
            "SELECT p.proname FROM pg_proc p JOIN pg_namespace n "
            "ON n.oid = p.pronamespace WHERE n.nspname = $1",
            pg_schema,
        )
    assert insert_function_name(f"{name}_events") in {f[0] for f in functions}
