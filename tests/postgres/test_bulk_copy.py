"""Writing many rows in a view transaction (asyncsourcing.postgres.bulk): the
rows commit with the transaction, and roll back with it, a runner's batch
transaction included, whose failure splits the batch."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any
from uuid import UUID, uuid4

import pytest
from eventsourcing.persistence import DataError, IntegrityError, ProgrammingError

from asyncsourcing.application import Application
from asyncsourcing.domain import Aggregate
from asyncsourcing.persistence import Tracking
from asyncsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
from asyncsourcing.postgres.bulk import copy_rows, insert_rows
from asyncsourcing.postgres.identifiers import qualified
from asyncsourcing.projection import Projection, ProjectionRunner
from asyncsourcing.utils import get_topic
from tests.support.postgres import admin_connection, datastore, factory_env

pytestmark = pytest.mark.postgres

COLUMNS = ("id", "name", "tricks", "n")


@pytest.fixture
async def store(
    postgres_env: dict[str, str], pg_schema: str
) -> AsyncIterator[PostgresDatastore]:
    """A datastore on the test's schema, which has a table "dogs"."""
    async with admin_connection(postgres_env) as conn:
        await conn.execute(
            f"CREATE TABLE {qualified(pg_schema, 'dogs')} (id uuid PRIMARY KEY, "
            "name text NOT NULL, tricks text[] NOT NULL, n bigint DEFAULT 7)"
        )
    store = datastore(
        postgres_env, pg_schema, POSTGRES_POOL_SIZE="1", POSTGRES_MAX_OVERFLOW="0"
    )
    try:
        yield store
    finally:
        await store.close()


async def select_dogs(store: PostgresDatastore) -> list[tuple[Any, ...]]:
    table = qualified(store.schema, "dogs")
    async with store.transaction() as conn:
        rows = await conn.fetch(f"SELECT id, name, tricks, n FROM {table} ORDER BY n")
    return [tuple(row) for row in rows]


def dogs(count: int, start: int = 0) -> list[tuple[UUID, str, list[str], int]]:
    return [(uuid4(), f"dog {n}", ["sit"] * (n % 3), n) for n in range(start, count)]


async def test_copy_rows_adds_the_rows(store: PostgresDatastore) -> None:
    rows = dogs(1000)
    async with store.transaction(commit=True) as conn:
        added = await copy_rows(conn, "dogs", COLUMNS, rows, schema=store.schema)
    assert added == 1000
    assert await select_dogs(store) == [tuple(row) for row in rows]


async def test_copy_rows_takes_an_iterator_and_leaves_defaults(
    store: PostgresDatastore,
) -> None:
    rows = [(uuid4(), "Fido", ["sit", "fetch"])]
    async with store.transaction(commit=True) as conn:
        added = await copy_rows(
            conn, "dogs", ("id", "name", "tricks"), iter(rows), schema=store.schema
        )
        # Nothing to send: no statement at all.
        assert await copy_rows(conn, "dogs", COLUMNS, [], schema=store.schema) == 0
    assert added == 1
    assert await select_dogs(store) == [(rows[0][0], "Fido", ["sit", "fetch"], 7)]


async def test_copied_rows_roll_back_with_the_transaction(
    store: PostgresDatastore,
) -> None:
    async def copy_and_fail() -> None:
        async with store.transaction(commit=True) as conn:
            await copy_rows(conn, "dogs", COLUMNS, dogs(10), schema=store.schema)
            raise RuntimeError

    with pytest.raises(RuntimeError):
        await copy_and_fail()
    assert await select_dogs(store) == []


async def test_a_conflict_fails_the_copy_and_the_transaction(
    store: PostgresDatastore,
) -> None:
    rows = dogs(3)
    async with store.transaction(commit=True) as conn:
        await copy_rows(conn, "dogs", COLUMNS, rows[:1], schema=store.schema)

    async def copy_a_conflict() -> None:
        async with store.transaction(commit=True) as conn:
            await copy_rows(conn, "dogs", COLUMNS, rows[1:2], schema=store.schema)
            await copy_rows(conn, "dogs", COLUMNS, rows, schema=store.schema)

    with pytest.raises(IntegrityError):
        await copy_a_conflict()
    assert await select_dogs(store) == [tuple(rows[0])]


async def test_insert_rows_upserts(store: PostgresDatastore) -> None:
    rows = dogs(4)
    renamed = [(dog_id, "Rex", tricks, n) for dog_id, _, tricks, n in rows[:2]]
    conflict = "ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name"
    async with store.transaction(commit=True) as conn:
        await copy_rows(conn, "dogs", COLUMNS, rows[:2], schema=store.schema)
        await insert_rows(
            conn,
            "dogs",
            COLUMNS,
            [*renamed, *rows[2:]],
            schema=store.schema,
            on_conflict=conflict,
        )
        await insert_rows(conn, "dogs", COLUMNS, [], schema=store.schema)
    assert await select_dogs(store) == [tuple(r) for r in [*renamed, *rows[2:]]]
    with pytest.raises(IntegrityError):
        async with store.transaction(commit=True) as conn:
            await insert_rows(conn, "dogs", COLUMNS, rows[:1], schema=store.schema)


async def test_bad_values_and_names(store: PostgresDatastore) -> None:
    async def write(
        *batches: list[tuple[Any, ...]],
        columns: Any = COLUMNS,
        table: str = "dogs",
        copy: bool = True,
    ) -> None:
        async with store.transaction(commit=True) as conn:
            for rows in batches:
                if copy:
                    await copy_rows(conn, table, columns, rows, schema=store.schema)
                else:
                    await insert_rows(conn, table, columns, rows, schema=store.schema)

    for copy in (True, False):
        for columns in [(), "id", ("id", "")]:
            with pytest.raises(ValueError, match=r"names|[Ii]dentifier"):
                await write(dogs(1), columns=columns, copy=copy)
        with pytest.raises(ProgrammingError):
            await write(dogs(1), table="no_such_table", copy=copy)
        # A value that asyncpg cannot encode for its column, after good ones.
        for bad in [("not a uuid", "x", [], 1), (uuid4(), "x", "not a list", 1)]:
            with pytest.raises(DataError):
                await write(dogs(5), [*dogs(5), bad], copy=copy)
    assert await select_dogs(store) == []
    # The connection is still good (a pool of one: the same one).
    await write(dogs(3))
    assert len(await select_dogs(store)) == 3


async def test_names_are_quoted(store: PostgresDatastore) -> None:
    name = 'Dogs "of" the school'
    table = qualified(store.schema, name)
    async with store.transaction(commit=True) as conn:
        await conn.execute(f'CREATE TABLE {table} ("Id" uuid, "a b" text)')
        rows = [(uuid4(), "x"), (uuid4(), "y")]
        assert await copy_rows(conn, name, ("Id", "a b"), rows, schema=store.schema)
        await insert_rows(conn, name, ("Id", "a b"), rows, schema=store.schema)
        assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 4


# In a runner's batches.


class Bad(Aggregate.Event):
    """An event the projection fails on, after its COPY."""


class PostgresEventLog(PostgresTrackingRecorder):
    """A row per event: its notification id and topic, added by COPY."""

    def __init__(self, datastore: PostgresDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        self.log_table_name = self.tracking_table_name.removesuffix("tracking") + "log"
        self.check_identifier_length(self.log_table_name)
        self.sql_create_statements.append(
            "CREATE TABLE IF NOT EXISTS "
            f"{qualified(self.datastore.schema, self.log_table_name)} "
            "(notification_id bigint PRIMARY KEY, topic text NOT NULL)"
        )
        self.copies: list[int] = []

    async def log(
        self, rows: Sequence[tuple[int, str]], tracking: Tracking, *, fail: bool
    ) -> None:
        async with self.datastore.transaction(commit=True) as conn:
            await self.record_tracking(conn, tracking)
            await copy_rows(
                conn,
                self.log_table_name,
                ("notification_id", "topic"),
                rows,
                schema=self.datastore.schema,
            )
            self.copies.append(len(rows))
            if fail:
                msg = "written, then failed"
                raise RuntimeError(msg)

    async def logged(self) -> list[int]:
        table = qualified(self.datastore.schema, self.log_table_name)
        async with self.datastore.transaction() as conn:
            rows = await conn.fetch(f"SELECT notification_id FROM {table} ORDER BY 1")
        return [row[0] for row in rows]


class EventLogProjection(Projection[PostgresEventLog]):
    name = "copylog"
    topics = (get_topic(Aggregate.Created), get_topic(Bad))

    async def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        await self.process_events([(domain_event, tracking)])

    async def process_events(self, events: Sequence[tuple[Any, Tracking]]) -> None:
        rows = [(t.notification_id, get_topic(type(e))) for e, t in events]
        fail = any(isinstance(e, Bad) for e, _ in events)
        await self.view.log(rows, events[-1][1], fail=fail)


async def test_copied_rows_roll_back_with_a_failing_batch(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    env = factory_env(postgres_env, pg_schema)
    app = Application[UUID](env)
    aggregates = [Aggregate() for _ in range(200)]
    aggregates[150].trigger_event(Bad)
    recordings = await app.save(*aggregates)
    await app.close()
    (bad,) = [r.notification.id for r in recordings if type(r.domain_event) is Bad]
    last = recordings[-1].notification.id

    async with ProjectionRunner(
        application_class=Application[UUID],
        projection_class=EventLogProjection,
        view_class=PostgresEventLog,
        env=env,
        error_policy="skip",
    ) as runner:
        await runner.wait(last, timeout=30)
        view = runner.projection.view
        # The bad event's row was written by the COPY of each batch that
        # held it, and rolled back with it: every other event has its row,
        # once; the bad one none, only its tracking.
        assert await view.logged() == [n for n in range(1, last + 1) if n != bad]
        assert await view.max_tracking_id(runner.app_name) == last
        # Batches were copied, and failed ones split down to the bad event.
        assert max(view.copies) > 1
        assert view.copies.count(1) >= 1
        assert sum(view.copies) > last
