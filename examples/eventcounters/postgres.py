"""The event counters view in PostgreSQL: a counters table beside the tracking table."""

from __future__ import annotations

from typing import Any

from asyncsourcing.persistence import Tracking
from asyncsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
from asyncsourcing.postgres.identifiers import qualified
from examples.eventcounters.views import BulkEventCountersView


class PostgresEventCounters(PostgresTrackingRecorder, BulkEventCountersView):
    _created_event_counter_name = "CREATED_EVENTS"
    _subsequent_event_counter_name = "SUBSEQUENT_EVENTS"

    def __init__(self, datastore: PostgresDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        self.counters_table_name = self.tracking_table_name.replace("_tracking", "")
        self.check_identifier_length(self.counters_table_name)
        table = qualified(self.datastore.schema, self.counters_table_name)
        self.sql_create_statements.append(
            f"CREATE TABLE IF NOT EXISTS {table} "
            "(counter_name text PRIMARY KEY, counter bigint)"
        )
        self.select_counter_statement = (
            f"SELECT counter FROM {table} WHERE counter_name=$1"
        )
        self.incr_counter_statement = (
            f"INSERT INTO {table} VALUES ($1, 1) ON CONFLICT (counter_name) "
            f"DO UPDATE SET counter = {table}.counter + 1"
        )
        # Both counters in one statement (one round trip): the arrays are
        # zipped into rows, each added to its counter.
        self.add_to_counters_statement = (
            f"INSERT INTO {table} SELECT * FROM unnest($1::text[], $2::bigint[]) "
            f"ON CONFLICT (counter_name) "
            f"DO UPDATE SET counter = {table}.counter + EXCLUDED.counter"
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
        async with self.datastore.transaction(commit=False) as conn:
            counter: int | None = await conn.fetchval(
                self.select_counter_statement, name
            )
        return counter or 0

    async def _incr_counter(self, name: str, tracking: Tracking) -> None:
        async with self.datastore.transaction(commit=True) as conn:
            await self.record_tracking(conn, tracking)
            await conn.execute(self.incr_counter_statement, name)

    async def add_to_counters(
        self, created: int, subsequent: int, tracking: Tracking
    ) -> None:
        # A zero is left out, so that a counter's row exists only once it
        # has counted something, as with incr_*_event_counter().
        names, counts = [], []
        for name, n in (
            (self._created_event_counter_name, created),
            (self._subsequent_event_counter_name, subsequent),
        ):
            if n:
                names.append(name)
                counts.append(n)
        async with self.datastore.transaction(commit=True) as conn:
            await self.record_tracking(conn, tracking)
            if names:
                await conn.execute(self.add_to_counters_statement, names, counts)
