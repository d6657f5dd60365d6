"""SQLite's SQL of the partition positions beside a tracking table.

Write transactions begin with ``BEGIN IMMEDIATE``, which takes the file's
write lock: in one, reading a position is locking it, and the partitions of
an application are written one transaction at a time. Other processes learn
of new positions by polling, as they do of the tracking table's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import aiosqlite

from asyncsourcing.persistence import PartitionTracking, partition_table_name
from asyncsourcing.sql.dialects import PartitionRow
from asyncsourcing.sqlite.dialect import quote

__all__ = ["SQLitePartitionDialect"]

_COLUMNS = '"partition", partitions, notification_id'


class SQLitePartitionDialect:
    """The statements of the partition positions beside the tracking table
    ``tracking_table_name``."""

    def __init__(self, tracking_table_name: str) -> None:
        self.tracking_table_name = tracking_table_name
        self.table_name = partition_table_name(tracking_table_name)
        self.table = table = quote(self.table_name)
        self._select_statement = (
            f"SELECT {_COLUMNS} FROM {table} WHERE application_name = ?"
        )
        forward = "(notification_id IS NULL OR notification_id < ?)"
        self._insert_statement = (
            f"UPDATE {table} SET notification_id = ? "
            f'WHERE application_name = ? AND "partition" = ? AND {forward} '
            "RETURNING notification_id"
        )
        # The same, but only from the position given last (NULL: none yet).
        self._compare_and_set_statement = self._insert_statement.replace(
            "RETURNING", "AND notification_id IS ? RETURNING"
        )

    async def create_table(self, conn: aiosqlite.Connection) -> None:
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {self.table} ("
            "application_name TEXT, "
            '"partition" INTEGER, '
            "partitions INTEGER, "
            "notification_id INTEGER, "
            'PRIMARY KEY (application_name, "partition")) '
            "WITHOUT ROWID"
        )

    async def read_tracking(
        self, conn: aiosqlite.Connection, application_name: str
    ) -> tuple[int | None, bool]:
        rows = list(
            await conn.execute_fetchall(
                "SELECT (SELECT MAX(notification_id) FROM "
                f"{quote(self.tracking_table_name)} WHERE application_name = ?), "
                "EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' "
                "AND name = ?)",
                (application_name, self.table_name),
            )
        )
        position: int | None = rows[0][0]
        return position, bool(rows[0][1])

    async def claim(
        self, conn: aiosqlite.Connection, application_name: str, partitions: int
    ) -> list[PartitionRow]:
        await conn.executemany(
            f'INSERT INTO {self.table} (application_name, "partition", partitions) '
            'VALUES (?, ?, ?) ON CONFLICT (application_name, "partition") DO NOTHING',
            [
                (application_name, partition, partitions)
                for partition in range(partitions)
            ],
        )
        return await self.select(conn, application_name)

    async def select(
        self, conn: aiosqlite.Connection, application_name: str
    ) -> list[PartitionRow]:
        return _rows(
            await conn.execute_fetchall(
                self._select_statement + ' ORDER BY "partition"', (application_name,)
            )
        )

    async def read(
        self, conn: aiosqlite.Connection, application_name: str, partition: int
    ) -> PartitionRow | None:
        rows = _rows(
            await conn.execute_fetchall(
                self._select_statement + ' AND "partition" = ?',
                (application_name, partition),
            )
        )
        return rows[0] if rows else None

    async def lock(
        self, conn: aiosqlite.Connection, application_name: str, partition: int
    ) -> PartitionRow | None:
        # The write transaction holds the file's lock already.
        return await self.read(conn, application_name, partition)

    async def insert(
        self, conn: aiosqlite.Connection, tracking: PartitionTracking
    ) -> bool:
        return await self._update(conn, self._insert_statement, tracking)

    async def compare_and_set(
        self,
        conn: aiosqlite.Connection,
        tracking: PartitionTracking,
        expected: int | None,
    ) -> bool:
        return await self._update(
            conn, self._compare_and_set_statement, tracking, expected
        )

    async def _update(
        self,
        conn: aiosqlite.Connection,
        statement: str,
        tracking: PartitionTracking,
        *more: Any,
    ) -> bool:
        position = tracking.notification_id
        returned = await conn.execute_fetchall(
            statement,
            (position, tracking.application_name, tracking.partition, position, *more),
        )
        return bool(list(returned))

    async def advance(
        self,
        conn: aiosqlite.Connection,
        application_name: str,
        marks: Mapping[int, int],
    ) -> list[PartitionRow]:
        if not marks:
            return []
        # One statement, whatever the number of marks (at most 1,024, two
        # parameters each: well within SQLite's limit of 32,766).
        values = ", ".join(["(?, ?)"] * len(marks))
        parameters = [value for mark in sorted(marks.items()) for value in mark]
        return _rows(
            await conn.execute_fetchall(
                f"WITH marks (p, mark) AS (VALUES {values}) "
                f"UPDATE {self.table} SET notification_id = marks.mark FROM marks "
                f'WHERE application_name = ? AND "partition" = marks.p '
                "AND (notification_id IS NULL OR notification_id < marks.mark) "
                f"RETURNING {_COLUMNS}",
                (*parameters, application_name),
            )
        )


def _rows(rows: Iterable[Any]) -> list[PartitionRow]:
    return [PartitionRow(row[0], row[1], row[2]) for row in rows]
