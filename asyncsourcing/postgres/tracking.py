"""PostgreSQL's SQL of a tracking table, eventsourcing 9.5's single-row layout,
and of the dead-letter table beside it (that of the partition positions
beside it is in :mod:`asyncsourcing.postgres.partitions`).

Each recorded position is also announced on a channel named after the
tracking table (eventsourcing ignores it), whose payload names the schema,
table, application and position: the datastore's
:class:`~asyncsourcing.postgres.listener.PostgresListener` wakes waiters in
every process with it, without a query.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from asyncsourcing.persistence import ParkedEvent, Tracking, parked_table_name
from asyncsourcing.postgres.datastore import tracking_channel_name
from asyncsourcing.postgres.dialect import TABLE_OPTIONS, truncate_identifier
from asyncsourcing.postgres.errors import translate_errors
from asyncsourcing.postgres.identifiers import qualified, quote_identifier
from asyncsourcing.postgres.leases import PostgresLeases
from asyncsourcing.postgres.partitions import PostgresPartitionDialect
from asyncsourcing.postgres.versions import PostgresVersions

if TYPE_CHECKING:
    from asyncsourcing.leases import Lease
    from asyncsourcing.postgres.datastore import PostgresConnection, PostgresDatastore

__all__ = ["PostgresTrackingDialect"]


class PostgresTrackingDialect:
    """The statements of the tracking table ``table_name`` of ``datastore``."""

    def __init__(self, datastore: PostgresDatastore, table_name: str) -> None:
        self.datastore = datastore
        self.table_name = table_name
        # The datastore listens on it for its position boards.
        self.channel_name = tracking_channel_name(table_name)
        self.table = table = qualified(datastore.schema, table_name)
        self._insert_statement = self._upsert_statement(f"{table}.notification_id < $2")
        # The same, but only from the position $6 (NULL: from no row at all).
        self._compare_and_set_statement = self._upsert_statement(
            f"{table}.notification_id < $2 "
            f"AND {table}.notification_id IS NOT DISTINCT FROM $6::bigint"
        )
        # A lock that exists before the application's row does, taken first
        # by every runner's transaction: one lock order, so runners of one
        # projection wait for each other and never deadlock on the view's rows.
        self._lock_statement = (
            "SELECT notification_id FROM (SELECT pg_advisory_xact_lock("
            "hashtextextended($2 || '/' || $1, 0))) AS locked "
            f"LEFT JOIN {table} ON application_name = $1"
        )
        self._insert_row_statement = (
            f"INSERT INTO {table} VALUES ($1, $2) "
            "ON CONFLICT (application_name) DO NOTHING"
        )
        self._max_statement = (
            f"SELECT MAX(notification_id) FROM {table} WHERE application_name=$1"
        )
        self._leases: PostgresLeases | None = None
        self._versions: PostgresVersions | None = None
        self._partitions: PostgresPartitionDialect | None = None

    def _upsert_statement(self, condition: str) -> str:
        """Inserts or moves the row forward where ``condition`` holds, or
        changes nothing and returns no row; announces the new position, to
        be delivered at commit."""
        return (
            "WITH recorded AS ("
            f"INSERT INTO {self.table} VALUES ($1, $2) "
            "ON CONFLICT (application_name) DO UPDATE "
            f"SET notification_id = $2 WHERE {condition} "
            "RETURNING notification_id) "
            "SELECT notification_id, pg_notify($3, json_build_object("
            "'schema', $4::text, 'table', $5::text, "
            "'application_name', $1::text, 'notification_id', notification_id"
            ")::text) FROM recorded"
        )

    def create_table_statements(self) -> list[str]:
        return [
            f"CREATE TABLE IF NOT EXISTS {self.table} ("
            "application_name text, "
            "notification_id bigint, "
            "PRIMARY KEY "
            f"(application_name)){TABLE_OPTIONS}"
        ]

    async def exists(self, conn: PostgresConnection) -> bool:
        exists: bool = await conn.fetchval(
            "SELECT to_regclass($1) IS NOT NULL", self.table
        )
        return exists

    async def set_aside_multi_row_table(
        self, conn: PostgresConnection
    ) -> list[tuple[str, int]]:
        await conn.execute(
            "SELECT set_config('lock_timeout', $1, true)",
            f"{self.datastore.lock_timeout}s",
        )
        await conn.execute(f"LOCK TABLE {self.table} IN ACCESS EXCLUSIVE MODE")
        rows = await conn.fetch(
            f"SELECT application_name, MAX(notification_id) FROM {self.table} "
            "GROUP BY application_name"
        )
        # eventsourcing's name for the backup.
        backup = truncate_identifier(f"bkup1_{self.table_name}")
        await conn.execute(
            f"ALTER TABLE {self.table} RENAME TO {quote_identifier(backup)}"
        )
        return [(row[0], row[1]) for row in rows]

    async def insert_rows(
        self, conn: PostgresConnection, rows: Sequence[tuple[str, int]]
    ) -> None:
        await conn.executemany(self._insert_row_statement, rows)

    async def insert(self, conn: PostgresConnection, tracking: Tracking) -> bool:
        with translate_errors():
            row = await conn.fetchrow(
                self._insert_statement,
                tracking.application_name,
                tracking.notification_id,
                self.channel_name,
                self.datastore.schema,
                self.table_name,
            )
        return row is not None

    async def compare_and_set(
        self, conn: PostgresConnection, tracking: Tracking, expected: int | None
    ) -> bool:
        with translate_errors():
            row = await conn.fetchrow(
                self._compare_and_set_statement,
                tracking.application_name,
                tracking.notification_id,
                self.channel_name,
                self.datastore.schema,
                self.table_name,
                expected,
            )
        return row is not None

    async def lock(self, conn: PostgresConnection, application_name: str) -> int | None:
        with translate_errors():
            position: int | None = await conn.fetchval(
                self._lock_statement, application_name, self.table
            )
        return position

    async def read_max(
        self, conn: PostgresConnection, application_name: str
    ) -> int | None:
        position: int | None = await conn.fetchval(
            self._max_statement, application_name
        )
        return position

    async def create_parked_table(self, conn: PostgresConnection, name: str) -> None:
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {qualified(self.datastore.schema, name)} ("
            "application_name text, notification_id bigint, topic text, "
            "state bytea, error text, parked_at timestamptz, "
            "PRIMARY KEY (application_name, notification_id))"
        )

    async def insert_parked(
        self, conn: PostgresConnection, name: str, parked: ParkedEvent
    ) -> None:
        await conn.execute(
            f"INSERT INTO {qualified(self.datastore.schema, name)} (application_name, "
            "notification_id, topic, state, error, parked_at) "
            "VALUES ($1, $2, $3, $4, $5, $6)",
            parked.application_name,
            parked.notification_id,
            parked.topic,
            parked.state,
            parked.error,
            parked.parked_at,
        )

    async def select_parked(
        self, conn: PostgresConnection, name: str, application_name: str
    ) -> list[ParkedEvent]:
        table = qualified(self.datastore.schema, name)
        if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table):
            return []
        rows = await conn.fetch(
            "SELECT application_name, notification_id, topic, state, error, "
            f"parked_at FROM {table} WHERE application_name = $1 "
            "ORDER BY notification_id",
            application_name,
        )
        return [ParkedEvent(r[0], r[1], r[2], bytes(r[3]), r[4], r[5]) for r in rows]

    @property
    def partitions(self) -> PostgresPartitionDialect:
        if self._partitions is None:
            self._partitions = PostgresPartitionDialect(self.datastore, self.table_name)
        return self._partitions

    @property
    def leases(self) -> PostgresLeases:
        if self._leases is None:
            self._leases = PostgresLeases(self.datastore)
        return self._leases

    @property
    def versions(self) -> PostgresVersions:
        if self._versions is None:
            self._versions = PostgresVersions(self.datastore)
        return self._versions

    async def drop_tables(
        self, conn: PostgresConnection, tables: Sequence[str]
    ) -> None:
        parked = qualified(self.datastore.schema, parked_table_name(self.table_name))
        with translate_errors():
            for table in [*tables, parked]:
                # CASCADE: what a user made on the view (an index, a SQL
                # view) goes with it.
                await conn.execute(f"DROP TABLE IF EXISTS {table} CASCADE")

    async def check_fence(self, conn: PostgresConnection, lease: Lease) -> None:
        await self.leases.check_fence(conn, lease)
