"""Aggregate, application, tracking and process recorders on PostgreSQL.

The tables, columns, index, composite type, insert function (which also
takes the table lock here), notification-id ordering rule and NOTIFY channel
of the events are those of ``eventsourcing.postgres`` 9.5, so both libraries
can share one database. Tracking is single-row per application name, as in
eventsourcing 9.5, and is also announced on a channel named after the
tracking table (eventsourcing ignores it), which wakes ``wait()`` in every
process.

The recorders are those of :mod:`asyncsourcing.sql`, given PostgreSQL's SQL
(:mod:`.dialect`, :mod:`.events`, :mod:`.tracking`) and wake-ups
(:mod:`.listener`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, cast

from asyncsourcing.persistence import ApplicationRecorder, StoredEvent, Subscription
from asyncsourcing.postgres.concurrent import STALL_POLL_INTERVAL
from asyncsourcing.postgres.datastore import PostgresConnection, PostgresDatastore
from asyncsourcing.postgres.dialect import (
    POSTGRES,
    PostgresDialect,
    truncate_identifier,
)
from asyncsourcing.postgres.events import PostgresEventsDialect
from asyncsourcing.postgres.identifiers import MAX_IDENTIFIER_LEN, qualified
from asyncsourcing.postgres.subscription import PostgresSubscription
from asyncsourcing.postgres.tracking import PostgresTrackingDialect
from asyncsourcing.sql.datastore import SQLDatastore
from asyncsourcing.sql.events import SQLAggregateRecorder, SQLApplicationRecorder
from asyncsourcing.sql.process import SQLProcessRecorder
from asyncsourcing.sql.recorder import SQLRecorder
from asyncsourcing.sql.tracking import SQLTrackingRecorder
from asyncsourcing.statistics import HorizonStatistics

__all__ = [
    "PostgresAggregateRecorder",
    "PostgresApplicationRecorder",
    "PostgresProcessRecorder",
    "PostgresRecorder",
    "PostgresTrackingRecorder",
    "truncate_identifier",
]


class PostgresRecorder(SQLRecorder[PostgresConnection]):
    """The base of the Postgres recorders: their datastore, and PostgreSQL's SQL.

    :meth:`check_identifier_length` is PostgreSQL's rule for names: at most
    63 bytes (PostgreSQL would truncate longer ones, which could then
    collide), not empty, no NUL. Names go into SQL double-quoted, schema
    included: a view quotes its own with
    ``qualified(self.datastore.schema, name)`` (see
    :mod:`asyncsourcing.postgres.identifiers`).
    """

    MAX_IDENTIFIER_LEN = MAX_IDENTIFIER_LEN

    dialect: ClassVar[PostgresDialect] = POSTGRES
    datastore: PostgresDatastore

    def __init__(self, datastore: PostgresDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)

    def _qualified(self, name: str) -> str:
        """``name`` quoted and qualified with the datastore's schema."""
        return qualified(self.datastore.schema, name)

    # The datastore given to the dialects is the one given to __init__.

    def _construct_events_dialect(
        self,
        datastore: SQLDatastore[PostgresConnection],
        events_table_name: str,
        *,
        notification_ids: bool,
    ) -> PostgresEventsDialect:
        return PostgresEventsDialect(
            cast(PostgresDatastore, datastore),
            events_table_name,
            notification_ids=notification_ids,
        )

    def _construct_tracking_dialect(
        self, datastore: SQLDatastore[PostgresConnection], tracking_table_name: str
    ) -> PostgresTrackingDialect:
        return PostgresTrackingDialect(
            cast(PostgresDatastore, datastore), tracking_table_name
        )


class PostgresAggregateRecorder(
    PostgresRecorder, SQLAggregateRecorder[PostgresConnection]
):
    """Stored events in aggregate sequences, in table ``events_table_name``."""

    events_dialect: PostgresEventsDialect


class PostgresApplicationRecorder(
    PostgresAggregateRecorder, SQLApplicationRecorder[PostgresConnection]
):
    """Stored events with notification ids, which commit in the order given.

    Inserting takes the table's EXCLUSIVE lock, as eventsourcing does, so that
    transactions get their notification ids and commit one after the other:
    a reader following the ids never passes over an id that commits later.
    Each insert NOTIFYs the channel named after the table. A save outside a
    transaction is one call of a function that locks, notifies and inserts
    (with the saves that arrive meanwhile); where the function is missing
    (tables made elsewhere), a transaction of a few statements.

    With ``POSTGRES_CONCURRENT_WRITES=true`` (:attr:`concurrent_writes`),
    saves take no table lock but a shared advisory lock, and readers pass
    only the events below a visibility horizon, under which every writing
    transaction has ended, in order of id: none is passed over, though a
    transaction left open holds the readers back until it ends
    (:meth:`horizon_statistics`). The table's mode is recorded on it and
    checked once: a recorder in either mode refuses a table of the other
    (:class:`~asyncsourcing.postgres.concurrent.EventsTableModeError`). See
    :mod:`asyncsourcing.postgres.concurrent`.
    """

    async def _create_tables(self, conn: PostgresConnection) -> None:
        existed = await self.events_dialect.table_exists(conn)
        await super()._create_tables(conn)
        await self.events_dialect.create_insert_events_function(conn)
        await self.events_dialect.set_up_write_mode(conn, created=not existed)

    @property
    def concurrent_writes(self) -> bool:
        """Whether the events table is written in concurrent write mode."""
        return self.events_dialect.concurrent_writes

    def horizon_statistics(self) -> HorizonStatistics | None:
        """How far, and how long, reads have been held back by the visibility
        horizon of concurrent write mode, as this recorder's reads found it;
        None in table-lock mode. No IO."""
        counters = self.events_dialect.horizon_counters
        return None if counters is None else counters.snapshot()

    async def check_insert_events_function(self) -> bool:
        """Whether eventsourcing's insert function, if there is one, locks the table.

        eventsourcing 9.5 re-creates ``es_insert_events_<type>`` with its own
        body, which inserts without the table lock, whenever it creates its
        tables. Events saved through that body (by eventsourcing applications
        with ``POSTGRES_ENABLE_DB_FUNCTIONS=yes``) may commit out of the order
        of their ids, and a subscriber may pass over them for good: this
        logs a warning naming the function, and returns False. Each
        subscription checks as it starts.
        """
        return await self.datastore.read(
            self.events_dialect.check_insert_events_function
        )

    async def _call_insert_function(
        self, stored_events: Sequence[StoredEvent]
    ) -> Sequence[int]:
        """:meth:`_insert_in_own_transaction`, by its former name here."""
        return await self._insert_in_own_transaction(stored_events)

    def subscribe(
        self, gt: int | None = None, topics: Sequence[str] = ()
    ) -> Subscription[ApplicationRecorder]:
        """Follow the application sequence after ``gt`` (no IO until used)."""
        counters = self.events_dialect.horizon_counters
        return PostgresSubscription(
            self,
            gt=gt,
            topics=topics,
            listener=self.datastore.listener,
            channel=self.events_dialect.channel_name,
            poll_interval=self.datastore.settings.poll_interval,
            on_listening=self.check_insert_events_function,
            held_back=None if counters is None else lambda: counters.is_held_back,
            held_back_poll_interval=STALL_POLL_INTERVAL,
        )


class PostgresTrackingRecorder(
    PostgresRecorder, SQLTrackingRecorder[PostgresConnection]
):
    """Single-row tracking per application name, in ``tracking_table_name``.

    Views subclass it, adding their tables to ``sql_create_statements`` and
    calling ``await self.record_tracking(conn, tracking)`` inside their own
    ``async with self.datastore.transaction(commit=True) as conn`` block
    (``_insert_tracking``, eventsourcing's name, stays as an alias).
    """

    tracking_dialect: PostgresTrackingDialect

    def __init__(
        self,
        datastore: PostgresDatastore,
        *,
        tracking_table_name: str = "notification_tracking",
        **kwargs: Any,
    ) -> None:
        super().__init__(datastore, tracking_table_name=tracking_table_name, **kwargs)


class PostgresProcessRecorder(
    PostgresTrackingRecorder,
    PostgresApplicationRecorder,
    SQLProcessRecorder[PostgresConnection],
):
    """Events and the tracking of the processed event, in one transaction (the
    tracking first: see :class:`~asyncsourcing.sql.process.SQLProcessRecorder`)."""

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
