"""PostgreSQL's SQL of an events table, and of the functions that insert into it.

The table, columns, index, composite type, eventsourcing's insert function,
notification-id ordering rule and NOTIFY channel are those of
``eventsourcing.postgres`` 9.5, so both libraries can share one database.
Inserting into an application's table takes its EXCLUSIVE lock, as
eventsourcing does, so that transactions get their notification ids and
commit one after the other, and NOTIFYs the channel named after the table,
which wakes subscriptions in every process. In concurrent write mode
(``POSTGRES_CONCURRENT_WRITES=true``) inserts take a shared advisory lock
instead, readers keep to a visibility horizon, and the NOTIFY follows the
commit (see :mod:`asyncsourcing.postgres.concurrent`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any
from uuid import UUID

import asyncpg
from eventsourcing.persistence import Notification, ProgrammingError, StoredEvent

from asyncsourcing.postgres import concurrent
from asyncsourcing.postgres.dialect import TABLE_OPTIONS, truncate_identifier
from asyncsourcing.postgres.identifiers import (
    MAX_IDENTIFIER_LEN,
    dollar_quote,
    qualified,
    quote_identifier,
)
from asyncsourcing.statistics import HorizonCounters

if TYPE_CHECKING:
    from asyncsourcing.postgres.datastore import PostgresConnection, PostgresDatastore

__all__ = ["PostgresEventsDialect", "insert_function_name"]

logger = logging.getLogger(__name__)


_INSERT_COLUMNS = "(originator_id, originator_version, topic, state)"


def insert_function_name(table_name: str, prefix: str = "asyncsourcing_insert_") -> str:
    """The name of the function through which saves insert into ``table_name``:
    ``asyncsourcing_insert_<table>`` (``asyncsourcing_insert_concurrent_<table>``
    in concurrent write mode: the ``prefix``), or, where that is longer than
    PostgreSQL's 63 bytes, its start and a digest of the table's name."""
    name = f"{prefix}{table_name}"
    if len(name.encode()) <= MAX_IDENTIFIER_LEN:
        return name
    digest = hashlib.sha256(table_name.encode()).hexdigest()[:12]
    start = name.encode()[: MAX_IDENTIFIER_LEN - len(digest) - 1]
    return f"{start.decode(errors='ignore')}_{digest}"


class PostgresEventsDialect:
    """The statements of the events table ``table_name`` of ``datastore``.

    With ``notification_ids``, the table has eventsourcing's
    ``notification_id`` column and index, and inserts lock it and notify;
    without (an aggregate recorder's, such as the snapshots'), neither.

    With ``notification_ids`` and the datastore's ``concurrent_writes``
    setting, the table is in concurrent write mode
    (:mod:`asyncsourcing.postgres.concurrent`): inserts take the shared
    advisory lock of the protocol instead of the table lock, NOTIFY after
    their commit, and reads stop at the visibility horizon. Either way the
    table's mode is checked against the recorder's once, as its tables are
    created (:meth:`set_up_write_mode`) or else at first use.
    """

    def __init__(
        self, datastore: PostgresDatastore, table_name: str, *, notification_ids: bool
    ) -> None:
        self.datastore = datastore
        self.table_name = table_name
        self.notification_ids = notification_ids
        # Inserts alone are one round trip: a statement, or a function call
        # (until the function is found missing: tables made elsewhere).
        self.inserts_alone = True
        id_type = datastore.originator_id_type
        # Index names can't be qualified: the index goes in the table's schema.
        # Not checked, but cut as PostgreSQL does, as eventsourcing leaves it.
        self.notification_id_index_name = truncate_identifier(
            f"{table_name}_notification_id_idx"
        )
        self.stored_event_type_name = f"stored_event_{id_type}"
        self.channel_name = table_name.replace(".", "_")
        self.pg_function_name_insert_events = f"es_insert_events_{id_type}"
        self.table = qualified(datastore.schema, table_name)
        # The function of earlier versions, one per schema and id type, which
        # names the table in arguments (still made, for their processes).
        self._shared_insert_function = qualified(
            datastore.schema, f"asyncsourcing_insert_events_{id_type}"
        )
        # The table's own: saves go through one call of it each.
        self.insert_function_name = insert_function_name(table_name)
        self._insert_function = qualified(datastore.schema, self.insert_function_name)
        # Parallel arrays, unnested together: one statement, one round trip,
        # rows in the order given.
        self._insert_statement = (
            f"INSERT INTO {self.table} "
            "(originator_id, originator_version, topic, state) "
            "SELECT * FROM unnest("
            f"$1::{quote_identifier(id_type)}[], $2::bigint[], $3::text[], "
            "$4::bytea[])"
        ) + (" RETURNING notification_id" if notification_ids else "")
        self._select_events_statement = (
            "SELECT originator_id, originator_version, topic, state "
            f"FROM {self.table} WHERE originator_id = $1"
        )
        self.lock_table_statement = f"LOCK TABLE {self.table} IN EXCLUSIVE MODE"
        # One simple-protocol round trip for both (no parameters: identifiers
        # only). NOTIFY is delivered at commit, to every LISTEN connection.
        self._lock_table_and_notify_statement = (
            f"{self.lock_table_statement}; NOTIFY {quote_identifier(self.channel_name)}"
        )
        self._max_notification_id_statement = (
            f"SELECT MAX(notification_id) FROM {self.table}"
        )
        self._max_notification_id_below_statement = (
            f"SELECT MAX(notification_id) FROM {self.table} WHERE notification_id < $1"
        )
        self._select_notifications_statements: dict[tuple[bool, ...], str] = {}
        # The types choose the function of the two.
        self._insert_function_statement = (
            f"SELECT * FROM {self._insert_function}($1::text, "
            f"$2::{quote_identifier(id_type)}[], $3::bigint[], $4::text[], "
            "$5::bytea[])"
        )
        self._insert_one_function_statement = (
            f"SELECT {self._insert_function}($1::text, "
            f"$2::{quote_identifier(id_type)}, $3::bigint, $4::text, $5::bytea)"
        )
        # Concurrent write mode.
        self.concurrent_writes = (
            notification_ids and datastore.settings.concurrent_writes
        )
        self.table_key = concurrent.table_key(datastore.schema, table_name)
        self.concurrent_insert_function_name = insert_function_name(
            table_name, prefix="asyncsourcing_insert_concurrent_"
        )
        concurrent_function = qualified(
            datastore.schema, self.concurrent_insert_function_name
        )
        self._concurrent_insert_function_statement = (
            f"SELECT * FROM {concurrent_function}($1::text, "
            f"$2::{quote_identifier(id_type)}[], $3::bigint[], $4::text[], "
            "$5::bytea[])"
        )
        self._concurrent_insert_one_function_statement = (
            f"SELECT {concurrent_function}($1::text, "
            f"$2::{quote_identifier(id_type)}, $3::bigint, $4::text, $5::bytea)"
        )
        self._horizon_statement = concurrent.horizon_statement(datastore.schema)
        self._notify_after_commit = partial(datastore.notify, self.channel_name)
        #: The horizons computed by this table's reads (concurrent mode only).
        self.horizon_counters: HorizonCounters | None = (
            HorizonCounters(self.table) if self.concurrent_writes else None
        )
        # The notification id sequence, found as the mode is checked.
        self._sequence: str | None = None
        # Whether the table's mode has been checked against ours.
        self.mode_checked = not notification_ids
        # The greatest horizon computed: every id below it had ended then.
        self._horizon_floor = 0

    def create_table_statements(self) -> list[str]:
        id_type = quote_identifier(self.datastore.originator_id_type)
        stored_event_type = qualified(
            self.datastore.schema, self.stored_event_type_name
        )
        notification_id = "notification_id bigserial, " if self.notification_ids else ""
        statements = [
            f"CREATE TABLE IF NOT EXISTS {self.table} ("
            f"originator_id {id_type} NOT NULL, "
            "originator_version bigint NOT NULL, "
            "topic text, "
            "state bytea, "
            f"{notification_id}"
            "PRIMARY KEY "
            f"(originator_id, originator_version)) {TABLE_OPTIONS}",
            # eventsourcing inserts through this type; created so that it can
            # use tables created here even with CREATE_TABLE=false.
            f"CREATE TYPE {stored_event_type} "
            f"AS (originator_id {id_type}, "
            "originator_version bigint, "
            "topic text, "
            "state bytea)",
        ]
        if self.notification_ids:
            statements += [
                "CREATE UNIQUE INDEX IF NOT EXISTS "
                f"{quote_identifier(self.notification_id_index_name)} "
                f"ON {self.table} (notification_id ASC);",
                self._create_shared_insert_function_statement(id_type),
                *self._create_insert_function_statements(id_type),
            ]
        return statements

    def _create_insert_function_statements(
        self, id_type: str, *, sequence: str | None = None
    ) -> list[str]:
        """Saves go through one call of these functions each: lock, notify
        and insert in one round trip and one implicit transaction.

        Functions of the table, whose statements name it: static SQL, which
        PL/pgSQL plans once per session, where a function that takes the
        table's name in an argument must parse and plan its statements at
        each call (``EXECUTE format(...)``), which cost a lone save more than
        the lock, the NOTIFY and the call together. Two of one name, told
        apart by their arguments' types: for one event, and for many as
        parallel arrays, unnested together in the order given (arrays of one
        cost a save more, on both sides). The first argument is the lock
        timeout ("5s"; NULL: the session's).

        With the ``sequence`` of the notification ids, the functions of
        concurrent write mode, ``asyncsourcing_insert_concurrent_<table>``,
        whose lock is the protocol's shared advisory lock, and which do not
        NOTIFY (the datastore does, after the commit).
        """
        if sequence is None:
            function = self._insert_function
            # EXCLUSIVE blocks other writers, not readers, until commit: ids
            # are issued and committed in order. NOTIFY is delivered at
            # commit, to every LISTEN connection.
            prelude = (
                f"{self.lock_table_statement}; "
                f"NOTIFY {quote_identifier(self.channel_name)}; "
            )
        else:
            function = qualified(
                self.datastore.schema, self.concurrent_insert_function_name
            )
            prelude = concurrent.writer_prelude(self.table_key, sequence)
        return [
            self._create_insert_function_statement(
                function,
                prelude,
                f"text, {id_type}[], bigint[], text[], bytea[]",
                "SETOF bigint",
                "RETURN QUERY "
                f"INSERT INTO {self.table} {_INSERT_COLUMNS} "
                "SELECT * FROM unnest($2, $3, $4, $5) RETURNING notification_id; ",
            ),
            # A value, not a set: no set to materialise and scan, here or in
            # the query that calls it.
            self._create_insert_function_statement(
                function,
                prelude,
                f"text, {id_type}, bigint, text, bytea",
                "bigint",
                f"INSERT INTO {self.table} {_INSERT_COLUMNS} "
                "VALUES ($2, $3, $4, $5) RETURNING notification_id INTO inserted; "
                "RETURN inserted; ",
            ),
        ]

    def _create_insert_function_statement(
        self, function: str, prelude: str, arguments: str, returns: str, insert: str
    ) -> str:
        body = (
            "DECLARE inserted bigint; "
            "BEGIN "
            # The lock waits at most this long, for this transaction only, as
            # eventsourcing's "SET LOCAL lock_timeout".
            "IF $1 IS NOT NULL THEN "
            "PERFORM set_config('lock_timeout', $1, true); "
            "END IF; "
            f"{prelude}"
            f"{insert}"
            "END;"
        )
        return (
            f"CREATE OR REPLACE FUNCTION {function}({arguments}) "
            f"RETURNS {returns} LANGUAGE plpgsql AS {dollar_quote(body)}"
        )

    def _create_shared_insert_function_statement(self, id_type: str) -> str:
        """The insert function of earlier versions, which processes of those
        versions call on tables made by this one (or by eventsourcing, if
        made by one of them): one per schema and id type, the table's name in
        arguments."""
        return (
            f"CREATE OR REPLACE FUNCTION {self._shared_insert_function}("
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

    async def create_insert_events_function(self, conn: PostgresConnection) -> None:
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
            f"{ident(self.table_name)} AS t ("
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

    async def check_insert_events_function(self, conn: PostgresConnection) -> bool:
        """Whether eventsourcing's insert function, if there is one, locks the
        table; logs a warning naming it if not (see
        :meth:`PostgresApplicationRecorder.check_insert_events_function
        <asyncsourcing.postgres.PostgresApplicationRecorder.check_insert_events_function>`).
        """
        rows = await conn.fetch(
            "SELECT p.prosrc FROM pg_proc p "
            "JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = $1 AND p.proname = $2",
            self.datastore.schema,
            self.pg_function_name_insert_events,
        )
        unsafe = [row[0] for row in rows if "LOCK TABLE" not in row[0].upper()]
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

    # The write mode.

    async def table_exists(self, conn: PostgresConnection) -> bool:
        """Whether the table exists (asked before it is created)."""
        exists: bool = await conn.fetchval(
            "SELECT to_regclass($1) IS NOT NULL", self.table
        )
        return exists

    async def set_up_write_mode(
        self, conn: PostgresConnection, *, created: bool
    ) -> None:
        """Check the table's mode against the recorder's, as its tables are
        created (in their transaction, after the create statements), and in
        concurrent mode install the mode's functions and trigger, marking
        the table if ``created`` (it did not exist before).

        :raises EventsTableModeError: the table is in the other mode, or its
            sequence does not fit the concurrent mode.
        """
        if not self.notification_ids:
            return
        marked = await self._is_marked(conn)
        if self._in_table_lock_mode(marked):
            return
        if not (created or marked):
            raise concurrent.concurrent_on_table_lock_table(self.table)
        sequence = await self._check_sequence(conn)
        id_type = quote_identifier(self.datastore.originator_id_type)
        statements = [
            *self._create_insert_function_statements(id_type, sequence=sequence),
            concurrent.create_horizon_function_statement(self.datastore.schema),
        ]
        create_guard_function, create_trigger = concurrent.create_guard_statements(
            self.datastore.schema, self.table
        )
        statements.append(create_guard_function)
        if not await self._is_guarded(conn):
            statements.append(create_trigger)
        if created:
            statements.append(
                f"COMMENT ON TABLE {self.table} IS "
                f"{concurrent.sql_literal(concurrent.MARKER)}"
            )
        for statement in statements:
            await conn.execute(statement)
        self._sequence = sequence
        self._horizon_floor = 0  # A new table may have a new sequence.
        self.mode_checked = True

    def _in_table_lock_mode(self, marked: bool) -> bool:
        """True in table-lock mode (checked: nothing more to do), once the
        table, ``marked`` or not for concurrent writes, is found to fit it.

        :raises EventsTableModeError: the table is marked for concurrent writes.
        """
        if self.concurrent_writes:
            return False
        if marked:
            raise concurrent.table_lock_on_concurrent_table(self.table)
        self.mode_checked = True
        return True

    async def check_write_mode(self, conn: PostgresConnection) -> None:
        """Check the table's mode against the recorder's, at first use of a
        table that the recorder did not create (``CREATE_TABLE=false``).
        Nothing is checked, nor remembered, while the table does not exist.

        :raises EventsTableModeError: the table is in the other mode, or in
            concurrent mode without the mode's functions or trigger.
        """
        if self.mode_checked or not await self.table_exists(conn):
            return
        marked = await self._is_marked(conn)
        if self._in_table_lock_mode(marked):
            return
        if not marked:
            raise concurrent.concurrent_on_table_lock_table(self.table)
        sequence = await self._check_sequence(conn)
        functions: int = await conn.fetchval(
            "SELECT count(DISTINCT p.proname) FROM pg_catalog.pg_proc p "
            "JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = $1 AND p.proname = ANY($2::text[])",
            self.datastore.schema,
            [
                self.concurrent_insert_function_name,
                concurrent.HORIZON_FUNCTION_NAME,
                concurrent.GUARD_FUNCTION_NAME,
            ],
        )
        if functions < 3 or not await self._is_guarded(conn):
            raise concurrent.missing_objects(self.table)
        self._sequence = sequence
        self.mode_checked = True

    async def _is_marked(self, conn: PostgresConnection) -> bool:
        comment: str | None = await conn.fetchval(
            "SELECT obj_description(to_regclass($1), 'pg_class')", self.table
        )
        return comment is not None and comment.startswith(concurrent.MARKER)

    async def _is_guarded(self, conn: PostgresConnection) -> bool:
        guarded: bool = await conn.fetchval(
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_trigger "
            "WHERE tgrelid = to_regclass($1) AND tgname = $2)",
            self.table,
            concurrent.GUARD_TRIGGER_NAME,
        )
        return guarded

    async def _check_sequence(self, conn: PostgresConnection) -> str:
        """The notification id sequence, checked to give each writer ids
        above the last value it read."""
        row = await conn.fetchrow(
            "SELECT q.seq, s.seqcache, s.seqincrement "
            "FROM (SELECT pg_get_serial_sequence($1, 'notification_id') AS seq) q "
            "LEFT JOIN pg_catalog.pg_sequence s ON s.seqrelid = q.seq::regclass",
            self.table,
        )
        sequence: str | None = None if row is None else row[0]
        if row is None or sequence is None:
            msg = (
                f"The events table {self.table} has no sequence for its "
                "notification_id column (a bigserial column, as eventsourcing "
                "makes it, is needed in concurrent write mode)"
            )
            raise concurrent.EventsTableModeError(msg)
        cache, increment = row[1], row[2]
        if cache != 1:
            detail = f"caches {cache} values per session"
            raise concurrent.unsuitable_sequence(self.table, sequence, detail)
        if increment <= 0:
            detail = f"has the increment {increment}"
            raise concurrent.unsuitable_sequence(self.table, sequence, detail)
        return sequence

    async def _horizon(self, conn: PostgresConnection) -> int:
        """The visibility horizon: ids below it may be read (see
        :mod:`asyncsourcing.postgres.concurrent`), computed by a statement
        of its own, before the read's, whose snapshot is then taken after it.
        Never below one computed before by this recorder."""
        row = await conn.fetchrow(
            self._horizon_statement, self._sequence, self.table_key
        )
        assert row is not None  # A function's call returns one row.
        horizon: int = row[0]
        last_issued: int = row[1]
        if last_issued + 1 < self._horizon_floor:
            # The sequence went back (the table was made again): so does
            # what is known about it.
            self._horizon_floor = 0
        horizon = max(horizon, self._horizon_floor)
        self._horizon_floor = horizon
        assert self.horizon_counters is not None
        self.horizon_counters.read(horizon, last_issued)
        return horizon

    # Inserting.

    def _insert_args(
        self, stored_events: Sequence[StoredEvent]
    ) -> tuple[list[UUID | str], list[int], list[str], list[bytes]]:
        return (
            [self._originator_id(e.originator_id) for e in stored_events],
            [e.originator_version for e in stored_events],
            [e.topic for e in stored_events],
            [e.state for e in stored_events],
        )

    async def insert(
        self, conn: PostgresConnection, stored_events: Sequence[StoredEvent]
    ) -> Sequence[int]:
        if not self.notification_ids:
            await conn.execute(
                self._insert_statement, *self._insert_args(stored_events)
            )
            return []
        if not self.mode_checked:
            await self.check_write_mode(conn)
        if self.concurrent_writes:
            return await self._insert_concurrently(conn, stored_events)
        # The lock waits at most lock_timeout (0: forever), for this
        # transaction only, as eventsourcing's "SET LOCAL lock_timeout".
        await conn.execute(
            "SELECT set_config('lock_timeout', $1, true)",
            f"{self.datastore.lock_timeout}s",
        )
        # EXCLUSIVE does not block readers (ACCESS SHARE), only other
        # writers, until commit: ids are then issued and committed in order.
        await conn.execute(self._lock_table_and_notify_statement)
        rows = await conn.fetch(
            self._insert_statement, *self._insert_args(stored_events)
        )
        return [row[0] for row in rows]

    async def _insert_concurrently(
        self, conn: PostgresConnection, stored_events: Sequence[StoredEvent]
    ) -> Sequence[int]:
        """Insert in the transaction of ``conn`` in concurrent write mode, in
        one call of the table's function; NOTIFY once it commits."""
        timeout = self.datastore.lock_timeout
        lock_timeout = f"{timeout}s" if timeout else None
        rows = await conn.fetch(
            self._concurrent_insert_function_statement,
            lock_timeout,
            *self._insert_args(stored_events),
        )
        self.datastore.call_after_commit(conn, self._notify_after_commit)
        return [row[0] for row in rows]

    async def insert_alone(
        self, stored_events: Sequence[StoredEvent]
    ) -> Sequence[int] | None:
        if not self.notification_ids:
            # One statement, which commits by itself.
            async with self.datastore.connection() as conn:
                return await self.insert(conn, stored_events)
        if not self.mode_checked:
            await self.datastore.read(self.check_write_mode)
        if self.concurrent_writes:
            return await self._insert_alone_concurrently(stored_events)
        try:
            return await self._call_insert_function(
                stored_events,
                self._insert_one_function_statement,
                self._insert_function_statement,
            )
        except ProgrammingError as error:
            if not isinstance(error.__cause__, asyncpg.UndefinedFunctionError):
                raise
            # Tables made elsewhere (CREATE_TABLE=false), without our functions.
            self.inserts_alone = False
            return None

    async def _insert_alone_concurrently(
        self, stored_events: Sequence[StoredEvent]
    ) -> Sequence[int]:
        """One call of the table's concurrent insert function, which commits
        by itself; then NOTIFY, from the datastore."""
        ids = await self._call_insert_function(
            stored_events,
            self._concurrent_insert_one_function_statement,
            self._concurrent_insert_function_statement,
        )
        self._notify_after_commit()
        return ids

    async def _call_insert_function(
        self, stored_events: Sequence[StoredEvent], one: str, many: str
    ) -> list[int]:
        """The notification ids of one call, outside any transaction, of an
        insert function: by statement ``one`` for a single event (scalar
        arguments), else by ``many`` (arrays)."""
        timeout = self.datastore.lock_timeout
        lock_timeout = f"{timeout}s" if timeout else None
        if len(stored_events) == 1:
            (e,) = stored_events
            args: tuple[Any, ...] = (
                lock_timeout,
                self._originator_id(e.originator_id),
                e.originator_version,
                e.topic,
                e.state,
            )
            notification_id: int = await self.datastore.write(
                lambda conn: conn.fetchval(one, *args)
            )
            return [notification_id]
        args = (lock_timeout, *self._insert_args(stored_events))
        rows = await self.datastore.write(lambda conn: conn.fetch(many, *args))
        return [row[0] for row in rows]

    # Selecting.

    async def select_events(
        self,
        conn: PostgresConnection,
        originator_id: UUID | str,
        *,
        gt: int | None,
        lte: int | None,
        desc: bool,
        limit: int | None,
    ) -> Sequence[StoredEvent]:
        statement = self._select_events_statement
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
        rows = await conn.fetch(statement, *params)
        return [
            StoredEvent(
                originator_id=row[0],
                originator_version=row[1],
                topic=row[2],
                state=bytes(row[3]),
            )
            for row in rows
        ]

    async def select_notifications(
        self,
        conn: PostgresConnection,
        *,
        start: int | None,
        limit: int,
        stop: int | None,
        topics: Sequence[str],
        inclusive_of_start: bool,
    ) -> Sequence[Notification]:
        if not self.mode_checked:
            await self.check_write_mode(conn)
        params: list[Any] = []
        if self.concurrent_writes:
            params.append(await self._horizon(conn))
        if start is not None:
            params.append(start)
        if stop is not None:
            params.append(stop)
        if topics:
            params.append(list(topics))
        params.append(limit)
        statement = self._select_notifications_statement(
            start is not None,
            inclusive_of_start,
            stop is not None,
            bool(topics),
            self.concurrent_writes,
        )
        rows = await conn.fetch(statement, *params)
        # The columns in the order of Notification's fields (originator_id,
        # originator_version, topic, state, id), and bytea comes as bytes:
        # each row is the arguments as they are, in a catch-up's hot path.
        return [Notification(*row) for row in rows]

    def _select_notifications_statement(
        self,
        has_start: bool,
        inclusive_of_start: bool,
        has_stop: bool,
        has_topics: bool,
        has_horizon: bool = False,
    ) -> str:
        key = (has_start, inclusive_of_start, has_stop, has_topics, has_horizon)
        statement = self._select_notifications_statements.get(key)
        if statement is None:
            conditions: list[str] = []
            if has_horizon:
                conditions.append("notification_id < $1")
            if has_start:
                operator = ">=" if inclusive_of_start else ">"
                conditions.append(f"notification_id {operator} ${len(conditions) + 1}")
            if has_stop:
                conditions.append(f"notification_id <= ${len(conditions) + 1}")
            if has_topics:
                # The same filter as "topic = ANY($n)", but one the planner
                # cannot estimate (it takes half the rows): so it always
                # reads the notification id index in order and stops at the
                # limit. Estimated from the column's statistics, or without
                # any (a table not yet analysed: after a restore, a bulk
                # insert), a few matches seem likely, and it reads every row
                # after the start and sorts them instead, for each page: a
                # catch-up of N events then reads O(N**2) rows.
                conditions.append(
                    f"coalesce(topic = ANY(${len(conditions) + 1}), false)"
                )
            where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
            statement = (
                "SELECT originator_id, originator_version, topic, state, "
                f"notification_id FROM {self.table}"
                f"{where} ORDER BY notification_id LIMIT ${len(conditions) + 1}"
            )
            self._select_notifications_statements[key] = statement
        return statement

    async def max_notification_id(self, conn: PostgresConnection) -> int | None:
        """The largest notification id; in concurrent write mode, the
        largest below the visibility horizon (one that readers may pass)."""
        if not self.mode_checked:
            await self.check_write_mode(conn)
        if self.concurrent_writes:
            horizon = await self._horizon(conn)
            below: int | None = await conn.fetchval(
                self._max_notification_id_below_statement, horizon
            )
            return below
        result: int | None = await conn.fetchval(self._max_notification_id_statement)
        return result

    def _originator_id(self, originator_id: UUID | str) -> UUID | str:
        if self.datastore.originator_id_type == "text":
            return str(originator_id)
        return originator_id
