"""The versions of projections in an SQLite file (see :mod:`asyncsourcing.versions`).

Write transactions lock the whole file (``BEGIN IMMEDIATE``): reading a row
in one is locking it, for the switch as for a building version's check, and
registrations are serial.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import aiosqlite

from asyncsourcing.sql.versions import COLUMNS, SQLVersions, version_record
from asyncsourcing.versions import VersionRecord

if TYPE_CHECKING:
    from asyncsourcing.sqlite.datastore import SQLiteDatastore

__all__ = ["SQLiteVersions"]

# The database's clock, in seconds since the epoch.
_NOW = "((julianday('now') - 2440587.5) * 86400.0)"


class SQLiteVersions(SQLVersions[aiosqlite.Connection]):
    """The ``asyncsourcing_versions`` table of an SQLite file."""

    def __init__(self, datastore: SQLiteDatastore) -> None:
        super().__init__(datastore)
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
            f"SELECT {COLUMNS} FROM {table} WHERE projection_name = ? ORDER BY version"
        )
        self.select_for_update_statement = self.select_statement
        self.select_one_for_share_statement = (
            f"SELECT {COLUMNS} FROM {table} WHERE projection_name = ? AND version = ?"
        )
        self.insert_statement = (
            f"INSERT INTO {table} ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, NULL, {_NOW}, "
            f"CASE WHEN ?3 = 'serving' THEN {_NOW} END)"
        )
        self.retire_statement = (
            f"UPDATE {table} SET status = 'retired', switched_at = {_NOW} "
            "WHERE projection_name = ? AND status = 'serving'"
        )
        self.serve_statement = (
            f"UPDATE {table} SET status = 'serving', switched_at = {_NOW}, "
            "replay_until = ?3 WHERE projection_name = ?1 AND version = ?2"
        )
        self.mark_statement = (
            f"UPDATE {table} SET replay_until = ?3 "
            "WHERE projection_name = ?1 AND version = ?2"
        )
        self.delete_statement = (
            f"DELETE FROM {table} WHERE projection_name = ? AND version = ?"
        )

    async def _execute(
        self, conn: aiosqlite.Connection, statement: str, *args: Any
    ) -> None:
        await conn.execute(statement, args)

    async def _fetch(
        self, conn: aiosqlite.Connection, statement: str, *args: Any
    ) -> list[VersionRecord]:
        rows = await conn.execute_fetchall(statement, args)
        return [version_record(row, _from_seconds) for row in rows]


def _from_seconds(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)
