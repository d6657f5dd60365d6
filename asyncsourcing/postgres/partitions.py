"""PostgreSQL's SQL of the partition positions beside a tracking table.

A batch of one partition locks that partition's row (``FOR UPDATE``), so
the partitions of an application are processed concurrently. Each position
written is announced on the tracking table's channel, as the tracking
table's are, with the partition in the payload: the datastore's
:class:`~asyncsourcing.postgres.listener.PostgresListener` wakes the
waiters of every process with it, without a query, on the LISTEN it
already has.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from asyncsourcing.persistence import PartitionTracking, partition_table_name
from asyncsourcing.postgres.datastore import tracking_channel_name
from asyncsourcing.postgres.dialect import TABLE_OPTIONS
from asyncsourcing.postgres.errors import translate_errors
from asyncsourcing.postgres.identifiers import qualified
from asyncsourcing.sql.dialects import PartitionRow

if TYPE_CHECKING:
    from asyncsourcing.postgres.datastore import PostgresConnection, PostgresDatastore

__all__ = ["PostgresPartitionDialect"]

_COLUMNS = '"partition", partitions, notification_id'


class PostgresPartitionDialect:
    """The statements of the partition positions beside the tracking table
    ``tracking_table_name`` of ``datastore``."""

    def __init__(self, datastore: PostgresDatastore, tracking_table_name: str) -> None:
        self.datastore = datastore
        self.tracking_table_name = tracking_table_name
        self.table_name = partition_table_name(tracking_table_name)
        self.table = table = qualified(datastore.schema, self.table_name)
        self._select_statement = (
            f"SELECT {_COLUMNS} FROM {table} WHERE application_name = $1"
        )
        self._read_tracking_statement = (
            "SELECT (SELECT MAX(notification_id) FROM "
            f"{qualified(datastore.schema, tracking_table_name)} "
            "WHERE application_name = $1), to_regclass($2) IS NOT NULL"
        )
        forward = f"({table}.notification_id IS NULL OR {table}.notification_id < $2)"
        update = (
            f"UPDATE {table} SET notification_id = $2 "
            f'WHERE application_name = $1 AND "partition" = $6 AND {forward}'
        )
        self._insert_statement = self._announced(
            f'{update} RETURNING "partition", notification_id', "notification_id"
        )
        # The same, but only from the position $7 (NULL: none yet).
        self._compare_and_set_statement = self._announced(
            f"{update} AND notification_id IS NOT DISTINCT FROM $7::bigint "
            'RETURNING "partition", notification_id',
            "notification_id",
        )
        # The rows are locked in order of partition first, so that two
        # transactions moving overlapping partitions never deadlock.
        self._advance_statement = self._announced(
            f"WITH locked AS (SELECT {_COLUMNS} FROM {table} "
            'WHERE application_name = $1 AND "partition" = ANY($6::integer[]) '
            'ORDER BY "partition" FOR UPDATE) '
            f"UPDATE {table} SET notification_id = marks.mark "
            "FROM unnest($6::integer[], $2::bigint[]) AS marks (p, mark), locked "
            f'WHERE {table}.application_name = $1 AND {table}."partition" = marks.p '
            'AND locked."partition" = marks.p '
            f"AND ({table}.notification_id IS NULL "
            f"OR {table}.notification_id < marks.mark) "
            f'RETURNING {table}."partition", {table}.partitions, '
            f"{table}.notification_id",
            _COLUMNS,
        )

    @staticmethod
    def _announced(update: str, columns: str) -> str:
        """``update`` (whose ``RETURNING`` gives at least the partition and
        the position), selecting ``columns`` of the rows it changed, each
        announced on the tracking table's channel ($3), to be delivered at
        commit; $4 and $5 are the schema and the tracking table's name, which
        the payload names, as the tracking table's do."""
        return (
            f"WITH recorded AS ({update}) "
            f"SELECT {columns}, pg_notify($3, json_build_object("
            "'schema', $4::text, 'table', $5::text, "
            "'application_name', $1::text, 'partition', \"partition\", "
            "'notification_id', notification_id)::text) FROM recorded"
        )

    async def create_table(self, conn: PostgresConnection) -> None:
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {self.table} ("
            "application_name text, "
            '"partition" integer, '
            "partitions integer, "
            "notification_id bigint, "
            f'PRIMARY KEY (application_name, "partition")){TABLE_OPTIONS}'
        )

    async def read_tracking(
        self, conn: PostgresConnection, application_name: str
    ) -> tuple[int | None, bool]:
        # A SELECT without FROM: one row.
        [row] = await conn.fetch(
            self._read_tracking_statement, application_name, self.table
        )
        return row[0], row[1]

    async def claim(
        self, conn: PostgresConnection, application_name: str, partitions: int
    ) -> list[PartitionRow]:
        with translate_errors():
            await conn.execute(
                f'INSERT INTO {self.table} (application_name, "partition", '
                "partitions) SELECT $1, p, $2 FROM generate_series(0, $2 - 1) AS p "
                'ON CONFLICT (application_name, "partition") DO NOTHING',
                application_name,
                partitions,
            )
        return await self.select(conn, application_name)

    async def select(
        self, conn: PostgresConnection, application_name: str
    ) -> list[PartitionRow]:
        rows = await conn.fetch(
            self._select_statement + ' ORDER BY "partition"', application_name
        )
        return [PartitionRow(row[0], row[1], row[2]) for row in rows]

    async def read(
        self, conn: PostgresConnection, application_name: str, partition: int
    ) -> PartitionRow | None:
        return await self._row(conn, "", application_name, partition)

    async def lock(
        self, conn: PostgresConnection, application_name: str, partition: int
    ) -> PartitionRow | None:
        return await self._row(conn, " FOR UPDATE", application_name, partition)

    async def _row(
        self,
        conn: PostgresConnection,
        suffix: str,
        application_name: str,
        partition: int,
    ) -> PartitionRow | None:
        with translate_errors():
            row = await conn.fetchrow(
                f'{self._select_statement} AND "partition" = $2{suffix}',
                application_name,
                partition,
            )
        return None if row is None else PartitionRow(row[0], row[1], row[2])

    async def insert(
        self, conn: PostgresConnection, tracking: PartitionTracking
    ) -> bool:
        return await self._update(conn, self._insert_statement, tracking)

    async def compare_and_set(
        self,
        conn: PostgresConnection,
        tracking: PartitionTracking,
        expected: int | None,
    ) -> bool:
        return await self._update(
            conn, self._compare_and_set_statement, tracking, expected
        )

    async def _update(
        self,
        conn: PostgresConnection,
        statement: str,
        tracking: PartitionTracking,
        *more: Any,
    ) -> bool:
        with translate_errors():
            row = await conn.fetchrow(
                statement,
                tracking.application_name,
                tracking.notification_id,
                *self._channel_args(),
                tracking.partition,
                *more,
            )
        return row is not None

    async def advance(
        self,
        conn: PostgresConnection,
        application_name: str,
        marks: Mapping[int, int],
    ) -> list[PartitionRow]:
        if not marks:
            return []
        partitions, positions = zip(*sorted(marks.items()), strict=True)
        with translate_errors():
            rows = await conn.fetch(
                self._advance_statement,
                application_name,
                list(positions),
                *self._channel_args(),
                list(partitions),
            )
        return [PartitionRow(row[0], row[1], row[2]) for row in rows]

    def _channel_args(self) -> tuple[str, str, str]:
        # $3, $4 and $5 of the announcing statements.
        return (
            tracking_channel_name(self.tracking_table_name),
            self.datastore.schema,
            self.tracking_table_name,
        )
