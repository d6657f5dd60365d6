"""Recorders on SQLite, with eventsourcing 9.5's table layouts.

The tables are those of :mod:`eventsourcing.sqlite`, column for column, so
that the two libraries can share a database file: aggregate sequences in
``stored_events`` (``stored_snapshots`` for snapshots), whose ``rowid`` is
the notification id; processed positions in a tracking table (eventsourcing's
``tracking``, or a view's own ``<name>_tracking``: see
:class:`~asyncsourcing.sqlite.SQLiteFactory`), one row per application name,
beside a ``__migration__`` row that tells eventsourcing the table is already
single-row.

Which projection records an application's positions in which tracking table
is claimed in ``asyncsourcing_tracking_owners`` (asyncsourcing's own table,
which eventsourcing ignores), so that two projections never share a tracking
row unawares: see :class:`SQLiteTrackingRecorder`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from functools import partial
from typing import Any
from uuid import UUID

import aiosqlite

from asyncsourcing.batching import TrackingBatches
from asyncsourcing.coalescing import WriteCoalescer
from asyncsourcing.leases import Lease
from asyncsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    IntegrityError,
    Notification,
    ParkedEvent,
    ProcessRecorder,
    ProgrammingError,
    Recorder,
    StoredEvent,
    Subscription,
    Tracking,
    TrackingBatch,
    TrackingRecorder,
    parked_table_name,
)
from asyncsourcing.sqlite.datastore import SQLiteDatastore
from asyncsourcing.sqlite.leases import SQLiteLeases
from asyncsourcing.sqlite.subscription import SQLiteSubscription
from asyncsourcing.waiting import PositionBoard

__all__ = [
    "TRACKING_OWNERS_TABLE",
    "SQLiteAggregateRecorder",
    "SQLiteApplicationRecorder",
    "SQLiteProcessRecorder",
    "SQLiteRecorder",
    "SQLiteTrackingRecorder",
    "TrackingConflictError",
    "TrackingUpgradeError",
]

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def quote(identifier: str) -> str:
    """``identifier`` as a quoted SQL identifier."""
    return '"' + identifier.replace('"', '""') + '"'


def _originator_id_param(originator_id: UUID | str) -> str:
    # eventsourcing stores UUIDs as 32 hex digits, without dashes.
    return originator_id.hex if isinstance(originator_id, UUID) else originator_id


class SQLiteRecorder(Recorder):
    """A recorder whose tables live in the database of ``datastore``.

    Its tables are made by the statements in :attr:`sql_create_statements`
    (subclasses append theirs in ``__init__``): by :meth:`create_table`, and
    also, when the datastore creates tables on first use, before the
    datastore's next transaction, so a recorder constructed without IO is
    ready when first used.
    """

    def __init__(self, datastore: SQLiteDatastore) -> None:
        if not isinstance(datastore, SQLiteDatastore):
            msg = f"Expected an SQLiteDatastore, got {datastore!r}"
            raise TypeError(msg)
        self.datastore = datastore
        self.sql_create_statements: list[str] = (
            self._construct_create_table_statements()
        )
        if datastore.create_tables_on_first_use:
            datastore.add_table_creator(self._create_tables)

    def _construct_create_table_statements(self) -> list[str]:
        return []

    async def create_table(self) -> None:
        """Create the recorder's tables if they do not exist."""
        self.datastore.add_table_creator(self._create_tables)
        await self.datastore.create_tables()

    async def _create_tables(self, connection: aiosqlite.Connection) -> None:
        for statement in self.sql_create_statements:
            await connection.execute(statement)

    @staticmethod
    def check_identifier_length(name: str) -> None:
        """Raise :class:`ProgrammingError` unless ``name`` can name a table.

        SQLite sets no length limit on names: this checks what can go wrong
        instead. Names are plain identifiers (letters, digits and
        underscores, not starting with a digit), as eventsourcing writes
        them unquoted, and do not start with ``sqlite_``, which SQLite
        reserves.
        """
        if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
            msg = (
                f"Invalid SQLite table name {name!r}: use letters, digits and "
                "underscores, not starting with a digit"
            )
            raise ProgrammingError(msg)
        if name.lower().startswith("sqlite_"):
            msg = f"Invalid SQLite table name {name!r}: 'sqlite_' names are reserved"
            raise ProgrammingError(msg)

    def _originator_id(self, stored: str) -> UUID | str:
        return UUID(stored) if self.datastore.originator_id_type == "uuid" else stored


class SQLiteAggregateRecorder(SQLiteRecorder, AggregateRecorder):
    """Stored events in aggregate sequences, in table ``events_table_name``."""

    def __init__(
        self, datastore: SQLiteDatastore, events_table_name: str = "stored_events"
    ) -> None:
        self.check_identifier_length(events_table_name)
        self.events_table_name = events_table_name
        super().__init__(datastore)
        table = quote(events_table_name)
        self.insert_events_statement = f"INSERT INTO {table} VALUES (?, ?, ?, ?)"
        self._insert_values_prefix = f"INSERT INTO {table} VALUES"
        self.select_events_statement = (
            f"SELECT originator_id, originator_version, topic, state FROM {table} "
            "WHERE originator_id = ?"
        )

    def _construct_create_table_statements(self) -> list[str]:
        return [
            *super()._construct_create_table_statements(),
            f"CREATE TABLE IF NOT EXISTS {quote(self.events_table_name)} ("
            "originator_id TEXT, "
            "originator_version INTEGER, "
            "topic TEXT, "
            "state BLOB, "
            "PRIMARY KEY "
            "(originator_id, originator_version)) "
            "WITHOUT ROWID",
        ]

    async def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        async with self.datastore.transaction(commit=True) as connection:
            return await self._insert_events(connection, stored_events, **kwargs)

    async def _insert_events(
        self,
        connection: aiosqlite.Connection,
        stored_events: Sequence[StoredEvent],
        **_: Any,
    ) -> Sequence[int] | None:
        if stored_events:
            await connection.executemany(
                self.insert_events_statement,
                [
                    (
                        _originator_id_param(s.originator_id),
                        s.originator_version,
                        s.topic,
                        s.state,
                    )
                    for s in stored_events
                ],
            )
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
        statement = self.select_events_statement
        params: list[Any] = [_originator_id_param(originator_id)]
        if gt is not None:
            statement += " AND originator_version > ?"
            params.append(gt)
        if lte is not None:
            statement += " AND originator_version <= ?"
            params.append(lte)
        statement += " ORDER BY originator_version " + ("DESC" if desc else "ASC")
        if limit is not None:
            statement += " LIMIT ?"
            params.append(limit)
        async with self.datastore.transaction(commit=False) as connection:
            rows = await connection.execute_fetchall(statement, params)
        return [
            StoredEvent(
                originator_id=self._originator_id(row[0]),
                originator_version=row[1],
                topic=row[2],
                state=row[3],
            )
            for row in rows
        ]


class SQLiteApplicationRecorder(SQLiteAggregateRecorder, ApplicationRecorder):
    """Stored events in aggregate sequences and in the application sequence.

    A notification id is the event's ``rowid``. Writers hold the database's
    write lock from the start of their transactions, so ids are given, and
    committed, in order: a subscriber never passes over an event that
    commits later with a lower id.
    """

    def __init__(
        self, datastore: SQLiteDatastore, events_table_name: str = "stored_events"
    ) -> None:
        super().__init__(datastore, events_table_name)
        # Concurrent saves arriving together share a transaction (one lock,
        # one commit): see asyncsourcing.coalescing.
        self._coalescer = WriteCoalescer(self._insert_in_own_transaction)
        table = quote(self.events_table_name)
        self.select_notifications_statement = (
            "SELECT rowid, originator_id, originator_version, topic, state "
            f"FROM {table}"
        )
        self.select_max_notification_id_statement = f"SELECT MAX(rowid) FROM {table}"

    def _construct_create_table_statements(self) -> list[str]:
        # A rowid table, unlike the aggregate recorder's: the rowid is the
        # notification id.
        return [
            f"CREATE TABLE IF NOT EXISTS {quote(self.events_table_name)} ("
            "originator_id TEXT, "
            "originator_version INTEGER, "
            "topic TEXT, "
            "state BLOB, "
            "PRIMARY KEY "
            "(originator_id, originator_version))"
        ]

    async def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """Insert ``stored_events`` atomically; returns their notification ids.

        Concurrent calls that arrive together are recorded in one transaction;
        a conflict in one of them fails only that one. Inside a transaction of
        the task, or with tracking, the events go in that transaction instead.
        """
        if (
            not stored_events
            or kwargs.get("tracking") is not None
            or self.datastore.in_transaction()
        ):
            return await super().insert_events(stored_events, **kwargs)
        return await self._coalescer.write(stored_events)

    async def _insert_in_own_transaction(
        self, stored_events: Sequence[StoredEvent]
    ) -> Sequence[int]:
        if len(stored_events) > _MAX_ROWS_PER_STATEMENT:
            async with self.datastore.transaction(commit=True) as connection:
                return await self._insert_events(connection, stored_events)
        # One statement, a transaction by itself: one trip to the
        # connection's thread instead of four (BEGIN, INSERT, SELECT, COMMIT).
        values = ", ".join(["(?, ?, ?, ?)"] * len(stored_events))
        params = [
            value
            for s in stored_events
            for value in (
                _originator_id_param(s.originator_id),
                s.originator_version,
                s.topic,
                s.state,
            )
        ]
        async with self.datastore.autocommit() as connection:
            rows = await connection.execute_fetchall(
                f"{self._insert_values_prefix} {values} RETURNING rowid", params
            )
        self._events_committed()
        # RETURNING's order is unspecified, but rows are inserted in the
        # order of VALUES, each with the next rowid.
        return sorted(row[0] for row in rows)

    async def _insert_events(
        self,
        connection: aiosqlite.Connection,
        stored_events: Sequence[StoredEvent],
        **kwargs: Any,
    ) -> Sequence[int]:
        await super()._insert_events(connection, stored_events, **kwargs)
        if not stored_events:
            return []
        rows = list(await connection.execute_fetchall("SELECT last_insert_rowid()"))
        last: int = rows[0][0]
        # The transaction holds the write lock, and each new rowid is one
        # more than the largest: the batch's ids are consecutive.
        first = last - len(stored_events) + 1
        self.datastore.call_after_commit(connection, self._events_committed)
        return list(range(first, last + 1))

    def _events_committed(self) -> None:
        self.datastore.notifier.events_committed(self.events_table_name)

    async def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Notification]:
        conditions: list[str] = []
        params: list[Any] = []
        if start is not None:
            conditions.append("rowid >= ?" if inclusive_of_start else "rowid > ?")
            params.append(start)
        if stop is not None:
            conditions.append("rowid <= ?")
            params.append(stop)
        if topics:
            conditions.append(f"topic IN ({', '.join('?' * len(topics))})")
            params.extend(topics)
        statement = self.select_notifications_statement
        if conditions:
            statement += " WHERE " + " AND ".join(conditions)
        statement += " ORDER BY rowid LIMIT ?"
        params.append(limit)
        async with self.datastore.transaction(commit=False) as connection:
            rows = await connection.execute_fetchall(statement, params)
        return [
            Notification(
                id=row[0],
                originator_id=self._originator_id(row[1]),
                originator_version=row[2],
                topic=row[3],
                state=row[4],
            )
            for row in rows
        ]

    async def max_notification_id(self) -> int | None:
        async with self.datastore.transaction(commit=False) as connection:
            rows = list(
                await connection.execute_fetchall(
                    self.select_max_notification_id_statement
                )
            )
        max_id: int | None = rows[0][0]
        return max_id

    def subscribe(
        self, gt: int | None = None, topics: Sequence[str] = ()
    ) -> Subscription[ApplicationRecorder]:
        return SQLiteSubscription(self, gt=gt, topics=topics)


# SQLite binds at most 32,766 parameters in a statement, four per event.
_MAX_ROWS_PER_STATEMENT = 8000

MIGRATION_APPLICATION_NAME = "__migration__"
"""The row by which eventsourcing knows a tracking table is single-row."""

SHARED_TRACKING_TABLE = "tracking"
"""eventsourcing's tracking table, whatever the name of the view or process."""

TRACKING_OWNERS_TABLE = "asyncsourcing_tracking_owners"
"""Which projection records which application's positions in which table."""


class TrackingConflictError(ProgrammingError):
    """Two projections would record one application's positions in one row.

    Each would then take the other's position for its own and skip events.
    The message names both projections, the table and the file.
    """


class TrackingUpgradeError(ProgrammingError):
    """A view's tracking table is new, but the shared ``tracking`` table of
    its file has a position for the application that no projection claims:
    most likely the view's own, recorded before SQLite views had tracking
    tables of their own. Processing from the start would apply events to
    the view twice, so the view does not start; the message says how to
    keep the position or to start afresh.
    """


class SQLiteTrackingRecorder(SQLiteRecorder, TrackingRecorder):
    """Positions of processed events, one row per application name.

    A view subclasses it: in ``__init__`` it appends its tables to
    :attr:`sql_create_statements` (checking derived names with
    :meth:`check_identifier_length`), and in its command methods it records
    tracking with its update in one transaction::

        async with self.datastore.transaction(commit=True) as connection:
            await self._insert_tracking(connection, tracking)
            await connection.execute(self.update_statement, params)

    :meth:`wait` is woken by the commit of the position, from any recorder
    of the process on the same database and tracking table (they share a
    :class:`~asyncsourcing.waiting.PositionBoard`); other processes' commits
    are found by re-reading every ``SQLITE_POLL_INTERVAL`` seconds while
    tasks wait.

    Ownership: a recorder with an :attr:`owner_name` (the factory sets it to
    its environment's name, which for a projection runner's view or an
    event-sourced projection is the projection's name) claims each
    application's row of its tracking table, in
    :data:`TRACKING_OWNERS_TABLE`, when it first reads, waits for or
    records a position of that application. Another projection claiming the
    same row raises :class:`TrackingConflictError`, naming both; a runner
    reads its position as it starts, so it fails there, before processing
    anything. A recorder without an owner (constructed directly, or by a
    factory without a name, as eventsourcing's are) claims nothing.
    """

    owner_name: str | None = None
    """The projection whose positions this recorder records, or None."""

    check_upgrade: bool = False
    """Whether to look for the view's position in eventsourcing's shared
    ``tracking`` table before starting an application afresh: see
    :class:`TrackingUpgradeError` (the factory sets it for views whose
    tracking table is named after them by default)."""

    def __init__(
        self,
        datastore: SQLiteDatastore,
        *,
        tracking_table_name: str = SHARED_TRACKING_TABLE,
        **kwargs: Any,
    ) -> None:
        self.check_identifier_length(tracking_table_name)
        self.tracking_table_name = tracking_table_name
        # Applications whose row this recorder has claimed (or found its own).
        self._claimed: set[str] = set()
        super().__init__(datastore, **kwargs)
        table = quote(tracking_table_name)
        self.insert_tracking_statement = self._upsert_tracking_statement(
            f"{table}.notification_id < excluded.notification_id"
        )
        # The same, but only from the position given third (NULL: no row).
        self.compare_and_set_tracking_statement = self._upsert_tracking_statement(
            f"{table}.notification_id < excluded.notification_id "
            f"AND {table}.notification_id IS ?"
        )
        self.select_max_tracking_id_statement = (
            f"SELECT MAX(notification_id) FROM {table} WHERE application_name = ?"
        )
        # Write transactions begin with BEGIN IMMEDIATE, which locks the
        # whole database: reading the row is locking it.
        self._tracking_batches: TrackingBatches[aiosqlite.Connection] = TrackingBatches(
            lock=self._max_tracking_id,
            read_max=self._max_tracking_id,
            compare_and_set=self._compare_and_set_tracking,
            check_fence=self._check_fence,
        )
        self._leases: SQLiteLeases | None = None

    def _upsert_tracking_statement(self, condition: str) -> str:
        """Inserts the first row of an application, or moves its row forward
        where ``condition`` holds; returns no row, changing nothing, otherwise."""
        return (
            f"INSERT INTO {quote(self.tracking_table_name)} "
            "(application_name, notification_id) VALUES (?, ?) "
            "ON CONFLICT (application_name) DO UPDATE "
            f"SET notification_id = excluded.notification_id WHERE {condition} "
            "RETURNING notification_id"
        )

    def _construct_create_table_statements(self) -> list[str]:
        return [
            *super()._construct_create_table_statements(),
            f"CREATE TABLE IF NOT EXISTS {quote(self.tracking_table_name)} ("
            "application_name TEXT, "
            "notification_id INTEGER, "
            "PRIMARY KEY "
            "(application_name)) "
            "WITHOUT ROWID",
        ]

    async def _create_tables(self, connection: aiosqlite.Connection) -> None:
        table = self.tracking_table_name
        existed = bool(
            list(
                await connection.execute_fetchall(
                    "SELECT 1 FROM sqlite_master WHERE type = ? AND name = ?",
                    ("table", table),
                )
            )
        )
        needs_migration_row = not existed
        migrated: list[tuple[str, int]] = []
        if existed and (
            await self._max_tracking_id(connection, MIGRATION_APPLICATION_NAME) is None
        ):
            # A multi-row table, from before eventsourcing 9.5: kept aside
            # under eventsourcing's name for it, and replaced, as
            # eventsourcing does, by a single-row table of the maximums.
            migrated = [
                (str(row[0]), int(row[1]))
                for row in await connection.execute_fetchall(
                    "SELECT application_name, MAX(notification_id) "
                    f"FROM {quote(table)} GROUP BY application_name"
                )
            ]
            await connection.execute(
                f"ALTER TABLE {quote(table)} RENAME TO {quote('old1_' + table)}"
            )
            needs_migration_row = True
        await super()._create_tables(connection)
        if needs_migration_row:
            for name, position in [(MIGRATION_APPLICATION_NAME, 1), *migrated]:
                await connection.execute_fetchall(
                    self.insert_tracking_statement, (name, position)
                )

    async def insert_tracking(self, tracking: Tracking) -> None:
        async with self.datastore.transaction(commit=True) as connection:
            await self._insert_tracking(connection, tracking)

    async def _insert_tracking(
        self, connection: aiosqlite.Connection, tracking: Tracking
    ) -> None:
        """Record ``tracking`` in the transaction of ``connection``.

        Raises :class:`IntegrityError` when the position is not ahead of the
        recorded one: the enclosing transaction then rolls back, so the
        view's update is not recorded either. Waiters are woken once the
        transaction has committed, not before. In a :meth:`batch_transaction`,
        only the batch's last position is written.
        """
        if not await self._tracking_batches.defer(connection, tracking):
            await self._record_tracking(connection, tracking)

    async def _record_tracking(
        self, connection: aiosqlite.Connection, tracking: Tracking
    ) -> None:
        await self._claim_in(connection, tracking.application_name)
        returned = await connection.execute_fetchall(
            self.insert_tracking_statement,
            (tracking.application_name, tracking.notification_id),
        )
        if not list(returned):
            msg = (
                f"Tracking notification ID {tracking.notification_id} not greater "
                "than current max tracking ID for application "
                f"'{tracking.application_name}'"
            )
            raise IntegrityError(msg)
        self._advance_after_commit(connection, tracking)

    async def _compare_and_set_tracking(
        self,
        connection: aiosqlite.Connection,
        tracking: Tracking,
        expected: int | None,
    ) -> None:
        await self._claim_in(connection, tracking.application_name)
        returned = await connection.execute_fetchall(
            self.compare_and_set_tracking_statement,
            (tracking.application_name, tracking.notification_id, expected),
        )
        if not list(returned):
            msg = (
                f"Tracking of application '{tracking.application_name}' moved "
                f"from {expected} while a batch up to {tracking.notification_id} "
                "was processed: another runner processed some of its events"
            )
            raise IntegrityError(msg)
        self._advance_after_commit(connection, tracking)

    async def _check_fence(self, conn: Any, lease: Lease) -> None:
        await self.leases.check_fence(conn, lease)

    def _advance_after_commit(
        self, connection: aiosqlite.Connection, tracking: Tracking
    ) -> None:
        self.datastore.call_after_commit(
            connection,
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
    def leases(self) -> SQLiteLeases:
        if self._leases is None:
            self._leases = SQLiteLeases(self.datastore)
        return self._leases

    def _advance(self, application_name: str, notification_id: int) -> None:
        # In-process waiters learn the position from the commit itself.
        self.position_board.advance(application_name, notification_id)

    async def max_tracking_id(self, application_name: str) -> int | None:
        await self._claim(application_name)
        async with self.datastore.transaction(commit=False) as connection:
            return await self._max_tracking_id(connection, application_name)

    async def wait(
        self,
        application_name: str,
        notification_id: int | None,
        timeout: float = 1.0,
        interrupt: asyncio.Event | None = None,
    ) -> None:
        await self._claim(application_name)
        await super().wait(application_name, notification_id, timeout, interrupt)

    # Ownership of tracking rows.

    async def _claim(self, application_name: str) -> None:
        """Claim the row of ``application_name`` for :attr:`owner_name`.

        Reads first: a claim already made costs no write transaction. Inside
        a transaction of the task it does nothing: recording tracking
        claims, in that transaction.
        """
        if (
            self.owner_name is None
            or application_name in self._claimed
            or self.datastore.in_transaction()
        ):
            return
        async with self.datastore.transaction(commit=False) as connection:
            owner = await self._owner(
                connection, self.tracking_table_name, application_name
            )
        if owner is not None:
            self._check_owner(owner, application_name)
            self._claimed.add(application_name)
            return
        async with self.datastore.transaction(commit=True) as connection:
            await self._claim_in(connection, application_name)

    async def _claim_in(
        self, connection: aiosqlite.Connection, application_name: str
    ) -> None:
        """Claim, in the write transaction of ``connection``, which holds the
        file's write lock: the first projection to claim a row keeps it."""
        if self.owner_name is None or application_name in self._claimed:
            return
        await connection.execute(_CREATE_OWNERS_TABLE)
        owner = await self._owner(
            connection, self.tracking_table_name, application_name
        )
        if owner is None:
            if self.check_upgrade:
                await self._check_not_upgraded(connection, application_name)
            await connection.execute(
                f"INSERT INTO {quote(TRACKING_OWNERS_TABLE)} (tracking_table, "
                "application_name, projection_name, claimed_at) VALUES (?, ?, ?, ?)",
                (
                    self.tracking_table_name,
                    application_name,
                    self.owner_name,
                    datetime.now(UTC).isoformat(),
                ),
            )
        else:
            self._check_owner(owner, application_name)
        self.datastore.call_after_commit(
            connection, partial(self._claimed.add, application_name)
        )

    @staticmethod
    async def _owner(
        connection: aiosqlite.Connection, table: str, application_name: str
    ) -> str | None:
        """The projection that claims ``table``'s row of ``application_name``."""
        if not await _table_exists(connection, TRACKING_OWNERS_TABLE):
            return None
        rows = list(
            await connection.execute_fetchall(
                f"SELECT projection_name FROM {quote(TRACKING_OWNERS_TABLE)} "
                "WHERE tracking_table = ? AND application_name = ?",
                (table, application_name),
            )
        )
        return str(rows[0][0]) if rows else None

    def _check_owner(self, owner: str, application_name: str) -> None:
        if owner == self.owner_name:
            return
        if self.tracking_table_name == SHARED_TRACKING_TABLE:
            remedy = (
                f"give one of them a database file of its own "
                f"({_setting(self.owner_name, 'SQLITE_DBNAME')})"
            )
        else:
            remedy = (
                "give each projection a tracking table of its own ("
                f"{_setting(self.owner_name, 'SQLITE_TRACKING_TABLE')} names this "
                "one's) or a database file of its own "
                f"({_setting(self.owner_name, 'SQLITE_DBNAME')})"
            )
        msg = (
            f"Projection {self.owner_name!r} cannot record the positions of "
            f"application {application_name!r} in table "
            f"{self.tracking_table_name!r} of {self.datastore.db_name}: projection "
            f"{owner!r} records them there, and each would skip the events that "
            f"the other processed; {remedy}"
        )
        raise TrackingConflictError(msg)

    async def _check_not_upgraded(
        self, connection: aiosqlite.Connection, application_name: str
    ) -> None:
        """Raise :class:`TrackingUpgradeError` if this view would start
        ``application_name`` afresh while an unclaimed position of it is in
        the shared ``tracking`` table (see :attr:`check_upgrade`)."""
        shared = SHARED_TRACKING_TABLE
        if self.tracking_table_name == shared or not await _table_exists(
            connection, shared
        ):
            return
        if await self._max_tracking_id(connection, application_name) is not None:
            return  # The view has started with its own table.
        rows = list(
            await connection.execute_fetchall(
                f"SELECT notification_id FROM {quote(shared)} "
                "WHERE application_name = ?",
                (application_name,),
            )
        )
        if not rows:
            return
        owner = await self._owner(connection, shared, application_name)
        if owner is not None and owner != self.owner_name:
            return  # Another projection's position (an event-sourced one's).
        position = rows[0][0]
        keep = _setting(self.owner_name, "SQLITE_TRACKING_TABLE")
        if owner is None:
            whose = (
                "which no projection claims: most likely this view's, recorded "
                "before SQLite views had tracking tables of their own"
            )
        else:
            whose = f"which this projection recorded there while {keep} said so"
        msg = (
            f"Projection {self.owner_name!r} has no position of application "
            f"{application_name!r} in its tracking table "
            f"{self.tracking_table_name!r} of {self.datastore.db_name}, but "
            f"eventsourcing's shared table {shared!r} there has position "
            f"{position} of {application_name!r}, {whose}. Not starting from "
            f"the beginning: to keep that position (and the view's tables), set "
            f"{keep}={shared}; if it is not this view's, start the projection it "
            f"belongs to first, or set {keep}={self.tracking_table_name} to "
            "process every event again"
        )
        raise TrackingUpgradeError(msg)

    async def _max_tracking_id(
        self, connection: aiosqlite.Connection, application_name: str
    ) -> int | None:
        rows = list(
            await connection.execute_fetchall(
                self.select_max_tracking_id_statement, (application_name,)
            )
        )
        position: int | None = rows[0][0]
        return position

    @property
    def parked_table_name(self) -> str:
        """The dead-letter table of :meth:`park` (checked, unquoted)."""
        name = parked_table_name(self.tracking_table_name)
        self.check_identifier_length(name)
        return name

    async def park(
        self, tracking: Tracking, topic: str, state: bytes, error: str
    ) -> None:
        table = quote(self.parked_table_name)
        async with self.datastore.transaction(commit=True) as connection:
            # Made on first use: the tables of eventsourcing stay as they are.
            await connection.execute(
                f"CREATE TABLE IF NOT EXISTS {table} ("
                "application_name TEXT, notification_id INTEGER, topic TEXT, "
                "state BLOB, error TEXT, parked_at TEXT, "
                "PRIMARY KEY (application_name, notification_id))"
            )
            await self._insert_tracking(connection, tracking)
            await connection.execute(
                f"INSERT INTO {table} (application_name, notification_id, topic, "
                "state, error, parked_at) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    tracking.application_name,
                    tracking.notification_id,
                    topic,
                    state,
                    error,
                    datetime.now(UTC).isoformat(),
                ),
            )

    async def parked(self, application_name: str) -> list[ParkedEvent]:
        name = self.parked_table_name
        async with self.datastore.transaction(commit=False) as connection:
            exists = list(
                await connection.execute_fetchall(
                    "SELECT 1 FROM sqlite_master WHERE type = ? AND name = ?",
                    ("table", name),
                )
            )
            if not exists:
                return []
            rows = await connection.execute_fetchall(
                "SELECT application_name, notification_id, topic, state, error, "
                f"parked_at FROM {quote(name)} WHERE application_name = ? "
                "ORDER BY notification_id",
                (application_name,),
            )
        return [
            ParkedEvent(
                row[0],
                row[1],
                row[2],
                bytes(row[3]),
                row[4],
                datetime.fromisoformat(row[5]),
            )
            for row in rows
        ]

    def _construct_position_board(self) -> PositionBoard:
        # Shared by the recorders of every datastore of the process on this
        # database and tracking table: any of them committing wakes them all.
        return self.datastore.notifier.position_board(
            self.datastore,
            self.tracking_table_name,
            self.max_tracking_id,
            poll_interval=self.datastore.cross_process_poll_interval,
        )


_CREATE_OWNERS_TABLE = (
    f"CREATE TABLE IF NOT EXISTS {quote(TRACKING_OWNERS_TABLE)} ("
    "tracking_table TEXT, "
    "application_name TEXT, "
    "projection_name TEXT NOT NULL, "
    "claimed_at TEXT NOT NULL, "
    "PRIMARY KEY (tracking_table, application_name)) "
    "WITHOUT ROWID"
)


async def _table_exists(connection: aiosqlite.Connection, name: str) -> bool:
    rows = await connection.execute_fetchall(
        "SELECT 1 FROM sqlite_master WHERE type = ? AND name = ?", ("table", name)
    )
    return bool(list(rows))


def _setting(name: str | None, key: str) -> str:
    """The environment variable of ``key`` that configures ``name`` alone."""
    return f"{name.upper()}_{key}" if name else key


class SQLiteProcessRecorder(
    SQLiteTrackingRecorder, SQLiteApplicationRecorder, ProcessRecorder
):
    """New events and the tracking of the event that caused them, in one transaction."""

    def __init__(
        self,
        datastore: SQLiteDatastore,
        *,
        events_table_name: str = "stored_events",
        tracking_table_name: str = SHARED_TRACKING_TABLE,
    ) -> None:
        super().__init__(
            datastore,
            tracking_table_name=tracking_table_name,
            events_table_name=events_table_name,
        )

    async def _insert_events(
        self,
        connection: aiosqlite.Connection,
        stored_events: Sequence[StoredEvent],
        **kwargs: Any,
    ) -> Sequence[int]:
        notification_ids = await super()._insert_events(
            connection, stored_events, **kwargs
        )
        tracking: Tracking | None = kwargs.get("tracking")
        if tracking is not None:
            await self._insert_tracking(connection, tracking)
        return notification_ids
