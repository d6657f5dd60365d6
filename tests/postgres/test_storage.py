"""Storage compatibility with eventsourcing 9.5's Postgres backend (psycopg).

The tables we create are eventsourcing's, and each library reads, follows,
projects and tracks what the other writes, in one schema.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any
from uuid import UUID, uuid4

import eventsourcing.application
import eventsourcing.postgres
import pytest
from eventsourcing.application import ProcessingEvent
from eventsourcing.persistence import IntegrityError, StoredEvent, Tracking
from eventsourcing.utils import Environment

from asyncsourcing.application import Application
from asyncsourcing.domain import Aggregate
from asyncsourcing.postgres import (
    PostgresDatastore,
    PostgresFactory,
    PostgresTrackingRecorder,
)
from asyncsourcing.projection import (
    EventSourcedProjection,
    EventSourcedProjectionRunner,
    Projection,
    ProjectionRunner,
)
from asyncsourcing.utils import get_topic
from tests.support.postgres import admin_connection, factory_env, quote

pytestmark = pytest.mark.postgres


def es_factory(
    env: dict[str, str], name: str = ""
) -> eventsourcing.postgres.PostgresFactory:
    """eventsourcing's own Postgres factory, on the same schema."""
    env = {k: v for k, v in env.items() if k != "PERSISTENCE_MODULE"}
    env["POSTGRES_POOL_SIZE"] = "1"
    env["POSTGRES_MAX_OVERFLOW"] = "2"
    return eventsourcing.postgres.PostgresFactory(Environment(name, env))


def event(originator_id: UUID, version: int, topic: str = "tests:Topic") -> StoredEvent:
    return StoredEvent(originator_id, version, topic, f'{{"v":{version}}}'.encode())


async def describe_schema(env: dict[str, str], schema: str) -> dict[str, Any]:
    """Everything about the tables, types, indexes and functions of ``schema``,
    with the schema's name replaced, so two schemas can be compared."""
    async with admin_connection(env) as conn:

        async def rows(query: str) -> list[tuple[Any, ...]]:
            return [tuple(r) for r in await conn.fetch(query, schema)]

        return {
            "columns": await rows(
                "SELECT table_name, column_name, ordinal_position, data_type, "
                "is_nullable, replace(column_default, $1, 'S') "
                "FROM information_schema.columns WHERE table_schema = $1 "
                "ORDER BY table_name, ordinal_position"
            ),
            "relations": await rows(
                "SELECT c.relname, c.relkind, c.reloptions FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = $1 ORDER BY c.relname"
            ),
            "indexes": await rows(
                "SELECT indexname, replace(indexdef, $1, 'S') FROM pg_indexes "
                "WHERE schemaname = $1 ORDER BY indexname"
            ),
            "constraints": await rows(
                "SELECT cl.relname, co.conname, pg_get_constraintdef(co.oid) "
                "FROM pg_constraint co JOIN pg_class cl ON cl.oid = co.conrelid "
                "JOIN pg_namespace n ON n.oid = cl.relnamespace "
                "WHERE n.nspname = $1 ORDER BY 1, 2"
            ),
            "types": await rows(
                "SELECT udt_name, attribute_name, ordinal_position, data_type "
                "FROM information_schema.attributes WHERE udt_schema = $1 "
                "ORDER BY 1, 3"
            ),
            "functions": await rows(
                "SELECT p.proname, replace(pg_get_functiondef(p.oid), $1, 'S') "
                "FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                "WHERE n.nspname = $1 ORDER BY 1"
            ),
            "tracking_rows": [
                (
                    table,
                    await conn.fetch(f"SELECT * FROM {quote(schema)}.{quote(table)}"),
                )
                for (table,) in await rows(
                    "SELECT tablename FROM pg_tables WHERE schemaname = $1 "
                    "AND tablename LIKE '%tracking' ORDER BY 1"
                )
            ],
        }


def without_table_lock(functions: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """``functions`` (from :func:`describe_schema`) as eventsourcing makes them."""
    lock = '    LOCK TABLE "S"."stored_events" IN EXCLUSIVE MODE;'
    return [(name, source.replace(lock, "")) for name, source in functions]


async def new_schema(env: dict[str, str]) -> str:
    schema = f"test_{uuid4().hex[:12]}"
    async with admin_connection(env) as conn:
        await conn.execute(f"CREATE SCHEMA {quote(schema)}")
    return schema


async def drop_schema(env: dict[str, str], schema: str) -> None:
    async with admin_connection(env) as conn:
        await conn.execute(f"DROP SCHEMA IF EXISTS {quote(schema)} CASCADE")


async def test_tables_are_eventsourcings(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    theirs = pg_schema
    ours = await new_schema(postgres_env)
    try:
        # eventsourcing's tables, in the order ours are made below.
        for name in ("Orders", ""):
            es = es_factory(factory_env(postgres_env, theirs), name)
            try:
                es.application_recorder()
                es.aggregate_recorder("snapshots")
                es.tracking_recorder()
            finally:
                es.close()

        for name in ("Orders", ""):
            async with PostgresFactory(
                Environment(name, factory_env(postgres_env, ours))
            ) as factory:
                await factory.application_recorder()
                await factory.aggregate_recorder("snapshots")
                await factory.tracking_recorder()

        expected = await describe_schema(postgres_env, theirs)
        actual = await describe_schema(postgres_env, ours)
        # eventsourcing's insert function, as we make it, takes the table lock
        # as every other insert does (see test_postgres_functions).
        actual["functions"] = without_table_lock(actual["functions"])
        # Ours has functions more, through which saves lock, notify and
        # insert in one round trip: two per application's events table (for
        # one event, for many), and the one of earlier versions, which name
        # the table in arguments. eventsourcing never calls them.
        ours_only = [f for f in actual["functions"] if f not in expected["functions"]]
        assert sorted(f[0] for f in ours_only) == [
            "asyncsourcing_insert_events_uuid",
            *["asyncsourcing_insert_orders_events"] * 2,
            *["asyncsourcing_insert_stored_events"] * 2,
        ]
        for function in ours_only:
            actual["functions"].remove(function)
        assert {t for t, *_ in expected["columns"]} == {
            "orders_events",
            "orders_snapshots",
            "orders_tracking",
            "stored_events",
            "stored_snapshots",
            "notification_tracking",
        }
        assert expected["functions"], "eventsourcing's insert function"
        for key in expected:
            assert actual[key] == expected[key], key

        # Creating again changes nothing (and so does eventsourcing's, but
        # for putting its own insert function back, without the lock).
        async with PostgresFactory(factory_env(postgres_env, ours)) as factory:
            await factory.process_recorder()
        es = es_factory(factory_env(postgres_env, ours))
        es.process_recorder()
        es.close()
        again = await describe_schema(postgres_env, ours)
        for function in ours_only:
            again["functions"].remove(function)
        assert again == actual
    finally:
        await drop_schema(postgres_env, ours)


async def test_events_written_by_eventsourcing_are_read_and_followed(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    # A long poll interval: being woken in time proves the NOTIFY reached us.
    env = factory_env(postgres_env, pg_schema, POSTGRES_POLL_INTERVAL="30")
    es = es_factory(env)
    try:
        es_recorder = es.application_recorder()
        a = uuid4()
        es_recorder.insert_events([event(a, 1), event(a, 2)])
        async with PostgresFactory(env) as factory:
            recorder = await factory.application_recorder()
            assert [e.originator_version for e in await recorder.select_events(a)] == [
                1,
                2,
            ]
            assert await recorder.max_notification_id() == 2
            async with recorder.subscribe(gt=0) as subscription:
                first = [await anext(subscription), await anext(subscription)]
                assert [n.id for n in first] == [1, 2]
                started = time.monotonic()
                following = asyncio.create_task(anext(subscription))
                await asyncio.sleep(0.05)
                await asyncio.to_thread(es_recorder.insert_events, [event(a, 3)])
                third = await asyncio.wait_for(following, 5)
                assert third.id == 3
                assert third.originator_id == a
                assert time.monotonic() - started < 1
    finally:
        es.close()


async def test_events_written_by_us_are_read_and_followed_by_eventsourcing(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    env = factory_env(postgres_env, pg_schema)
    a = uuid4()
    async with PostgresFactory(env) as factory:
        recorder = await factory.application_recorder()
        ids = await recorder.insert_events([event(a, 1), event(a, 2)])
        assert ids == [1, 2]
        es = es_factory(env, "")
        try:
            es_recorder = es.application_recorder()
            assert [n.id for n in es_recorder.select_notifications(None, 10)] == [1, 2]
            assert es_recorder.select_events(a)[1] == event(a, 2)

            def follow(n: int) -> list[int]:
                seen: list[int] = []
                with es_recorder.subscribe(gt=2) as subscription:
                    for notification in subscription:
                        seen.append(notification.id)
                        if len(seen) == n:
                            break
                return seen

            following = asyncio.create_task(asyncio.to_thread(follow, 2))
            await asyncio.sleep(0.2)
            await recorder.insert_events([event(a, 3)])
            await recorder.insert_events([event(a, 4)])
            assert await asyncio.wait_for(following, 10) == [3, 4]
            # Their writes after ours continue the same sequence.
            es_recorder.insert_events([event(a, 5)])
            assert await recorder.max_notification_id() == 5
        finally:
            es.close()


async def test_tracking_is_shared_both_ways(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    env = factory_env(postgres_env, pg_schema)
    es = es_factory(env, "Counts")
    try:
        es_tracking = es.tracking_recorder()
        es_tracking.insert_tracking(Tracking("upstream", 5))
        async with PostgresFactory(Environment("Counts", env)) as factory:
            ours = await factory.tracking_recorder()
            assert await ours.max_tracking_id("upstream") == 5
            await ours.wait("upstream", 5)
            with pytest.raises(IntegrityError):
                await ours.insert_tracking(Tracking("upstream", 5))
            await ours.insert_tracking(Tracking("upstream", 6))
            assert es_tracking.max_tracking_id("upstream") == 6
            assert es_tracking.has_tracking_id("upstream", 6)
            with pytest.raises(IntegrityError):
                es_tracking.insert_tracking(Tracking("upstream", 6))
            assert await ours.max_tracking_id("upstream") == 6
    finally:
        es.close()


async def test_multi_row_tracking_table_is_migrated_as_eventsourcing_does(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    table = f"{quote(pg_schema)}.legacy_tracking"
    async with admin_connection(postgres_env) as conn:
        # The layout of eventsourcing's tracking tables before 9.5.
        await conn.execute(
            f"CREATE TABLE {table} (application_name text, notification_id bigint, "
            "PRIMARY KEY (application_name, notification_id))"
        )
        await conn.executemany(
            f"INSERT INTO {table} VALUES ($1, $2)", [("a", 1), ("a", 2), ("b", 7)]
        )
    env = factory_env(postgres_env, pg_schema)
    async with PostgresFactory(Environment("Legacy", env)) as factory:
        tracking = await factory.tracking_recorder()
        assert await tracking.max_tracking_id("a") == 2
        assert await tracking.max_tracking_id("b") == 7
        await tracking.insert_tracking(Tracking("a", 3))
        # Migrated once only.
        await factory.tracking_recorder()
        assert await tracking.max_tracking_id("a") == 3
    async with admin_connection(postgres_env) as conn:
        rows = await conn.fetch(f"SELECT * FROM {table} ORDER BY 1")
        assert [tuple(r) for r in rows] == [("__migration__", 1), ("a", 3), ("b", 7)]
        backup = await conn.fetchval(
            "SELECT count(*) FROM pg_tables WHERE schemaname = $1 AND tablename = $2",
            pg_schema,
            "bkup1_legacy_tracking",
        )
        assert backup == 1
    es = es_factory(env, "Legacy")
    try:
        assert es.tracking_recorder().max_tracking_id("b") == 7
    finally:
        es.close()


# Projecting eventsourcing's events, and eventsourcing reading ours.


class Interop(Application[UUID]):
    pass


class ESInterop(eventsourcing.application.Application[UUID]):
    name = "Interop"


class Counts(PostgresTrackingRecorder):
    """A view counting events by topic."""

    def __init__(self, datastore: PostgresDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        self.counts_table = self._qualified(self.tracking_table_name + "_counts")
        self.sql_create_statements.append(
            f"CREATE TABLE IF NOT EXISTS {self.counts_table} "
            "(topic text PRIMARY KEY, n bigint)"
        )

    async def count(self, topic: str, tracking: Tracking) -> None:
        async with self.datastore.transaction(commit=True) as conn:
            await self._insert_tracking(conn, tracking)
            await conn.execute(
                f"INSERT INTO {self.counts_table} VALUES ($1, 1) ON CONFLICT (topic) "
                f"DO UPDATE SET n = {self.counts_table}.n + 1",
                topic,
            )

    async def counts(self) -> dict[str, int]:
        async with self.datastore.transaction() as conn:
            rows = await conn.fetch(f"SELECT topic, n FROM {self.counts_table}")
        return {row[0]: row[1] for row in rows}


class CountingProjection(Projection[Counts]):
    name = "counting"

    async def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        await self.view.count(type(domain_event).__qualname__, tracking)


class Dog(Aggregate):
    def __init__(self, name: str) -> None:
        self.name = name
        self.tricks: list[str] = []

    class TrickAdded(Aggregate.Event):
        trick: str

        def apply(self, aggregate: Any) -> None:
            aggregate.tricks.append(self.trick)

    def add_trick(self, trick: str) -> None:
        self.trigger_event(self.TrickAdded, trick=trick)


async def test_events_of_eventsourcing_application_are_projected_and_vice_versa(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    env = factory_env(postgres_env, pg_schema)
    es_env = {k: v for k, v in env.items() if k != "PERSISTENCE_MODULE"}
    es_env["PERSISTENCE_MODULE"] = "eventsourcing.postgres"
    es_app = ESInterop(env=es_env)
    try:
        dog = Dog("Fido")
        dog.add_trick("roll over")
        es_app.save(dog)

        runner: ProjectionRunner[Interop, Counts] = ProjectionRunner(
            application_class=Interop,
            projection_class=CountingProjection,
            view_class=Counts,
            env=env,
        )
        async with runner:
            view = runner.projection.view
            await view.wait("Interop", 2, timeout=5)
            assert await view.counts() == {"Dog.Created": 1, "Dog.TrickAdded": 1}

            # Ours, saved with our application, projected too, and read by theirs.
            ours = await runner.app.repository.get(dog.id)
            assert ours.tricks == ["roll over"]
            ours.add_trick("play dead")
            recordings = await runner.app.save(ours)
            await view.wait("Interop", recordings[-1].notification.id, timeout=5)
            assert await view.counts() == {"Dog.Created": 1, "Dog.TrickAdded": 2}
            theirs: Any = await asyncio.to_thread(es_app.repository.get, dog.id)
            assert theirs.tricks == ["roll over", "play dead"]
    finally:
        es_app.close()


async def test_tracking_is_announced_on_the_tracking_tables_channel(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    received: asyncio.Queue[str] = asyncio.Queue()
    env = factory_env(postgres_env, pg_schema)
    async with (
        admin_connection(postgres_env) as listening,
        PostgresFactory(Environment("Counts", env)) as factory,
    ):
        await listening.add_listener(
            "counts_tracking", lambda *args: received.put_nowait(args[3])
        )
        view = await factory.tracking_recorder()
        await view.insert_tracking(Tracking("upstream", 4))
        payload = json.loads(await asyncio.wait_for(received.get(), 2))
        assert payload == {
            "schema": pg_schema,
            "table": "counts_tracking",
            "application_name": "upstream",
            "notification_id": 4,
        }
        # Nothing is announced for a refused position.
        with pytest.raises(IntegrityError):
            await view.insert_tracking(Tracking("upstream", 4))
        await asyncio.sleep(0.1)
        assert received.empty()


class Copies(EventSourcedProjection[UUID]):
    """Records a new aggregate for each one created upstream."""

    name = "copies"
    topics = (get_topic(Aggregate.Created),)

    async def policy(
        self, domain_event: Any, processing_event: ProcessingEvent[UUID]
    ) -> None:
        processing_event.collect_events(Aggregate())


async def test_event_sourced_projection_records_events_with_tracking(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    env = factory_env(postgres_env, pg_schema)
    async with EventSourcedProjectionRunner(
        application_class=Interop, projection_class=Copies, env=env
    ) as runner:
        await runner.app.save(Aggregate(), Aggregate())
        recordings = await runner.app.save(Aggregate())
        await runner.wait(recordings[-1].notification.id, timeout=5)
        recorder = runner.projection.recorder
        assert await recorder.max_tracking_id("Interop") == 3
        assert await recorder.max_notification_id() == 3
    async with admin_connection(postgres_env) as conn:
        tables = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = $1 ORDER BY 1",
            pg_schema,
        )
    assert [t[0] for t in tables] == [
        "asyncsourcing_leases",  # Which runner of the projection leads,
        "asyncsourcing_runners",  # and which stand by.
        "copies_events",
        "copies_tracking",
        "interop_events",
    ]
