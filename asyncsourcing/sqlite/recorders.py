"""Recorders on SQLite, with eventsourcing 9.5's table layouts.

The tables are those of :mod:`eventsourcing.sqlite`, column for column, so
that the two libraries can share a database file: aggregate sequences in
``stored_events`` (``stored_snapshots`` for snapshots), whose ``rowid`` is
the notification id; processed positions in a tracking table (eventsourcing's
``tracking``, or a view's own ``<name>_tracking``: see
:class:`~asyncsourcing.sqlite.SQLiteFactory`), one row per application name,
beside a ``__migration__`` row that tells eventsourcing the table is already
single-row.

The recorders are those of :mod:`asyncsourcing.sql`, given SQLite's SQL
(:mod:`.dialect`, :mod:`.events`, :mod:`.tracking`) and wake-ups
(:mod:`.notifier`). Which projection records an application's positions in
which tracking table is claimed in ``asyncsourcing_tracking_owners``, so
that two projections never share a tracking row unawares: see
:mod:`.ownership`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, cast

import aiosqlite

from asyncsourcing.persistence import ApplicationRecorder, Subscription
from asyncsourcing.sql.datastore import SQLDatastore
from asyncsourcing.sql.events import SQLAggregateRecorder, SQLApplicationRecorder
from asyncsourcing.sql.process import SQLProcessRecorder
from asyncsourcing.sql.recorder import SQLRecorder
from asyncsourcing.sql.tracking import MIGRATION_APPLICATION_NAME
from asyncsourcing.sqlite.datastore import SQLiteDatastore
from asyncsourcing.sqlite.dialect import SQLITE, SQLiteDialect, quote
from asyncsourcing.sqlite.events import SQLiteEventsDialect
from asyncsourcing.sqlite.ownership import (
    TRACKING_OWNERS_TABLE,
    TrackingConflictError,
    TrackingOwnership,
    TrackingUpgradeError,
)
from asyncsourcing.sqlite.subscription import SQLiteSubscription
from asyncsourcing.sqlite.tracking import SHARED_TRACKING_TABLE, SQLiteTrackingDialect

__all__ = [
    "MIGRATION_APPLICATION_NAME",
    "SHARED_TRACKING_TABLE",
    "TRACKING_OWNERS_TABLE",
    "SQLiteAggregateRecorder",
    "SQLiteApplicationRecorder",
    "SQLiteProcessRecorder",
    "SQLiteRecorder",
    "SQLiteTrackingRecorder",
    "TrackingConflictError",
    "TrackingUpgradeError",
    "quote",
]


class SQLiteRecorder(SQLRecorder[aiosqlite.Connection]):
    """The base of the SQLite recorders: their datastore, and SQLite's SQL.

    :meth:`check_identifier_length` is SQLite's rule for table names:
    plain identifiers (letters, digits and underscores, not starting with a
    digit), as eventsourcing writes them unquoted, not starting with
    ``sqlite_``, which SQLite reserves.
    """

    dialect: ClassVar[SQLiteDialect] = SQLITE
    datastore: SQLiteDatastore

    def __init__(self, datastore: SQLiteDatastore, **kwargs: Any) -> None:
        if not isinstance(datastore, SQLiteDatastore):
            msg = f"Expected an SQLiteDatastore, got {datastore!r}"
            raise TypeError(msg)
        super().__init__(datastore, **kwargs)

    # The datastore given to the dialects is the one __init__ has checked.

    def _construct_events_dialect(
        self,
        datastore: SQLDatastore[aiosqlite.Connection],
        events_table_name: str,
        *,
        notification_ids: bool,
    ) -> SQLiteEventsDialect:
        return SQLiteEventsDialect(
            cast(SQLiteDatastore, datastore),
            events_table_name,
            notification_ids=notification_ids,
        )

    def _construct_tracking_dialect(
        self, datastore: SQLDatastore[aiosqlite.Connection], tracking_table_name: str
    ) -> SQLiteTrackingDialect:
        return SQLiteTrackingDialect(
            cast(SQLiteDatastore, datastore), tracking_table_name
        )


class SQLiteAggregateRecorder(
    SQLiteRecorder, SQLAggregateRecorder[aiosqlite.Connection]
):
    """Stored events in aggregate sequences, in table ``events_table_name``."""

    events_dialect: SQLiteEventsDialect

    def __init__(
        self,
        datastore: SQLiteDatastore,
        events_table_name: str = "stored_events",
        **kwargs: Any,
    ) -> None:
        super().__init__(datastore, events_table_name=events_table_name, **kwargs)


class SQLiteApplicationRecorder(
    SQLiteAggregateRecorder, SQLApplicationRecorder[aiosqlite.Connection]
):
    """Stored events in aggregate sequences and in the application sequence.

    A notification id is the event's ``rowid``. Writers hold the database's
    write lock from the start of their transactions, so ids are given, and
    committed, in order: a subscriber never passes over an event that
    commits later with a lower id. Concurrent saves arriving together share
    one autocommit ``INSERT ... RETURNING rowid`` statement.
    """

    def subscribe(
        self, gt: int | None = None, topics: Sequence[str] = ()
    ) -> Subscription[ApplicationRecorder]:
        return SQLiteSubscription(
            self,
            gt=gt,
            topics=topics,
            wake_ups=self.events_dialect,
            poll_interval=self.datastore.cross_process_poll_interval,
        )


class SQLiteTrackingRecorder(SQLiteRecorder, TrackingOwnership):
    """Positions of processed events, one row per application name.

    A view subclasses it: in ``__init__`` it appends its tables to
    :attr:`sql_create_statements` (checking derived names with
    :meth:`check_identifier_length`), and in its command methods it records
    tracking with its update in one transaction::

        async with self.datastore.transaction(commit=True) as connection:
            await self.record_tracking(connection, tracking)
            await connection.execute(self.update_statement, params)

    (``_insert_tracking``, eventsourcing's name, stays as an alias.)
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

    tracking_dialect: SQLiteTrackingDialect

    def __init__(
        self,
        datastore: SQLiteDatastore,
        *,
        tracking_table_name: str = SHARED_TRACKING_TABLE,
        **kwargs: Any,
    ) -> None:
        super().__init__(datastore, tracking_table_name=tracking_table_name, **kwargs)


class SQLiteProcessRecorder(
    SQLiteTrackingRecorder,
    SQLiteApplicationRecorder,
    SQLProcessRecorder[aiosqlite.Connection],
):
    """New events and the tracking of the event that caused them, in one
    transaction (the tracking first: see
    :class:`~asyncsourcing.sql.process.SQLProcessRecorder`)."""

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
