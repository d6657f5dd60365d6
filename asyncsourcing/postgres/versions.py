"""The versions of projections in a PostgreSQL schema (see
:mod:`asyncsourcing.versions`).

A building version's view transactions read its row ``FOR SHARE``; the
switch takes the projection's rows ``FOR UPDATE``, so it waits for those
transactions, and they for it. Registering takes a transaction-scoped
advisory lock on the projection's name, so that two first versions do not
both serve.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from asyncsourcing.postgres.errors import translate_errors
from asyncsourcing.postgres.identifiers import qualified, quote_identifier
from asyncsourcing.sql.versions import COLUMNS, SQLVersions, version_record
from asyncsourcing.versions import VersionRecord

if TYPE_CHECKING:
    from asyncsourcing.postgres.datastore import PostgresConnection, PostgresDatastore

__all__ = ["PostgresVersions"]


class PostgresVersions(SQLVersions["PostgresConnection"]):
    """The ``asyncsourcing_versions`` table of a datastore's schema."""

    def __init__(self, datastore: PostgresDatastore) -> None:
        super().__init__(datastore)
        table = qualified(datastore.schema, self.table_name)
        self.create_table_statements = (
            f"CREATE TABLE IF NOT EXISTS {table} ("
            "projection_name text, version integer, status text NOT NULL, "
            "application_name text NOT NULL, replay_until bigint, "
            "created_at timestamptz NOT NULL, switched_at timestamptz, "
            "PRIMARY KEY (projection_name, version))",
            "CREATE UNIQUE INDEX IF NOT EXISTS "
            f"{quote_identifier(self.table_name + '_serving')} "
            f"ON {table} (projection_name) WHERE status = 'serving'",
        )
        self.select_statement = (
            f"SELECT {COLUMNS} FROM {table} WHERE projection_name = $1 ORDER BY version"
        )
        self.select_for_update_statement = self.select_statement + " FOR UPDATE"
        self.select_one_for_share_statement = (
            f"SELECT {COLUMNS} FROM {table} "
            "WHERE projection_name = $1 AND version = $2 FOR SHARE"
        )
        self.insert_statement = (
            f"INSERT INTO {table} ({COLUMNS}) VALUES ($1, $2, $3, $4, NULL, "
            "clock_timestamp(), CASE WHEN $3 = 'serving' THEN clock_timestamp() END)"
        )
        self.retire_statement = (
            f"UPDATE {table} SET status = 'retired', switched_at = clock_timestamp() "
            "WHERE projection_name = $1 AND status = 'serving'"
        )
        self.serve_statement = (
            f"UPDATE {table} SET status = 'serving', "
            "switched_at = clock_timestamp(), replay_until = $3 "
            "WHERE projection_name = $1 AND version = $2"
        )
        self.mark_statement = (
            f"UPDATE {table} SET replay_until = $3 "
            "WHERE projection_name = $1 AND version = $2"
        )
        self.delete_statement = (
            f"DELETE FROM {table} WHERE projection_name = $1 AND version = $2"
        )
        self._lock_statement = (
            "SELECT pg_advisory_xact_lock(hashtextextended("
            f"'{self.table_name}/' || $1, 0))"
        )

    async def _lock_registrations(
        self, conn: PostgresConnection, projection_name: str
    ) -> None:
        await self._execute(conn, self._lock_statement, projection_name)

    async def _execute(
        self, conn: PostgresConnection, statement: str, *args: Any
    ) -> None:
        with translate_errors():
            await conn.execute(statement, *args)

    async def _fetch(
        self, conn: PostgresConnection, statement: str, *args: Any
    ) -> list[VersionRecord]:
        with translate_errors():
            rows = await conn.fetch(statement, *args)
        # asyncpg gives timestamptz as aware datetimes.
        return [version_record(row, lambda value: value) for row in rows]
