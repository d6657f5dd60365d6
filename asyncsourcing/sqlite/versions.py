"""The versions of projections in an SQLite file (see :mod:`asyncsourcing.versions`).

Write transactions lock the whole file (``BEGIN IMMEDIATE``): reading a row
in one is locking it, for the switch as for a building version's check.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from asyncsourcing.versions import (
    ReadPositions,
    VersionRecord,
    Versions,
    VersionStatus,
    find_version,
)

if TYPE_CHECKING:
    from asyncsourcing.sqlite.datastore import SQLiteDatastore

__all__ = ["SQLiteVersions"]

_COLUMNS = (
    "projection_name, version, status, application_name, replay_until, "
    "created_at, switched_at"
)
# The database's clock, in seconds since the epoch.
_NOW = "((julianday('now') - 2440587.5) * 86400.0)"


class SQLiteVersions(Versions):
    """The ``asyncsourcing_versions`` table of an SQLite file."""

    def __init__(self, datastore: SQLiteDatastore) -> None:
        self.datastore = datastore
        table = f'"{self.table_name}"'  # A fixed, plain identifier.
        self.create_table_statements = (
            f"CREATE TABLE IF NOT EXISTS {table} ("
            "projection_name TEXT, version INTEGER, status TEXT NOT NULL, "
            "application_name TEXT NOT NULL, replay_until INTEGER, "
            "created_at REAL NOT NULL, switched_at REAL, "
            "PRIMARY KEY (projection_name, version)) WITHOUT ROWID",
            f'CREATE UNIQUE INDEX IF NOT EXISTS "{self.table_name}_serving" '
            f"ON {table} (projection_name) WHERE status = 'serving'",
        )
        self.select_statement = (
            f"SELECT {_COLUMNS} FROM {table} WHERE projection_name = ? ORDER BY version"
        )
        self.insert_statement = (
            f"INSERT INTO {table} ({_COLUMNS}) VALUES (?, ?, ?, ?, NULL, {_NOW}, "
            f"CASE WHEN ? = 'serving' THEN {_NOW} END)"
        )
        self.retire_statement = (
            f"UPDATE {table} SET status = 'retired', switched_at = {_NOW} "
            "WHERE projection_name = ? AND status = 'serving'"
        )
        self.serve_statement = (
            f"UPDATE {table} SET status = 'serving', switched_at = {_NOW}, "
            "replay_until = ? WHERE projection_name = ? AND version = ?"
        )
        self.mark_statement = (
            f"UPDATE {table} SET replay_until = ? "
            "WHERE projection_name = ? AND version = ?"
        )
        self.delete_statement = (
            f"DELETE FROM {table} WHERE projection_name = ? AND version = ?"
        )

    async def create_table(self) -> None:
        async with self.datastore.transaction(commit=True) as conn:
            for statement in self.create_table_statements:
                await conn.execute(statement)

    async def register(
        self, projection_name: str, version: int, application_name: str
    ) -> VersionRecord:
        async with self.datastore.transaction(commit=True) as conn:
            records = await self._records(conn, projection_name)
            for record in records:
                if record.version == version:
                    return record
            status = VersionStatus.BUILDING if records else VersionStatus.SERVING
            await conn.execute(
                self.insert_statement,
                (projection_name, version, status.value, application_name, status),
            )
            records = await self._records(conn, projection_name)
        return next(r for r in records if r.version == version)

    async def records(self, projection_name: str) -> list[VersionRecord]:
        async with self.datastore.transaction() as conn:
            return await self._records(conn, projection_name)

    async def read_locked(
        self, projection_name: str, version: int
    ) -> VersionRecord | None:
        # Joins the task's write transaction, which holds the file's lock.
        async with self.datastore.transaction(commit=True) as conn:
            records = await self._records(conn, projection_name)
        return next((r for r in records if r.version == version), None)

    async def switch(
        self, projection_name: str, version: int, old_position: ReadPositions
    ) -> VersionRecord:
        async with self.datastore.transaction(commit=True) as conn:
            records = await self._records(conn, projection_name)
            record = find_version(records, projection_name, version)
            if record.status is not VersionStatus.SERVING:
                mark = self.greater(record.replay_until, await old_position(conn))
                await conn.execute(self.retire_statement, (projection_name,))
                await conn.execute(
                    self.serve_statement, (mark, projection_name, version)
                )
            records = await self._records(conn, projection_name)
        return find_version(records, projection_name, version)

    async def mark_replay(
        self, projection_name: str, version: int, position: int | None
    ) -> None:
        async with self.datastore.transaction(commit=True) as conn:
            records = await self._records(conn, projection_name)
            record = find_version(records, projection_name, version)
            mark = self.greater(record.replay_until, position)
            await conn.execute(self.mark_statement, (mark, projection_name, version))

    async def forget(self, projection_name: str, version: int) -> None:
        async with self.datastore.transaction(commit=True) as conn:
            await conn.execute(self.delete_statement, (projection_name, version))

    async def _records(self, conn: Any, projection_name: str) -> list[VersionRecord]:
        rows = await conn.execute_fetchall(self.select_statement, (projection_name,))
        return [_record(row) for row in rows]


def _record(row: Any) -> VersionRecord:
    return VersionRecord(
        projection_name=row[0],
        version=row[1],
        status=VersionStatus(row[2]),
        application_name=row[3],
        replay_until=row[4],
        created_at=datetime.fromtimestamp(row[5], UTC),
        switched_at=None if row[6] is None else datetime.fromtimestamp(row[6], UTC),
    )
