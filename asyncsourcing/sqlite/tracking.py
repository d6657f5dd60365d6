"""SQLite's SQL of a tracking table, eventsourcing's single-row layout, and of
the dead-letter table beside it (that of the partition positions beside it
is in :mod:`asyncsourcing.sqlite.partitions`).

Write transactions begin with ``BEGIN IMMEDIATE``, which takes the file's
write lock: in one, reading a position is locking it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

import aiosqlite

from asyncsourcing.persistence import ParkedEvent, Tracking, parked_table_name
from asyncsourcing.sqlite.dialect import quote, table_exists
from asyncsourcing.sqlite.leases import SQLiteLeases
from asyncsourcing.sqlite.partitions import SQLitePartitionDialect
from asyncsourcing.sqlite.versions import SQLiteVersions

if TYPE_CHECKING:
    from asyncsourcing.leases import Lease
    from asyncsourcing.sqlite.datastore import SQLiteDatastore

__all__ = ["SHARED_TRACKING_TABLE", "SQLiteTrackingDialect"]

SHARED_TRACKING_TABLE = "tracking"
"""eventsourcing's tracking table, whatever the name of the view or process."""


class SQLiteTrackingDialect:
    """The statements of the tracking table ``table_name`` of ``datastore``."""

    def __init__(self, datastore: SQLiteDatastore, table_name: str) -> None:
        self.datastore = datastore
        self.table_name = table_name
        table = quote(table_name)
        self._insert_statement = self._upsert_statement(
            f"{table}.notification_id < excluded.notification_id"
        )
        # The same, but only from the position given third (NULL: no row).
        self._compare_and_set_statement = self._upsert_statement(
            f"{table}.notification_id < excluded.notification_id "
            f"AND {table}.notification_id IS ?"
        )
        self._select_max_statement = (
            f"SELECT MAX(notification_id) FROM {table} WHERE application_name = ?"
        )
        self._leases: SQLiteLeases | None = None
        self._versions: SQLiteVersions | None = None
        self._partitions: SQLitePartitionDialect | None = None

    def _upsert_statement(self, condition: str) -> str:
        """Inserts the first row of an application, or moves its row forward
        where ``condition`` holds; returns no row, changing nothing, otherwise."""
        return (
            f"INSERT INTO {quote(self.table_name)} "
            "(application_name, notification_id) VALUES (?, ?) "
            "ON CONFLICT (application_name) DO UPDATE "
            f"SET notification_id = excluded.notification_id WHERE {condition} "
            "RETURNING notification_id"
        )

    def create_table_statements(self) -> list[str]:
        return [
            f"CREATE TABLE IF NOT EXISTS {quote(self.table_name)} ("
            "application_name TEXT, "
            "notification_id INTEGER, "
            "PRIMARY KEY "
            "(application_name)) "
            "WITHOUT ROWID"
        ]

    async def exists(self, conn: aiosqlite.Connection) -> bool:
        return await table_exists(conn, self.table_name)

    async def set_aside_multi_row_table(
        self, conn: aiosqlite.Connection
    ) -> list[tuple[str, int]]:
        table = quote(self.table_name)
        maxima = [
            (str(row[0]), int(row[1]))
            for row in await conn.execute_fetchall(
                "SELECT application_name, MAX(notification_id) "
                f"FROM {table} GROUP BY application_name"
            )
        ]
        # eventsourcing's name for the backup.
        await conn.execute(
            f"ALTER TABLE {table} RENAME TO {quote('old1_' + self.table_name)}"
        )
        return maxima

    async def insert_rows(
        self, conn: aiosqlite.Connection, rows: Sequence[tuple[str, int]]
    ) -> None:
        for row in rows:
            await conn.execute_fetchall(self._insert_statement, row)

    async def insert(self, conn: aiosqlite.Connection, tracking: Tracking) -> bool:
        returned = await conn.execute_fetchall(
            self._insert_statement,
            (tracking.application_name, tracking.notification_id),
        )
        return bool(list(returned))

    async def compare_and_set(
        self, conn: aiosqlite.Connection, tracking: Tracking, expected: int | None
    ) -> bool:
        returned = await conn.execute_fetchall(
            self._compare_and_set_statement,
            (tracking.application_name, tracking.notification_id, expected),
        )
        return bool(list(returned))

    async def lock(
        self, conn: aiosqlite.Connection, application_name: str
    ) -> int | None:
        # The write transaction holds the file's lock already.
        return await self.read_max(conn, application_name)

    async def read_max(
        self, conn: aiosqlite.Connection, application_name: str
    ) -> int | None:
        rows = list(
            await conn.execute_fetchall(self._select_max_statement, (application_name,))
        )
        position: int | None = rows[0][0]
        return position

    async def create_parked_table(self, conn: aiosqlite.Connection, name: str) -> None:
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {quote(name)} ("
            "application_name TEXT, notification_id INTEGER, topic TEXT, "
            "state BLOB, error TEXT, parked_at TEXT, "
            "PRIMARY KEY (application_name, notification_id))"
        )

    async def insert_parked(
        self, conn: aiosqlite.Connection, name: str, parked: ParkedEvent
    ) -> None:
        await conn.execute(
            f"INSERT INTO {quote(name)} (application_name, notification_id, topic, "
            "state, error, parked_at) VALUES (?, ?, ?, ?, ?, ?)",
            (
                parked.application_name,
                parked.notification_id,
                parked.topic,
                parked.state,
                parked.error,
                parked.parked_at.isoformat(),
            ),
        )

    async def select_parked(
        self, conn: aiosqlite.Connection, name: str, application_name: str
    ) -> list[ParkedEvent]:
        if not await table_exists(conn, name):
            return []
        rows = await conn.execute_fetchall(
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

    @property
    def partitions(self) -> SQLitePartitionDialect:
        if self._partitions is None:
            self._partitions = SQLitePartitionDialect(self.table_name)
        return self._partitions

    @property
    def leases(self) -> SQLiteLeases:
        if self._leases is None:
            self._leases = SQLiteLeases(self.datastore)
        return self._leases

    @property
    def versions(self) -> SQLiteVersions:
        if self._versions is None:
            self._versions = SQLiteVersions(self.datastore)
        return self._versions

    async def drop_tables(
        self, conn: aiosqlite.Connection, tables: Sequence[str]
    ) -> None:
        for table in [*tables, quote(parked_table_name(self.table_name))]:
            await conn.execute(f"DROP TABLE IF EXISTS {table}")

    async def check_fence(self, conn: aiosqlite.Connection, lease: Lease) -> None:
        await self.leases.check_fence(conn, lease)
