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
from asyncsourcing.versions import (
    ReadPositions,
    VersionRecord,
    Versions,
    VersionStatus,
    find_version,
)

if TYPE_CHECKING:
    from asyncsourcing.postgres.datastore import PostgresConnection, PostgresDatastore

__all__ = ["PostgresVersions"]

_COLUMNS = (
    "projection_name, version, status, application_name, replay_until, "
    "created_at, switched_at"
)


class PostgresVersions(Versions):
    """The ``asyncsourcing_versions`` table of a datastore's schema."""

    def __init__(self, datastore: PostgresDatastore) -> None:
        self.datastore = datastore
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
            f"SELECT {_COLUMNS} FROM {table} WHERE projection_name = $1 "
            "ORDER BY version"
        )
        self.lock_statement = (
            "SELECT pg_advisory_xact_lock(hashtextextended("
            f"'{self.table_name}/' || $1, 0))"
        )
        self.select_for_update_statement = self.select_statement + " FOR UPDATE"
        self.select_one_for_share_statement = (
            f"SELECT {_COLUMNS} FROM {table} "
            "WHERE projection_name = $1 AND version = $2 FOR SHARE"
        )
        self.insert_statement = (
            f"INSERT INTO {table} ({_COLUMNS}) VALUES ($1, $2, $3, $4, NULL, "
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

    async def create_table(self) -> None:
        # Serialised with other processes' table creation: concurrent
        # CREATE TABLE IF NOT EXISTS can fail on pg_type's unique index.
        async with self.datastore.creating_tables() as conn:
            with translate_errors():
                for statement in self.create_table_statements:
                    await conn.execute(statement)

    async def register(
        self, projection_name: str, version: int, application_name: str
    ) -> VersionRecord:
        async with self.datastore.transaction(commit=True) as conn:
            with translate_errors():
                await conn.execute(self.lock_statement, projection_name)
                records = await self._records(conn, projection_name)
                for record in records:
                    if record.version == version:
                        return record
                status = VersionStatus.BUILDING if records else VersionStatus.SERVING
                await conn.execute(
                    self.insert_statement,
                    projection_name,
                    version,
                    status.value,
                    application_name,
                )
                records = await self._records(conn, projection_name)
        return find_version(records, projection_name, version)

    async def records(self, projection_name: str) -> list[VersionRecord]:
        async with self.datastore.transaction() as conn:
            with translate_errors():
                return await self._records(conn, projection_name)

    async def read_locked(
        self, projection_name: str, version: int
    ) -> VersionRecord | None:
        # Joins the task's write transaction: the lock lasts until it ends.
        async with self.datastore.transaction(commit=True) as conn:
            with translate_errors():
                row = await conn.fetchrow(
                    self.select_one_for_share_statement, projection_name, version
                )
        return None if row is None else _record(row)

    async def switch(
        self, projection_name: str, version: int, old_position: ReadPositions
    ) -> VersionRecord:
        async with self.datastore.transaction(commit=True) as conn:
            with translate_errors():
                records = await self._records(conn, projection_name, lock=True)
                record = find_version(records, projection_name, version)
                if record.status is not VersionStatus.SERVING:
                    mark = self.greater(record.replay_until, await old_position(conn))
                    await conn.execute(self.retire_statement, projection_name)
                    await conn.execute(
                        self.serve_statement, projection_name, version, mark
                    )
                records = await self._records(conn, projection_name)
        return find_version(records, projection_name, version)

    async def mark_replay(
        self, projection_name: str, version: int, position: int | None
    ) -> None:
        async with self.datastore.transaction(commit=True) as conn:
            with translate_errors():
                records = await self._records(conn, projection_name, lock=True)
                record = find_version(records, projection_name, version)
                mark = self.greater(record.replay_until, position)
                await conn.execute(self.mark_statement, projection_name, version, mark)

    async def forget(self, projection_name: str, version: int) -> None:
        async with self.datastore.transaction(commit=True) as conn:
            with translate_errors():
                await conn.execute(self.delete_statement, projection_name, version)

    async def _records(
        self, conn: PostgresConnection, projection_name: str, *, lock: bool = False
    ) -> list[VersionRecord]:
        statement = self.select_for_update_statement if lock else self.select_statement
        rows = await conn.fetch(statement, projection_name)
        return [_record(row) for row in rows]


def _record(row: Any) -> VersionRecord:
    return VersionRecord(
        projection_name=row[0],
        version=row[1],
        status=VersionStatus(row[2]),
        application_name=row[3],
        replay_until=row[4],
        created_at=row[5],
        switched_at=row[6],
    )
