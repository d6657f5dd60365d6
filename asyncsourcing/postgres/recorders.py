"""Aggregate, application, tracking and process recorders on PostgreSQL.

The tables, columns, index, composite type, insert function (which also
takes the table lock here), notification-id ordering rule and NOTIFY channel
of the events are those of ``eventsourcing.postgres`` 9.5, so both libraries
can share one database.
Tracking is single-row per application name, as in eventsourcing 9.5, and is
also announced on a channel named after the tracking table (eventsourcing
ignores it), which wakes ``wait()`` in every process.

Identifiers are validated and double-quoted into the SQL text; values are
always query parameters.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID

import asyncpg
from eventsourcing.persistence import (
    IntegrityError,
    InterfaceError,
    Notification,
    OperationalError,
    ProgrammingError,
    StoredEvent,
    Tracking,
)

from asyncsourcing.batching import TrackingBatches
from asyncsourcing.coalescing import WriteCoalescer
from asyncsourcing.leases import Lease
from asyncsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    ParkedEvent,
    ProcessRecorder,
    Recorder,
    Subscription,
    TrackingBatch,
    TrackingRecorder,
    parked_table_name,
)
from asyncsourcing.postgres.errors import is_connection_lost, translate_errors
from asyncsourcing.postgres.identifiers import (
    MAX_IDENTIFIER_LEN,
    check_identifier,
    dollar_quote,
    qualified,
    quote_identifier,
)
from asyncsourcing.postgres.leases import PostgresLeases
from asyncsourcing.postgres.subscription import PostgresSubscription

if TYPE_CHECKING:
    from asyncsourcing.postgres.datastore import PostgresConnection, PostgresDatastore
    from asyncsourcing.waiting import PositionBoard

__all__ = [
    "PostgresAggregateRecorder",
    "PostgresApplicationRecorder",
    "PostgresProcessRecorder",
    "PostgresRecorder",
    "PostgresTrackingRecorder",
]

_T = TypeVar("_T")

logger = logging.getLogger(__name__)

# eventsourcing's storage parameters of its tables, kept for identical tables.
_TABLE_OPTIONS = (
    "WITH ("
    "    autovacuum_enabled = true,"
    "    autovacuum_vacuum_threshold = 100000000,"
    "    autovacuum_vacuum_scale_factor = 0.5,"
    "    autovacuum_analyze_threshold = 1000,"
    "    autovacuum_analyze_scale_factor = 0.01"
    ")"
)

# Reads are idempotent: one that fails because its connection was lost (a
# terminated backend, a restart) is retried on a fresh connection.
_READ_ATTEMPTS = 3
_READ_RETRY_DELAY = 0.05

# The application name under which eventsourcing 9.5 marks a tracking table
# as migrated to single-row tracking.
_MIGRATION_ID = "__migration__"


def truncate_identifier(name: str) -> str:
    """``name`` cut to the 63 bytes PostgreSQL keeps, as PostgreSQL would."""
    return name.encode()[:MAX_IDENTIFIER_LEN].decode(errors="ignore")


class PostgresRecorder(Recorder):
    """Base class of the Postgres recorders.

    ``sql_create_statements`` (run in order by :meth:`create_table`, in one
    transaction) may be extended by subclasses, e.g. a view's own tables.
    Constructing a recorder does no IO: it asks the datastore to create its
    tables before the first connection is handed out (unless
    ``CREATE_TABLE`` is false).
    """

    MAX_IDENTIFIER_LEN = MAX_IDENTIFIER_LEN

    def __init__(self, datastore: PostgresDatastore) -> None:
        super().__init__()
        self.datastore = datastore
        self.sql_create_statements: list[str] = []
        datastore.register_table_creation(self)

    @staticmethod
    def check_identifier_length(name: str) -> None:
        """Raise :class:`ProgrammingError` unless ``name`` is a usable identifier.

        Longer names than 63 bytes would be truncated by PostgreSQL, and
        could then collide.
        """
        try:
            check_identifier(name)
        except ValueError as error:
            raise ProgrammingError(str(error)) from None

    def _qualified(self, name: str) -> str:
        return qualified(self.datastore.schema, name)

    async def create_table(self) -> None:
        """Create the tables (and types, indexes, functions) if they don't exist."""
        async with self.datastore.creating_tables() as conn:
            await self._create_table(conn)
        self.datastore.table_creation_done(self)

    async def _create_table(self, conn: PostgresConnection) -> None:
        for statement in self.sql_create_statements:
            if "CREATE TYPE" in statement:
                # There is no "CREATE TYPE IF NOT EXISTS": a savepoint keeps
                # the error for an existing type from aborting the transaction.
                try:
                    async with conn.transaction():
                        await conn.execute(statement)
                except asyncpg.DuplicateObjectError:
                    pass
            else:
                await conn.execute(statement)

    async def _read(self, query: Callable[[PostgresConnection], Awaitable[_T]]) -> _T:
        """Run a read-only ``query`` on a pooled connection, retried if it drops."""
        for attempt in itertools.count(1):
            try:
                async with self.datastore.connection() as conn:
                    return await query(conn)
            except (OperationalError, InterfaceError) as error:
                if (
                    attempt >= _READ_ATTEMPTS
                    or not is_connection_lost(error)
                    # The enclosing transaction of the task is lost with it.
                    or self.datastore.in_transaction()
                ):
                    raise
            await asyncio.sleep(_READ_RETRY_DELAY * attempt)
        raise AssertionError  # pragma: no cover (the loop returns or raises)


class PostgresAggregateRecorder(PostgresRecorder, AggregateRecorder):
    """Stored events in aggregate sequences, in table ``events_table_name``."""

    def __init__(
        self,
        datastore: PostgresDatastore,
        *,
        events_table_name: str = "stored_events",
        **kwargs: Any,
    ) -> None:
        super().__init__(datastore, **kwargs)
        self.check_identifier_length(events_table_name)
        self.events_table_name = events_table_name
        # Index names can't be qualified: the index goes in the table's schema.
        # Not checked, but cut as PostgreSQL does, as eventsourcing leaves it.
        self.notification_id_index_name = truncate_identifier(
            f"{events_table_name}_notification_id_idx"
        )
        self.stored_event_type_name = f"stored_event_{datastore.originator_id_type}"
        table = self._qualified(events_table_name)
        id_type = quote_identifier(datastore.originator_id_type)
        self.create_table_statement_index = len(self.sql_create_statements)
        self.sql_create_statements.append(
            f"CREATE TABLE IF NOT EXISTS {table} ("
            f"originator_id {id_type} NOT NULL, "
            "originator_version bigint NOT NULL, "
            "topic text, "
            "state bytea, "
            "PRIMARY KEY "
            f"(originator_id, originator_version)) {_TABLE_OPTIONS}"
        )
        # eventsourcing inserts through this type; created so that it can use
        # tables created here even with CREATE_TABLE=false.
        self.sql_create_statements.append(
            f"CREATE TYPE {self._qualified(self.stored_event_type_name)} "
            f"AS (originator_id {id_type}, "
            "originator_version bigint, "
            "topic text, "
            "state bytea)"
        )
        # Parallel arrays, unnested together: one statement, one round trip,
        # rows in the order given.
        self.insert_events_statement = (
            f"INSERT INTO {table} "
            "(originator_id, originator_version, topic, state) "
            "SELECT * FROM unnest("
            f"$1::{id_type}[], $2::bigint[], $3::text[], $4::bytea[])"
        )
        self._select_events_base = (
            "SELECT originator_id, originator_version, topic, state "
            f"FROM {table} WHERE originator_id = $1"
        )

    def _originator_id(self, originator_id: UUID | str) -> UUID | str:
        if self.datastore.originator_id_type == "text":
            return str(originator_id)
        return originator_id

    def _insert_events_args(
        self, stored_events: Sequence[StoredEvent]
    ) -> tuple[list[UUID | str], list[int], list[str], list[bytes]]:
        return (
            [self._originator_id(e.originator_id) for e in stored_events],
            [e.originator_version for e in stored_events],
            [e.topic for e in stored_events],
            [e.state for e in stored_events],
        )

    async def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """Insert ``stored_events`` atomically (one statement); returns None."""
        if stored_events:
            args = self._insert_events_args(stored_events)
            async with self.datastore.connection() as conn:
                await conn.execute(self.insert_events_statement, *args)
        return None

    async def select_events(
        self,
        originator_id: UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Sequence[StoredEvent]:
        statement = self._select_events_base
        params: list[Any] = [self._originator_id(originator_id)]
        if gt is not None:
            params.append(gt)
            statement += f" AND originator_version > ${len(params)}"
        if lte is not None:
            params.append(lte)
            statement += f" AND originator_version <= ${len(params)}"
        statement += " ORDER BY originator_version " + ("DESC" if desc else "ASC")
        if limit is not None:
            params.append(limit)
            statement += f" LIMIT ${len(params)}"
        rows = await self._read(lambda conn: conn.fetch(statement, *params))
        return [
            StoredEvent(
                originator_id=row[0],
                originator_version=row[1],
                topic=row[2],
                state=bytes(row[3]),
            )
            for row in rows
        ]


class PostgresApplicationRecorder(PostgresAggregateRecorder, ApplicationRecorder):
    """Stored events with notification ids, which commit in the order given.

    Inserting takes the table's EXCLUSIVE lock, as eventsourcing does, so that
    transactions get their notification ids and commit one after the other:
    a reader following the ids never passes over an id that commits later.
    Each insert NOTIFYs the channel named after the table.
    """

    def __init__(
        self,
        datastore: PostgresDatastore,
        *,
        events_table_name: str = "stored_events",
        **kwargs: Any,
    ) -> None:
        super().__init__(datastore, events_table_name=events_table_name, **kwargs)
        table = self._qualified(events_table_name)
        id_type = quote_identifier(datastore.originator_id_type)
        self.sql_create_statements[self.create_table_statement_index] = (
            f"CREATE TABLE IF NOT EXISTS {table} ("
            f"originator_id {id_type} NOT NULL, "
            "originator_version bigint NOT NULL, "
            "topic text, "
            "state bytea, "
            "notification_id bigserial, "
            "PRIMARY KEY "
            f"(originator_id, originator_version)) {_TABLE_OPTIONS}"
        )
        self.sql_create_statements.append(
            "CREATE UNIQUE INDEX IF NOT EXISTS "
            f"{quote_identifier(self.notification_id_index_name)} "
            f"ON {table} (notification_id ASC);"
        )
        self.channel_name = events_table_name.replace(".", "_")
        self.pg_function_name_insert_events = (
            f"es_insert_events_{datastore.originator_id_type}"
        )
        self.insert_events_statement += " RETURNING notification_id"
        # One simple-protocol round trip for both (no parameters: identifiers
        # only). NOTIFY is delivered at commit, to every LISTEN connection.
        self.lock_table_statement = f"LOCK TABLE {table} IN EXCLUSIVE MODE"
        self.lock_table_and_notify_statement = (
            f"{self.lock_table_statement}; NOTIFY {quote_identifier(self.channel_name)}"
        )
        self.max_notification_id_statement = f"SELECT MAX(notification_id) FROM {table}"
        self._select_notifications_statements: dict[tuple[bool, ...], str] = {}
        # Saves go through one function call each: lock, notify and insert in
        # one round trip and one implicit transaction. Concurrent saves
        # arriving together share a call (see asyncsourcing.coalescing).
        function = self._qualified(
            f"asyncsourcing_insert_events_{datastore.originator_id_type}"
        )
        self.sql_create_statements.append(
            f"CREATE OR REPLACE FUNCTION {function}("
            "events_schema text, events_table text, channel text, "
            f"lock_timeout text, originator_ids {id_type}[], "
            "originator_versions bigint[], topics text[], states bytea[]) "
            # A fixed body: the names are arguments, quoted by format('%I').
            "RETURNS SETOF bigint LANGUAGE plpgsql AS $BODY$ "
            "BEGIN "
            "IF lock_timeout IS NOT NULL THEN "
            "PERFORM set_config('lock_timeout', lock_timeout, true); "
            "END IF; "
            # EXCLUSIVE blocks other writers, not readers, until commit: ids
            # are issued and committed in order.
            "EXECUTE format('LOCK TABLE %I.%I IN EXCLUSIVE MODE', "
            "events_schema, events_table); "
            "PERFORM pg_notify(channel, ''); "
            "RETURN QUERY EXECUTE format("
            "'INSERT INTO %I.%I (originator_id, originator_version, topic, state) "
            "SELECT * FROM unnest($1, $2, $3, $4) RETURNING notification_id', "
            "events_schema, events_table) "
            "USING originator_ids, originator_versions, topics, states; "
            "END; $BODY$"
        )
        self.insert_events_function_statement = (
            f"SELECT * FROM {function}($1, $2, $3, $4, $5, $6, $7, $8)"
        )
        self._use_insert_function = True
        self._coalescer = WriteCoalescer(self._call_insert_function)

    async def _create_table(self, conn: PostgresConnection) -> None:
        await super()._create_table(conn)
        await self._create_insert_events_function(conn)

    async def _create_insert_events_function(self, conn: PostgresConnection) -> None:
        """eventsourcing's insert function (used with POSTGRES_ENABLE_DB_FUNCTIONS).

        Like eventsourcing, one function per schema and originator id type,
        replaced by each application recorder's creation, with eventsourcing's
        body and one statement more: it takes the table's EXCLUSIVE lock, as
        every other insert does, so that events saved through it commit in
        the order of their notification ids (eventsourcing's own body takes
        no lock). The body holds the lock timeout, a value: it is quoted by
        the server (``format('%L')``) from a query parameter, never formatted
        in here. The body is dollar-quoted with a delimiter that does not
        occur in it, whatever the schema's name.
        """

        def ident(name: str) -> str:
            return quote_identifier(name).replace("%", "%%")

        schema = quote_identifier(self.datastore.schema)
        body_template = (
            "BEGIN"
            "    SET LOCAL lock_timeout = %L;"
            f"    {self.lock_table_statement.replace('%', '%%')};"
            f"    NOTIFY {ident(self.channel_name)};"
            "    RETURN QUERY"
            f"    INSERT INTO {ident(self.datastore.schema)}."
            f"{ident(self.events_table_name)} AS t ("
            "    originator_id, originator_version, topic, state)"
            "    SELECT originator_id, originator_version, topic, state"
            "    FROM unnest(events)"
            "    RETURNING notification_id;"
            "END;"
        )
        body: str = await conn.fetchval(
            "SELECT format($1::text, $2::text)",
            body_template,
            f"{self.datastore.lock_timeout}s",
        )
        await conn.execute(
            "CREATE OR REPLACE FUNCTION "
            f"{schema}.{quote_identifier(self.pg_function_name_insert_events)}"
            f"(events {schema}.{quote_identifier(self.stored_event_type_name)}[]) "
            "RETURNS SETOF bigint "
            "LANGUAGE plpgsql "
            "AS "
            f"{dollar_quote(body)}"
        )

    async def check_insert_events_function(self) -> bool:
        """Whether eventsourcing's insert function, if there is one, locks the table.

        eventsourcing 9.5 re-creates ``es_insert_events_<type>`` with its own
        body, which inserts without the table lock, whenever it creates its
        tables. Events saved through that body (by eventsourcing applications
        with ``POSTGRES_ENABLE_DB_FUNCTIONS=yes``) may commit out of the order
        of their ids, and a subscriber may pass over them for good: this
        logs a warning naming the function, and returns False.
        """
        sources: list[str] = [
            row[0]
            for row in await self._read(
                lambda conn: conn.fetch(
                    "SELECT p.prosrc FROM pg_proc p "
                    "JOIN pg_namespace n ON n.oid = p.pronamespace "
                    "WHERE n.nspname = $1 AND p.proname = $2",
                    self.datastore.schema,
                    self.pg_function_name_insert_events,
                )
            )
        ]
        unsafe = [s for s in sources if "LOCK TABLE" not in s.upper()]
        if unsafe:
            logger.warning(
                "The function %s.%s inserts events without locking the events "
                "table (eventsourcing re-creates it so whenever it creates its "
                "tables): events that eventsourcing applications with "
                "POSTGRES_ENABLE_DB_FUNCTIONS=yes save through it can commit out "
                "of the order of their notification ids, and subscriptions and "
                "projections can pass over them. Start an asyncsourcing "
                "application with CREATE_TABLE=true after eventsourcing's to "
                "re-create it with the lock, and give eventsourcing "
                "CREATE_TABLE=false, or leave POSTGRES_ENABLE_DB_FUNCTIONS off.",
                quote_identifier(self.datastore.schema),
                quote_identifier(self.pg_function_name_insert_events),
            )
        return not unsafe

    async def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """Insert ``stored_events`` atomically; returns their notification ids.

        Concurrent calls that arrive together are recorded in one transaction
        (with one table lock and one commit); a conflict in one of them fails
        only that one. Inside a transaction of the task, or with tracking, the
        events are inserted in that transaction instead.
        """
        if (
            not stored_events
            or kwargs.get("tracking") is not None
            or not self._use_insert_function
            or self.datastore.in_transaction()
        ):
            return await self._insert_events_in_transaction(stored_events, **kwargs)
        return await self._coalescer.write(stored_events)

    async def _call_insert_function(
        self, stored_events: Sequence[StoredEvent]
    ) -> Sequence[int]:
        lock_timeout = self.datastore.lock_timeout
        try:
            async with self.datastore.connection() as conn:
                rows = await conn.fetch(
                    self.insert_events_function_statement,
                    self.datastore.schema,
                    self.events_table_name,
                    self.channel_name,
                    f"{lock_timeout}s" if lock_timeout else None,
                    *self._insert_events_args(stored_events),
                )
        except ProgrammingError as error:
            if not isinstance(error.__cause__, asyncpg.UndefinedFunctionError):
                raise
            # Tables made elsewhere (CREATE_TABLE=false), without our function.
            self._use_insert_function = False
            return list(await self._insert_events_in_transaction(stored_events))
        return [row[0] for row in rows]

    async def _insert_events_in_transaction(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int]:
        notification_ids: list[int] = []
        async with self.datastore.transaction(commit=True) as conn:
            await self._insert_events(conn, stored_events, **kwargs)
            if stored_events:
                notification_ids = await self._insert_stored_events(conn, stored_events)
        return notification_ids

    async def _insert_events(
        self,
        conn: PostgresConnection,
        stored_events: Sequence[StoredEvent],
        **kwargs: Any,
    ) -> None:
        """Hook: more work in the insert's transaction, before the table lock."""

    async def _insert_stored_events(
        self, conn: PostgresConnection, stored_events: Sequence[StoredEvent]
    ) -> list[int]:
        # The lock waits at most lock_timeout (0: forever), for this
        # transaction only, as eventsourcing's "SET LOCAL lock_timeout".
        await conn.execute(
            "SELECT set_config('lock_timeout', $1, true)",
            f"{self.datastore.lock_timeout}s",
        )
        # EXCLUSIVE does not block readers (ACCESS SHARE), only other
        # writers, until commit: ids are then issued and committed in order.
        await conn.execute(self.lock_table_and_notify_statement)
        rows = await conn.fetch(
            self.insert_events_statement, *self._insert_events_args(stored_events)
        )
        return [row[0] for row in rows]

    async def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Notification]:
        params: list[Any] = []
        if start is not None:
            params.append(start)
        if stop is not None:
            params.append(stop)
        if topics:
            params.append(list(topics))
        params.append(limit)
        statement = self._select_notifications_statement(
            start is not None, inclusive_of_start, stop is not None, bool(topics)
        )
        rows = await self._read(lambda conn: conn.fetch(statement, *params))
        return [
            Notification(
                id=row[0],
                originator_id=row[1],
                originator_version=row[2],
                topic=row[3],
                state=bytes(row[4]),
            )
            for row in rows
        ]

    def _select_notifications_statement(
        self,
        has_start: bool,
        inclusive_of_start: bool,
        has_stop: bool,
        has_topics: bool,
    ) -> str:
        key = (has_start, inclusive_of_start, has_stop, has_topics)
        statement = self._select_notifications_statements.get(key)
        if statement is None:
            conditions: list[str] = []
            if has_start:
                operator = ">=" if inclusive_of_start else ">"
                conditions.append(f"notification_id {operator} ${len(conditions) + 1}")
            if has_stop:
                conditions.append(f"notification_id <= ${len(conditions) + 1}")
            if has_topics:
                conditions.append(f"topic = ANY(${len(conditions) + 1})")
            where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
            statement = (
                "SELECT notification_id, originator_id, originator_version, "
                f"topic, state FROM {self._qualified(self.events_table_name)}"
                f"{where} ORDER BY notification_id LIMIT ${len(conditions) + 1}"
            )
            self._select_notifications_statements[key] = statement
        return statement

    async def max_notification_id(self) -> int | None:
        result: int | None = await self._read(
            lambda conn: conn.fetchval(self.max_notification_id_statement)
        )
        return result

    def subscribe(
        self, gt: int | None = None, topics: Sequence[str] = ()
    ) -> Subscription[ApplicationRecorder]:
        """Follow the application sequence after ``gt`` (no IO until used)."""
        return PostgresSubscription(self, gt=gt, topics=topics)


class PostgresTrackingRecorder(PostgresRecorder, TrackingRecorder):
    """Single-row tracking per application name, in ``tracking_table_name``.

    Views subclass it, adding their tables to ``sql_create_statements`` and
    calling ``await self._insert_tracking(conn, tracking)`` inside their own
    ``async with self.datastore.transaction(commit=True) as conn`` block.
    """

    def __init__(
        self,
        datastore: PostgresDatastore,
        *,
        tracking_table_name: str = "notification_tracking",
        **kwargs: Any,
    ) -> None:
        super().__init__(datastore, **kwargs)
        self.check_identifier_length(tracking_table_name)
        self.tracking_table_name = tracking_table_name
        self.tracking_channel_name = tracking_table_name.replace(".", "_")
        table = self._qualified(tracking_table_name)
        self.sql_create_statements.append(
            f"CREATE TABLE IF NOT EXISTS {table} ("
            "application_name text, "
            "notification_id bigint, "
            "PRIMARY KEY "
            f"(application_name)){_TABLE_OPTIONS}"
        )
        self.insert_tracking_statement = self._upsert_tracking_statement(
            f"{table}.notification_id < $2"
        )
        # The same, but only from the position $6 (NULL: from no row at all).
        self.compare_and_set_tracking_statement = self._upsert_tracking_statement(
            f"{table}.notification_id < $2 "
            f"AND {table}.notification_id IS NOT DISTINCT FROM $6::bigint"
        )
        # A lock that exists before the application's row does, taken first
        # by every runner's transaction: one lock order, so runners of one
        # projection wait for each other and never deadlock on the view's rows.
        self.lock_tracking_statement = (
            "SELECT notification_id FROM (SELECT pg_advisory_xact_lock("
            "hashtextextended($2 || '/' || $1, 0))) AS locked "
            f"LEFT JOIN {table} ON application_name = $1"
        )
        self._insert_tracking_row_statement = (
            f"INSERT INTO {table} VALUES ($1, $2) "
            "ON CONFLICT (application_name) DO NOTHING"
        )
        self.max_tracking_id_statement = (
            f"SELECT MAX(notification_id) FROM {table} WHERE application_name=$1"
        )
        self._tracking_batches: TrackingBatches[PostgresConnection] = TrackingBatches(
            lock=self._lock_tracking,
            read_max=self._read_max_tracking_id,
            compare_and_set=self._compare_and_set_tracking,
            check_fence=self._check_fence,
        )
        self._leases: PostgresLeases | None = None

    def _upsert_tracking_statement(self, condition: str) -> str:
        """Inserts or moves the row forward where ``condition`` holds, or
        changes nothing and returns no row; announces the new position, to
        be delivered at commit."""
        table = self._qualified(self.tracking_table_name)
        return (
            "WITH recorded AS ("
            f"INSERT INTO {table} VALUES ($1, $2) "
            "ON CONFLICT (application_name) DO UPDATE "
            f"SET notification_id = $2 WHERE {condition} "
            "RETURNING notification_id) "
            "SELECT notification_id, pg_notify($3, json_build_object("
            "'schema', $4::text, 'table', $5::text, "
            "'application_name', $1::text, 'notification_id', notification_id"
            ")::text) FROM recorded"
        )

    async def _create_table(self, conn: PostgresConnection) -> None:
        table = self._qualified(self.tracking_table_name)
        exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table)
        migrated = (
            exists
            and (await conn.fetchval(self.max_tracking_id_statement, _MIGRATION_ID))
            is not None
        )
        maxima: list[tuple[str, int]] = []
        if exists and not migrated:
            # A multi-row table of an older eventsourcing: keep each
            # application's maximum in a new single-row table, and the old
            # table as a backup, as eventsourcing 9.5 does.
            await conn.execute(
                "SELECT set_config('lock_timeout', $1, true)",
                f"{self.datastore.lock_timeout}s",
            )
            await conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
            rows = await conn.fetch(
                f"SELECT application_name, MAX(notification_id) FROM {table} "
                "GROUP BY application_name"
            )
            maxima = [(row[0], row[1]) for row in rows]
            backup = f"bkup1_{self.tracking_table_name}"[: self.MAX_IDENTIFIER_LEN]
            await conn.execute(
                f"ALTER TABLE {table} RENAME TO {quote_identifier(backup)}"
            )
        await super()._create_table(conn)
        if not migrated:
            await conn.executemany(
                self._insert_tracking_row_statement, [(_MIGRATION_ID, 1), *maxima]
            )

    async def insert_tracking(self, tracking: Tracking) -> None:
        async with self.datastore.transaction(commit=True) as conn:
            await self._insert_tracking(conn, tracking)

    async def _insert_tracking(
        self, conn: PostgresConnection, tracking: Tracking
    ) -> None:
        """Record ``tracking`` in the transaction of ``conn``.

        Raises :class:`IntegrityError` when the position is not greater than
        the recorded one (the caller's transaction must then roll back, which
        :meth:`PostgresDatastore.transaction` does). Waiters in this process
        are woken after the commit, and in others by the NOTIFY. In a
        :meth:`batch_transaction`, only the batch's last position is written.
        """
        if not await self._tracking_batches.defer(conn, tracking):
            await self._record_tracking(conn, tracking)

    async def _record_tracking(
        self, conn: PostgresConnection, tracking: Tracking
    ) -> None:
        with translate_errors():
            row = await conn.fetchrow(
                self.insert_tracking_statement,
                tracking.application_name,
                tracking.notification_id,
                self.tracking_channel_name,
                self.datastore.schema,
                self.tracking_table_name,
            )
        if row is None:
            msg = (
                f"Tracking notification ID {tracking.notification_id} not greater "
                f"than the recorded one for application "
                f"'{tracking.application_name}' (in {self.tracking_table_name})"
            )
            raise IntegrityError(msg)
        self._advance_after_commit(conn, tracking)

    async def _compare_and_set_tracking(
        self, conn: PostgresConnection, tracking: Tracking, expected: int | None
    ) -> None:
        with translate_errors():
            row = await conn.fetchrow(
                self.compare_and_set_tracking_statement,
                tracking.application_name,
                tracking.notification_id,
                self.tracking_channel_name,
                self.datastore.schema,
                self.tracking_table_name,
                expected,
            )
        if row is None:
            msg = (
                f"Tracking of application '{tracking.application_name}' (in "
                f"{self.tracking_table_name}) moved from {expected} while a batch "
                f"up to {tracking.notification_id} was processed: another runner "
                "processed some of its events"
            )
            raise IntegrityError(msg)
        self._advance_after_commit(conn, tracking)

    async def _lock_tracking(
        self, conn: PostgresConnection, application_name: str
    ) -> int | None:
        with translate_errors():
            position: int | None = await conn.fetchval(
                self.lock_tracking_statement,
                application_name,
                self._qualified(self.tracking_table_name),
            )
        return position

    async def _check_fence(self, conn: Any, lease: Lease) -> None:
        await self.leases.check_fence(conn, lease)

    def _advance_after_commit(
        self, conn: PostgresConnection, tracking: Tracking
    ) -> None:
        self.datastore.call_after_commit(
            conn,
            partial(self._advance, tracking.application_name, tracking.notification_id),
        )

    def batch_transaction(
        self, application_name: str | None = None, fence: Lease | None = None
    ) -> AbstractAsyncContextManager[TrackingBatch]:
        """A write transaction that this view's own transactions join.

        A projection runner processes a batch of events in it, committing
        them (and their last tracking position) together.
        """
        return self._tracking_batches.batch(
            self.datastore.transaction(commit=True), application_name, fence
        )

    @property
    def leases(self) -> PostgresLeases:
        if self._leases is None:
            self._leases = PostgresLeases(self.datastore)
        return self._leases

    async def _read_max_tracking_id(
        self, conn: PostgresConnection, application_name: str
    ) -> int | None:
        position: int | None = await conn.fetchval(
            self.max_tracking_id_statement, application_name
        )
        return position

    def _advance(self, application_name: str, notification_id: int) -> None:
        board = self.datastore.existing_position_board(self.tracking_table_name)
        if board is not None:
            board.advance(application_name, notification_id)

    async def max_tracking_id(self, application_name: str) -> int | None:
        result: int | None = await self._read(
            lambda conn: conn.fetchval(self.max_tracking_id_statement, application_name)
        )
        return result

    @property
    def parked_table_name(self) -> str:
        """The dead-letter table of :meth:`park` (checked, unquoted)."""
        name = parked_table_name(self.tracking_table_name)
        self.check_identifier_length(name)
        return name

    async def park(
        self, tracking: Tracking, topic: str, state: bytes, error: str
    ) -> None:
        table = self._qualified(self.parked_table_name)
        async with self.datastore.transaction(commit=True) as conn:
            # Made on first use: the tables of eventsourcing stay as they are.
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {table} ("
                "application_name text, notification_id bigint, topic text, "
                "state bytea, error text, parked_at timestamptz, "
                "PRIMARY KEY (application_name, notification_id))"
            )
            await self._insert_tracking(conn, tracking)
            await conn.execute(
                f"INSERT INTO {table} (application_name, notification_id, topic, "
                "state, error, parked_at) VALUES ($1, $2, $3, $4, $5, $6)",
                tracking.application_name,
                tracking.notification_id,
                topic,
                state,
                error,
                datetime.now(UTC),
            )

    async def parked(self, application_name: str) -> list[ParkedEvent]:
        table = self._qualified(self.parked_table_name)

        async def query(conn: PostgresConnection) -> list[ParkedEvent]:
            if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table):
                return []
            rows = await conn.fetch(
                "SELECT application_name, notification_id, topic, state, error, "
                f"parked_at FROM {table} WHERE application_name = $1 "
                "ORDER BY notification_id",
                application_name,
            )
            return [
                ParkedEvent(r[0], r[1], r[2], bytes(r[3]), r[4], r[5]) for r in rows
            ]

        return await self._read(query)

    def _construct_position_board(self) -> PositionBoard:
        """The datastore's board of this table, shared with every recorder on it."""
        return self.datastore.position_board(
            self.tracking_table_name, self.max_tracking_id, self.tracking_channel_name
        )


class PostgresProcessRecorder(
    PostgresTrackingRecorder, PostgresApplicationRecorder, ProcessRecorder
):
    """Events and the tracking of the processed event, in one transaction."""

    def __init__(
        self,
        datastore: PostgresDatastore,
        *,
        events_table_name: str = "stored_events",
        tracking_table_name: str = "notification_tracking",
    ) -> None:
        super().__init__(
            datastore,
            tracking_table_name=tracking_table_name,
            events_table_name=events_table_name,
        )

    async def _insert_events(
        self,
        conn: PostgresConnection,
        stored_events: Sequence[StoredEvent],
        **kwargs: Any,
    ) -> None:
        tracking: Tracking | None = kwargs.get("tracking")
        if tracking is not None:
            await self._insert_tracking(conn, tracking)
        await super()._insert_events(conn, stored_events, **kwargs)
