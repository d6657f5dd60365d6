"""eventsourcing's insert function, ``es_insert_events_uuid``, in a shared database.

eventsourcing 9.5 saves through this function when
``POSTGRES_ENABLE_DB_FUNCTIONS`` is on. The function that asyncsourcing
creates has eventsourcing's body and one statement more: it takes the events
table's EXCLUSIVE lock, as every other insert does, so that events saved
through it commit in the order of their notification ids and no subscriber
passes over one. eventsourcing re-creates the function with its own body,
without the lock, whenever it creates its tables: a subscription that finds
that body says so.

The function's body names the schema, which may be any valid name: even one
containing the body's ``$BODY$`` delimiter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID, uuid4

import eventsourcing.application
import eventsourcing.postgres
import pytest
from eventsourcing.persistence import StoredEvent, Tracking
from eventsourcing.utils import Environment

from asyncsourcing.application import Application
from asyncsourcing.domain import Aggregate
from asyncsourcing.postgres import (
    PostgresApplicationRecorder,
    PostgresDatastore,
    PostgresFactory,
    PostgresTrackingRecorder,
)
from asyncsourcing.postgres.identifiers import dollar_quote
from asyncsourcing.projection import Projection, ProjectionRunner
from tests.support.postgres import admin_connection, factory_env, quote

pytestmark = pytest.mark.postgres

# Long enough for a writer that is not held back to have committed, and for
# the runner to have processed what it committed.
SETTLE = 0.5


def event(originator_id: UUID, version: int = 1) -> StoredEvent:
    return StoredEvent(originator_id, version, "tests:Topic", b"{}")


def es_env(env: dict[str, str]) -> dict[str, str]:
    """The settings of eventsourcing on the same database and schema."""
    env = {k: v for k, v in env.items() if k != "PERSISTENCE_MODULE"}
    return {**env, "POSTGRES_POOL_SIZE": "1"}


def es_factory(
    env: dict[str, str], **extra: str
) -> eventsourcing.postgres.PostgresFactory:
    """eventsourcing's own Postgres factory, on the same schema."""
    return eventsourcing.postgres.PostgresFactory(
        Environment("", {**es_env(env), **extra})
    )


async def insert_as_eventsourcing_does(
    conn: Any, schema: str, stored_event: StoredEvent
) -> list[int]:
    """Save ``stored_event`` through ``es_insert_events_uuid``, on ``conn``."""
    rows = await conn.fetch(
        f"SELECT * FROM {quote(schema)}.es_insert_events_uuid(ARRAY["
        "ROW($1::uuid, $2::bigint, $3::text, $4::bytea)"
        f"]::{quote(schema)}.stored_event_uuid[])",
        stored_event.originator_id,
        stored_event.originator_version,
        stored_event.topic,
        stored_event.state,
    )
    return [row[0] for row in rows]


# A runner, and a writer in a long transaction.


class Kennel(Application[UUID]):
    pass


class Dog(Aggregate):
    def __init__(self, name: str) -> None:
        self.name = name


class Register(PostgresTrackingRecorder):
    """The names of the dogs, in the order they were processed."""

    def __init__(self, datastore: PostgresDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        self.names_table = self._qualified(self.tracking_table_name + "_names")
        self.sql_create_statements.append(
            f"CREATE TABLE IF NOT EXISTS {self.names_table} "
            "(position bigserial, name text)"
        )

    async def add(self, name: str, tracking: Tracking) -> None:
        async with self.datastore.transaction(commit=True) as conn:
            await self._insert_tracking(conn, tracking)
            await conn.execute(
                f"INSERT INTO {self.names_table} (name) VALUES ($1)", name
            )

    async def names(self) -> list[str]:
        async with self.datastore.transaction() as conn:
            rows = await conn.fetch(
                f"SELECT name FROM {self.names_table} ORDER BY position"
            )
        return [row[0] for row in rows]


class Registering(Projection[Register]):
    async def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        await self.view.add(domain_event.name, tracking)


class ESKennel(eventsourcing.application.Application[UUID]):
    name = "Kennel"


async def test_events_saved_through_the_function_commit_in_the_order_of_their_ids(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    env = factory_env(postgres_env, pg_schema)
    runner: ProjectionRunner[Kennel, Register] = ProjectionRunner(
        application_class=Kennel,
        projection_class=Registering,
        view_class=Register,
        env=env,
    )
    async with runner:
        view = runner.projection.view
        await runner.app.save(Dog("Fido"))
        await view.wait("Kennel", 1, timeout=5)
        # An eventsourcing application saving through the function (with the
        # tables made, and so the function: CREATE_TABLE=false keeps it).
        es_app = ESKennel(
            env={
                **es_env(env),
                "PERSISTENCE_MODULE": "eventsourcing.postgres",
                "POSTGRES_ENABLE_DB_FUNCTIONS": "yes",
                "CREATE_TABLE": "false",
            }
        )
        try:
            # Rex is saved through the function as eventsourcing saves, but in
            # a transaction that takes its time to commit.
            (rex_created,) = Dog("Rex").collect_events()
            rex = runner.app.mapper.to_stored_event(rex_created)
            async with (
                admin_connection(postgres_env) as long_writer,
                long_writer.transaction(),
            ):
                ids = await insert_as_eventsourcing_does(long_writer, pg_schema, rex)
                assert ids == [2]
                # Spot, saved meanwhile by eventsourcing, waits for the table
                # lock: it gets the next id, and commits after Rex.
                saving_spot = asyncio.create_task(
                    asyncio.to_thread(es_app.save, Dog("Spot"))
                )
                await asyncio.sleep(SETTLE)
                spot_was_held_back = not saving_spot.done()
            (spot,) = await saving_spot
        finally:
            es_app.close()
        assert spot.notification.id == 3

        await view.wait("Kennel", 3, timeout=5)
        # Without the lock, Spot committed 3 first, the runner processed it,
        # and then never saw Rex's 2.
        assert await view.names() == ["Fido", "Rex", "Spot"]
        assert spot_was_held_back


# eventsourcing's own writer.


async def test_eventsourcing_saving_through_the_function_waits_for_our_saves(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    env = factory_env(postgres_env, pg_schema)
    async with PostgresFactory(env) as factory:
        recorder = await factory.application_recorder()
        assert isinstance(recorder, PostgresApplicationRecorder)
        await recorder.max_notification_id()  # Tables and functions made.

        # eventsourcing, with the tables made: its CREATE_TABLE=false keeps
        # the function that asyncsourcing made.
        es = es_factory(env, POSTGRES_ENABLE_DB_FUNCTIONS="yes", CREATE_TABLE="false")
        try:
            es_recorder = es.application_recorder()
            theirs = uuid4()
            assert es_recorder.insert_events([event(theirs)]) == [1]

            ours = uuid4()
            async with factory.datastore.transaction(commit=True):
                assert await recorder.insert_events([event(ours)]) == [2]
                saving = asyncio.create_task(
                    asyncio.to_thread(es_recorder.insert_events, [event(theirs, 2)])
                )
                await asyncio.sleep(SETTLE)
                eventsourcing_was_held_back = not saving.done()
            assert await saving == [3]
            assert eventsourcing_was_held_back

            notifications = await recorder.select_notifications(None, 10)
            assert [(n.id, n.originator_id) for n in notifications] == [
                (1, theirs),
                (2, ours),
                (3, theirs),
            ]
        finally:
            es.close()


async def test_the_function_works_in_a_transaction_that_holds_the_lock_already(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    async with PostgresFactory(factory_env(postgres_env, pg_schema)) as factory:
        recorder = await factory.application_recorder()
        await recorder.max_notification_id()
    async with admin_connection(postgres_env) as conn, conn.transaction():
        await conn.execute(
            f"LOCK TABLE {quote(pg_schema)}.stored_events IN EXCLUSIVE MODE"
        )
        assert await insert_as_eventsourcing_does(conn, pg_schema, event(uuid4())) == [
            1
        ]


async def test_eventsourcings_function_without_the_lock_is_reported_by_subscriptions(
    postgres_env: dict[str, str], pg_schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="asyncsourcing.postgres")
    env = factory_env(postgres_env, pg_schema)
    async with PostgresFactory(env) as factory:
        recorder = await factory.application_recorder()
        assert isinstance(recorder, PostgresApplicationRecorder)
        async with recorder.subscribe(gt=0):
            pass
        assert await recorder.check_insert_events_function()
        assert not caplog.records

        # eventsourcing, creating its tables, puts its own body back.
        es = es_factory(env)
        try:
            es.application_recorder()
        finally:
            es.close()
        async with recorder.subscribe(gt=0):
            pass
        assert not await recorder.check_insert_events_function()
        (message, *_) = [r.getMessage() for r in caplog.records]
        assert f'{quote(pg_schema)}."es_insert_events_uuid"' in message
        assert "without locking the events table" in message
        assert "POSTGRES_ENABLE_DB_FUNCTIONS" in message

    # asyncsourcing, creating its tables, puts the lock back.
    async with PostgresFactory(env) as factory:
        recorder = await factory.application_recorder()
        assert isinstance(recorder, PostgresApplicationRecorder)
        await recorder.max_notification_id()
        assert await recorder.check_insert_events_function()


async def test_the_function_is_eventsourcings_with_the_table_lock(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    env = factory_env(postgres_env, pg_schema)
    es = es_factory(env)
    try:
        es.application_recorder()
    finally:
        es.close()
    theirs = await function_source(postgres_env, pg_schema)
    async with PostgresFactory(env) as factory:
        await (await factory.application_recorder()).max_notification_id()
    ours = await function_source(postgres_env, pg_schema)

    set_lock_timeout = "    SET LOCAL lock_timeout = '0s';"
    lock = f'    LOCK TABLE {quote(pg_schema)}."stored_events" IN EXCLUSIVE MODE;'
    assert set_lock_timeout in theirs
    assert ours == theirs.replace(set_lock_timeout, set_lock_timeout + lock)


async def function_source(env: dict[str, str], schema: str) -> str:
    async with admin_connection(env) as conn:
        source: str = await conn.fetchval(
            "SELECT p.prosrc FROM pg_proc p "
            "JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = $1 AND p.proname = 'es_insert_events_uuid'",
            schema,
        )
    return source


# Any valid schema name.


@contextlib.asynccontextmanager
async def schema_named(env: dict[str, str], name: str) -> AsyncIterator[str]:
    async with admin_connection(env) as conn:
        await conn.execute(f"CREATE SCHEMA {quote(name)}")
    try:
        yield name
    finally:
        async with admin_connection(env) as conn:
            await conn.execute(f"DROP SCHEMA IF EXISTS {quote(name)} CASCADE")


@pytest.mark.parametrize(
    "name",
    [
        "Test $BODY$ schema",
        "test $$ schema",
        "test $BODY$ and $BODY_1$",
        "test \"double\" and 'single' quotes",
        "Test Spaces And UPPER Case",
        "test % and \\ and ;",
    ],
)
async def test_any_valid_schema_name_works(
    postgres_env: dict[str, str], name: str
) -> None:
    schema = f"{name} {uuid4().hex[:8]}"
    async with schema_named(postgres_env, schema):
        env = factory_env(postgres_env, schema)
        async with PostgresFactory(env) as factory:
            recorder = await factory.application_recorder()
            assert isinstance(recorder, PostgresApplicationRecorder)
            tracking = await factory.tracking_recorder()
            a = uuid4()
            assert await recorder.insert_events([event(a)]) == [1]
            async with admin_connection(postgres_env) as conn:
                assert await insert_as_eventsourcing_does(
                    conn, schema, event(a, 2)
                ) == [2]
            async with recorder.subscribe(gt=0) as subscription:
                assert [(await anext(subscription)).id for _ in range(2)] == [1, 2]
            await tracking.insert_tracking(Tracking("upstream", 2))
            await tracking.wait("upstream", 2, timeout=5)


def test_bodies_are_dollar_quoted_with_a_delimiter_that_does_not_occur_in_them() -> (
    None
):
    # eventsourcing's delimiter, for any ordinary body.
    assert dollar_quote("BEGIN END;") == "$BODY$BEGIN END;$BODY$"
    assert dollar_quote('"a$BODY$b"') == '$BODY_1$"a$BODY$b"$BODY_1$'
    assert dollar_quote("$BODY$ $BODY_1$") == "$BODY_2$$BODY$ $BODY_1$$BODY_2$"
    # A body ending in part of the delimiter would end early with it.
    assert dollar_quote("x$BODY") == "$BODY_1$x$BODY$BODY_1$"
