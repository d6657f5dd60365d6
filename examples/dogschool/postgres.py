"""The counters view in PostgreSQL: a counts table beside the tracking table."""

from __future__ import annotations

from typing import Any

from asyncsourcing.persistence import Tracking
from asyncsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
from asyncsourcing.postgres.identifiers import qualified
from examples.dogschool.views import CountersView


class PostgresCounters(PostgresTrackingRecorder, CountersView):
    def __init__(self, datastore: PostgresDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        # "dogcounters_tracking" gives "dogcounters_counts".
        name = self.tracking_table_name.removesuffix("tracking") + "counts"
        self.check_identifier_length(name)
        table = qualified(self.datastore.schema, name)
        self.sql_create_statements.append(
            f"CREATE TABLE IF NOT EXISTS {table} (name text PRIMARY KEY, count bigint)"
        )
        self.select_statement = f"SELECT count FROM {table} WHERE name = $1"
        self.incr_statement = (
            f"INSERT INTO {table} VALUES ($1, 1) "
            f"ON CONFLICT (name) DO UPDATE SET count = {table}.count + 1"
        )

    async def get_count(self, name: str) -> int:
        async with self.datastore.transaction(commit=False) as connection:
            count: int | None = await connection.fetchval(self.select_statement, name)
        return count or 0

    async def incr_count(self, name: str, tracking: Tracking) -> None:
        async with self.datastore.transaction(commit=True) as connection:
            await self.record_tracking(connection, tracking)
            await connection.execute(self.incr_statement, name)
