"""The counters view in SQLite: a counts table beside the tracking table."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from uuid import UUID

from asyncsourcing.persistence import Tracking
from asyncsourcing.sqlite import SQLiteDatastore, SQLiteTrackingRecorder
from examples.dogschool.views import CountersView, DogsView, DogUpdate, merge


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


class SQLiteDogs(SQLiteCounters, DogsView):
    """Dogs in a table beside the counts: their id, name and tricks (a JSON array)."""

    def __init__(self, datastore: SQLiteDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        counts = self.tracking_table_name.removesuffix("tracking") + "counts"
        table = self.tracking_table_name.removesuffix("tracking") + "dogs"
        self.check_identifier_length(table)
        self.sql_create_statements.append(
            f"CREATE TABLE IF NOT EXISTS {table} "
            "(id TEXT PRIMARY KEY, name TEXT NOT NULL, tricks TEXT NOT NULL)"
        )
        # The ids as one JSON array parameter: one statement (prepared once)
        # for any number of them, and no limit on the number of parameters.
        self.select_dogs_statement = (
            f"SELECT id, name, tricks FROM {table} "
            "WHERE id IN (SELECT value FROM json_each(?))"
        )
        self.upsert_dog_statement = (
            f"INSERT INTO {table} VALUES (?, ?, ?) ON CONFLICT (id) "
            "DO UPDATE SET name = excluded.name, tricks = excluded.tricks"
        )
        self.add_count_statement = (
            f"INSERT INTO {counts} VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET count = count + excluded.count"
        )

    async def get_dog(self, dog_id: UUID) -> tuple[str, tuple[str, ...]] | None:
        async with self.datastore.transaction(commit=False) as connection:
            rows = await self._select_dogs(connection, [dog_id])
        return rows.get(dog_id)

    async def update_dogs(
        self,
        updates: Mapping[UUID, DogUpdate],
        counts: Mapping[str, int],
        tracking: Tracking,
    ) -> None:
        async with self.datastore.transaction(commit=True) as connection:
            await self.record_tracking(connection, tracking)
            if updates:
                current = await self._select_dogs(connection, list(updates))
                rows = [
                    (str(dog_id), name, json.dumps(tricks))
                    for dog_id, (name, tricks) in merge(current, updates).items()
                ]
                await connection.executemany(self.upsert_dog_statement, rows)
            if counts:
                await connection.executemany(
                    self.add_count_statement, list(counts.items())
                )

    async def _select_dogs(
        self, connection: Any, dog_ids: list[UUID]
    ) -> dict[UUID, tuple[str, tuple[str, ...]]]:
        ids = json.dumps([str(dog_id) for dog_id in dog_ids])
        rows = await connection.execute_fetchall(self.select_dogs_statement, (ids,))
        return {
            UUID(dog_id): (name, tuple(json.loads(tricks)))
            for dog_id, name, tricks in rows
        }
