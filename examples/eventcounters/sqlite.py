"""The event counters view in SQLite: a counters table beside the tracking table."""

from __future__ import annotations

from typing import Any

from asyncsourcing.persistence import Tracking
from asyncsourcing.sqlite import SQLiteDatastore, SQLiteTrackingRecorder
from examples.eventcounters.views import BulkEventCountersView


class SQLiteEventCounters(SQLiteTrackingRecorder, BulkEventCountersView):
    _created_event_counter_name = "CREATED_EVENTS"
    _subsequent_event_counter_name = "SUBSEQUENT_EVENTS"

    def __init__(self, datastore: SQLiteDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        # "tracking" gives "counters", "myview_tracking" "myview_counters".
        prefix = self.tracking_table_name.removesuffix("tracking")
        self.counters_table_name = prefix + "counters"
        # Checked as a plain identifier, so it can go into SQL unquoted.
        self.check_identifier_length(self.counters_table_name)
        table = self.counters_table_name
        self.sql_create_statements.append(
            f"CREATE TABLE IF NOT EXISTS {table} "
            "(counter_name TEXT PRIMARY KEY, counter INTEGER)"
        )
        self.select_counter_statement = (
            f"SELECT counter FROM {table} WHERE counter_name = ?"
        )
        self.incr_counter_statement = (
            f"INSERT INTO {table} VALUES (?, 1) ON CONFLICT (counter_name) "
            "DO UPDATE SET counter = counter + 1"
        )
        self.add_to_counter_statement = (
            f"INSERT INTO {table} VALUES (?, ?) ON CONFLICT (counter_name) "
            "DO UPDATE SET counter = counter + excluded.counter"
        )

    async def get_created_event_counter(self) -> int:
        return await self._select_counter(self._created_event_counter_name)

    async def get_subsequent_event_counter(self) -> int:
        return await self._select_counter(self._subsequent_event_counter_name)

    async def incr_created_event_counter(self, tracking: Tracking) -> None:
        await self._incr_counter(self._created_event_counter_name, tracking)

    async def incr_subsequent_event_counter(self, tracking: Tracking) -> None:
        await self._incr_counter(self._subsequent_event_counter_name, tracking)

    async def _select_counter(self, name: str) -> int:
        async with self.datastore.transaction(commit=False) as connection:
            rows = list(
                await connection.execute_fetchall(
                    self.select_counter_statement, (name,)
                )
            )
        return int(rows[0][0]) if rows else 0

    async def _incr_counter(self, name: str, tracking: Tracking) -> None:
        async with self.datastore.transaction(commit=True) as connection:
            await self.record_tracking(connection, tracking)
            await connection.execute(self.incr_counter_statement, (name,))

    async def add_to_counters(
        self, created: int, subsequent: int, tracking: Tracking
    ) -> None:
        # A zero is left out, so that a counter's row exists only once it
        # has counted something, as with incr_*_event_counter().
        rows = [
            (name, n)
            for name, n in (
                (self._created_event_counter_name, created),
                (self._subsequent_event_counter_name, subsequent),
            )
            if n
        ]
        async with self.datastore.transaction(commit=True) as connection:
            await self.record_tracking(connection, tracking)
            if rows:
                await connection.executemany(self.add_to_counter_statement, rows)
