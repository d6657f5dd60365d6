"""The counters view in PostgreSQL: a counts table beside the tracking table."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from uuid import UUID

from asyncsourcing.persistence import Tracking
from asyncsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
from asyncsourcing.postgres.bulk import copy_rows, insert_rows
from asyncsourcing.postgres.identifiers import qualified
from examples.dogschool.views import CountersView, DogsView, DogUpdate, merge


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


class PostgresDogs(PostgresCounters, DogsView):
    """Dogs in a table beside the counts: their id, name and tricks.

    :meth:`update_dogs` adds the batch's new dogs with COPY
    (:func:`~asyncsourcing.postgres.bulk.copy_rows`) and writes the others
    back in one pipeline (:func:`~asyncsourcing.postgres.bulk.insert_rows`),
    in the batch's transaction: while the view is rebuilt, most of a
    batch's dogs are new.
    """

    dog_columns = ("id", "name", "tricks")

    def __init__(self, datastore: PostgresDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        prefix = self.tracking_table_name.removesuffix("tracking")
        counts = qualified(self.datastore.schema, prefix + "counts")
        self.dogs_table_name = prefix + "dogs"
        self.check_identifier_length(self.dogs_table_name)
        table = qualified(self.datastore.schema, self.dogs_table_name)
        self.sql_create_statements.append(
            f"CREATE TABLE IF NOT EXISTS {table} "
            "(id uuid PRIMARY KEY, name text NOT NULL, tricks text[] NOT NULL)"
        )
        self.select_dogs_statement = (
            f"SELECT id, name, tricks FROM {table} WHERE id = ANY($1::uuid[])"
        )
        # Rows of different numbers of tricks cannot be unnested from one
        # two-dimensional array: insert_rows() sends them in one pipeline.
        self.upsert_dog_conflict = (
            "ON CONFLICT (id) "
            "DO UPDATE SET name = EXCLUDED.name, tricks = EXCLUDED.tricks"
        )
        self.add_counts_statement = (
            f"INSERT INTO {counts} SELECT * FROM unnest($1::text[], $2::bigint[]) "
            f"ON CONFLICT (name) DO UPDATE SET count = {counts}.count + EXCLUDED.count"
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
                new: list[tuple[UUID, str, list[str]]] = []
                known: list[tuple[UUID, str, list[str]]] = []
                for dog_id, (name, tricks) in merge(current, updates).items():
                    rows = known if dog_id in current else new
                    rows.append((dog_id, name, list(tricks)))
                # Only this projection's runners write here, one batch at a
                # time (each locks the tracking first): the dogs not found
                # are not in the table, and can be added with COPY.
                schema = self.datastore.schema
                await copy_rows(
                    connection,
                    self.dogs_table_name,
                    self.dog_columns,
                    new,
                    schema=schema,
                )
                await insert_rows(
                    connection,
                    self.dogs_table_name,
                    self.dog_columns,
                    known,
                    schema=schema,
                    on_conflict=self.upsert_dog_conflict,
                )
            if counts:
                await connection.execute(
                    self.add_counts_statement, list(counts), list(counts.values())
                )

    async def _select_dogs(
        self, connection: Any, dog_ids: list[UUID]
    ) -> dict[UUID, tuple[str, tuple[str, ...]]]:
        rows = await connection.fetch(self.select_dogs_statement, dog_ids)
        return {row["id"]: (row["name"], tuple(row["tricks"])) for row in rows}
