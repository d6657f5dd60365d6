"""SQLite's SQL of an events table, eventsourcing's ``stored_events`` layout,
and the wake-ups of its subscribers.

A notification id is the event's ``rowid``. Writers take the file's write
lock at the start of their transactions, so ids are given, and committed,
in order. Within the process, the datastore's
:class:`~asyncsourcing.sqlite.notifier.SQLiteNotifier` wakes the
subscriptions of the table once events have committed; other processes'
commits are found by polling (see
:class:`~asyncsourcing.sqlite.subscription.SQLiteSubscription`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from uuid import UUID

import aiosqlite

from asyncsourcing.persistence import Notification, StoredEvent
from asyncsourcing.sqlite.dialect import originator_id_param, quote

if TYPE_CHECKING:
    from asyncsourcing.sqlite.datastore import SQLiteDatastore
    from asyncsourcing.sqlite.notifier import Subscriber

__all__ = ["SQLiteEventsDialect"]

logger = logging.getLogger(__name__)

# SQLite binds at most 32,766 parameters in a statement, four per event.
_MAX_ROWS_PER_STATEMENT = 8000


class SQLiteEventsDialect:
    """The statements of the events table ``table_name`` of ``datastore``.

    With ``notification_ids`` the table is a rowid table (an application's,
    the rowid being the notification id) and inserting into it wakes its
    subscribers; without, it is a ``WITHOUT ROWID`` table (snapshots).
    """

    def __init__(
        self, datastore: SQLiteDatastore, table_name: str, *, notification_ids: bool
    ) -> None:
        self.datastore = datastore
        self.table_name = table_name
        self.notification_ids = notification_ids
        # An application's inserts alone are one autocommit statement.
        self.inserts_alone = notification_ids
        table = quote(table_name)
        self._insert_statement = f"INSERT INTO {table} VALUES (?, ?, ?, ?)"
        self._insert_values_prefix = f"INSERT INTO {table} VALUES"
        self._insert_one_statement = (
            f"{self._insert_values_prefix} (?, ?, ?, ?) RETURNING rowid"
        )
        self._select_events_statement = (
            f"SELECT originator_id, originator_version, topic, state FROM {table} "
            "WHERE originator_id = ?"
        )
        self._select_notifications_statement = (
            "SELECT rowid, originator_id, originator_version, topic, state "
            f"FROM {table}"
        )
        self._max_notification_id_statement = f"SELECT MAX(rowid) FROM {table}"
        self._waking: set[asyncio.Task[None]] = set()

    def create_table_statements(self) -> list[str]:
        return [
            f"CREATE TABLE IF NOT EXISTS {quote(self.table_name)} ("
            "originator_id TEXT, "
            "originator_version INTEGER, "
            "topic TEXT, "
            "state BLOB, "
            "PRIMARY KEY "
            "(originator_id, originator_version))"
            # The rowid is the notification id; a table without keeps none.
            + ("" if self.notification_ids else " WITHOUT ROWID")
        ]

    async def insert(
        self, conn: aiosqlite.Connection, stored_events: Sequence[StoredEvent]
    ) -> Sequence[int]:
        await conn.executemany(self._insert_statement, [_row(s) for s in stored_events])
        if not self.notification_ids:
            return []
        rows = list(await conn.execute_fetchall("SELECT last_insert_rowid()"))
        last: int = rows[0][0]
        # The transaction holds the write lock, and each new rowid is one
        # more than the largest: the batch's ids are consecutive.
        first = last - len(stored_events) + 1
        self.datastore.call_after_commit(conn, self.events_committed)
        return list(range(first, last + 1))

    async def insert_alone(
        self, stored_events: Sequence[StoredEvent]
    ) -> Sequence[int] | None:
        if not self.notification_ids or len(stored_events) > _MAX_ROWS_PER_STATEMENT:
            return None
        # One statement, a transaction by itself: one trip to the
        # connection's thread instead of four (BEGIN, INSERT, SELECT, COMMIT).
        if len(stored_events) == 1:
            statement = self._insert_one_statement
            params: Sequence[Any] = _row(stored_events[0])
        else:
            values = ", ".join(["(?, ?, ?, ?)"] * len(stored_events))
            statement = f"{self._insert_values_prefix} {values} RETURNING rowid"
            params = [value for s in stored_events for value in _row(s)]
        try:
            rows = await self.datastore.write(
                lambda conn: conn.execute_fetchall(statement, params)
            )
        except asyncio.CancelledError:
            # The statement runs on in the connection's thread, and may
            # commit: wake the subscribers once it has run.
            self._wake_after_writes()
            raise
        self.events_committed()
        # RETURNING's order is unspecified, but rows are inserted in the
        # order of VALUES, each with the next rowid.
        return sorted(row[0] for row in rows)

    async def select_events(
        self,
        conn: aiosqlite.Connection,
        originator_id: UUID | str,
        *,
        gt: int | None,
        lte: int | None,
        desc: bool,
        limit: int | None,
    ) -> Sequence[StoredEvent]:
        statement = self._select_events_statement
        params: list[Any] = [originator_id_param(originator_id)]
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
        rows = await conn.execute_fetchall(statement, params)
        return [
            StoredEvent(
                originator_id=self._originator_id(row[0]),
                originator_version=row[1],
                topic=row[2],
                state=row[3],
            )
            for row in rows
        ]

    async def select_notifications(
        self,
        conn: aiosqlite.Connection,
        *,
        start: int | None,
        limit: int,
        stop: int | None,
        topics: Sequence[str],
        inclusive_of_start: bool,
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
        statement = self._select_notifications_statement
        if conditions:
            statement += " WHERE " + " AND ".join(conditions)
        statement += " ORDER BY rowid LIMIT ?"
        params.append(limit)
        rows = await conn.execute_fetchall(statement, params)
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

    async def max_notification_id(self, conn: aiosqlite.Connection) -> int | None:
        rows = list(await conn.execute_fetchall(self._max_notification_id_statement))
        max_id: int | None = rows[0][0]
        return max_id

    def _originator_id(self, stored: str) -> UUID | str:
        return UUID(stored) if self.datastore.originator_id_type == "uuid" else stored

    # Wake-ups.

    def events_committed(self) -> None:
        """Events have committed to the table: wake its subscribers in the
        process (those of every datastore on the database)."""
        self.datastore.notifier.events_committed(self.table_name)

    def _wake_after_writes(self) -> None:
        """:meth:`events_committed` once the statements sent to the writer
        connection so far have run (the statements after them do)."""

        async def wake() -> None:
            try:
                await self.datastore.write(
                    lambda conn: conn.execute_fetchall("SELECT 1")
                )
            except Exception:  # Closed, say: its statements have run.
                logger.debug("Waiting for the writer of %r failed", self.datastore)
            if not self.datastore.is_closed:
                self.events_committed()

        task = asyncio.get_running_loop().create_task(wake())
        self._waking.add(task)
        task.add_done_callback(self._waking.discard)

    def add_subscriber(self, subscriber: Subscriber) -> None:
        """Wake ``subscriber`` (a subscription) when events commit to the table."""
        self.datastore.notifier.add_subscriber(
            self.datastore, self.table_name, subscriber
        )

    def discard_subscriber(self, subscriber: Subscriber) -> None:
        """Wake ``subscriber`` no more."""
        if not self.datastore.is_closed:
            self.datastore.notifier.discard_subscriber(self.table_name, subscriber)


def _row(stored_event: StoredEvent) -> tuple[str, int, str, bytes]:
    return (
        originator_id_param(stored_event.originator_id),
        stored_event.originator_version,
        stored_event.topic,
        stored_event.state,
    )
