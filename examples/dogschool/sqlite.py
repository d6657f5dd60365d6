"""The counters view in SQLite: a counts table beside the tracking table."""

from __future__ import annotations

from typing import Any

from asyncsourcing.persistence import Tracking
from asyncsourcing.sqlite import SQLiteDatastore, SQLiteTrackingRecorder
from examples.dogschool.views import CountersView


class SQLiteCounters(SQLiteTrackingRecorder, CountersView):
    def __init__(self, datastore: SQLiteDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        # "tracking" gives "counts", "dogcounters_tracking" "dogcounters_counts".
        table = self.tracking_table_name.removesuffix("tracking") + "counts"
        self.check_identifier_length(table)
        self.sql_create_statements.append(
            f"CREATE TABLE IF NOT EXISTS {table} (name TEXT PRIMARY KEY, count INTEGER)"
        )
        self.select_statement = f"SELECT count FROM {table} WHERE name = ?"
        self.incr_statement = (
            f"INSERT INTO {table} VALUES (?, 1) "
            "ON CONFLICT (name) DO UPDATE SET count = count + 1"
        )

    async def get_count(self, name: str) -> int:
        async with self.datastore.transaction(commit=False) as connection:
            rows = list(
                await connection.execute_fetchall(self.select_statement, (name,))
            )
        return int(rows[0][0]) if rows else 0

    async def incr_count(self, name: str, tracking: Tracking) -> None:
        async with self.datastore.transaction(commit=True) as connection:
            await self.record_tracking(connection, tracking)
            await connection.execute(self.incr_statement, (name,))
