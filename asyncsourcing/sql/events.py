"""The aggregate and application recorders of the SQL backends, written once.

The backend's :class:`~asyncsourcing.sql.dialects.EventsDialect` supplies
the SQL of the events table, an insert in a transaction of its own in one
round trip (PostgreSQL: a call of a function that takes the table lock;
SQLite: one autocommit ``INSERT ... RETURNING`` statement), and the wake-ups
of subscribers; the recorders hold the rest: which insert to use, the
coalescing of concurrent saves, the reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar
from uuid import UUID

from asyncsourcing.coalescing import WriteCoalescer
from asyncsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    Notification,
    StoredEvent,
)
from asyncsourcing.sql.datastore import Conn, SQLDatastore
from asyncsourcing.sql.dialects import EventsDialect
from asyncsourcing.sql.recorder import SQLRecorder

__all__ = ["SQLAggregateRecorder", "SQLApplicationRecorder"]


class SQLAggregateRecorder(SQLRecorder[Conn], AggregateRecorder):
    """Stored events in aggregate sequences, in table ``events_table_name``."""

    _has_notification_ids: ClassVar[bool] = False

    def __init__(
        self,
        datastore: SQLDatastore[Conn],
        *,
        events_table_name: str = "stored_events",
        **kwargs: Any,
    ) -> None:
        self.check_identifier_length(events_table_name)
        self.events_table_name = events_table_name
        self.events_dialect = self._construct_events_dialect(
            datastore,
            events_table_name,
            notification_ids=self._has_notification_ids,
        )
        super().__init__(datastore, **kwargs)

    def _construct_events_dialect(
        self,
        datastore: SQLDatastore[Conn],
        events_table_name: str,
        *,
        notification_ids: bool,
    ) -> EventsDialect[Conn]:
        """The backend's SQL of the events table, with or without notification
        ids: a backend's recorder base class provides it."""
        raise NotImplementedError

    def _construct_create_table_statements(self) -> list[str]:
        return [
            *super()._construct_create_table_statements(),
            *self.events_dialect.create_table_statements(),
        ]

    async def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        await self._insert(stored_events, **kwargs)
        return None

    async def _insert(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int]:
        """Insert ``stored_events`` atomically: in the task's transaction if it
        has one, else alone (:meth:`_insert_alone`) where the backend can."""
        if (
            stored_events
            and kwargs.get("tracking") is None
            and self.events_dialect.inserts_alone
            and not self.datastore.in_transaction()
        ):
            return await self._insert_alone(stored_events)
        async with self.datastore.transaction(commit=True) as conn:
            return await self._insert_events(conn, stored_events, **kwargs)

    async def _insert_alone(
        self, stored_events: Sequence[StoredEvent]
    ) -> Sequence[int]:
        return await self._insert_in_own_transaction(stored_events)

    async def _insert_in_own_transaction(
        self, stored_events: Sequence[StoredEvent]
    ) -> Sequence[int]:
        """Insert ``stored_events`` in a transaction of their own: in the
        backend's fewest round trips, else in a transaction opened here."""
        notification_ids = await self.events_dialect.insert_alone(stored_events)
        if notification_ids is not None:
            return notification_ids
        async with self.datastore.transaction(commit=True) as conn:
            return await self._insert_events(conn, stored_events)

    async def _insert_events(
        self, conn: Conn, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int]:
        """Insert ``stored_events`` in the transaction of ``conn``: their
        notification ids (``[]`` without). The process recorder records the
        ``tracking`` of ``kwargs`` here too."""
        if not stored_events:
            return []
        return await self.events_dialect.insert(conn, stored_events)

    async def select_events(
        self,
        originator_id: UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Sequence[StoredEvent]:
        return await self.datastore.read(
            lambda conn: self.events_dialect.select_events(
                conn, originator_id, gt=gt, lte=lte, desc=desc, limit=limit
            )
        )


class SQLApplicationRecorder(SQLAggregateRecorder[Conn], ApplicationRecorder):
    """Stored events in aggregate sequences and in the application sequence.

    Notification ids are given, and committed, in order (PostgreSQL: an
    insert takes the table's EXCLUSIVE lock; SQLite: a write transaction
    takes the file's write lock), so that a subscriber following the ids
    never passes over one that commits later. Saves that arrive while
    another is being written are written together, in one transaction (see
    :mod:`asyncsourcing.coalescing`); a conflict in one fails only that one.
    """

    _has_notification_ids = True

    def __init__(
        self,
        datastore: SQLDatastore[Conn],
        *,
        events_table_name: str = "stored_events",
        **kwargs: Any,
    ) -> None:
        super().__init__(datastore, events_table_name=events_table_name, **kwargs)
        self._coalescer = WriteCoalescer(self._insert_in_own_transaction)

    async def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """Insert ``stored_events`` atomically; returns their notification ids.

        Concurrent calls that arrive together are recorded in one
        transaction. Inside a transaction of the task, or with ``tracking``,
        the events go in that transaction instead.
        """
        return await self._insert(stored_events, **kwargs)

    async def _insert_alone(
        self, stored_events: Sequence[StoredEvent]
    ) -> Sequence[int]:
        return await self._coalescer.write(stored_events)

    async def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Notification]:
        return await self.datastore.read(
            lambda conn: self.events_dialect.select_notifications(
                conn,
                start=start,
                limit=limit,
                stop=stop,
                topics=topics,
                inclusive_of_start=inclusive_of_start,
            )
        )

    async def max_notification_id(self) -> int | None:
        return await self.datastore.read(self.events_dialect.max_notification_id)
