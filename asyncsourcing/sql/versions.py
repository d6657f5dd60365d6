"""The versions table of the SQL backends, written once (see
:mod:`asyncsourcing.versions`).

A backend subclasses :class:`SQLVersions` with its statements (placeholders,
types, clock) and three primitives: run a statement, fetch records, and
lock a projection's registrations. Everything is done in the datastore's
task-joined transactions, so a building version's locked read joins its
view transaction.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from datetime import datetime
from typing import Any, Generic

from asyncsourcing.sql.datastore import Conn, SQLDatastore
from asyncsourcing.versions import (
    ReadPositions,
    VersionRecord,
    Versions,
    VersionStatus,
    find_version,
)

__all__ = ["COLUMNS", "SQLVersions", "version_record"]

COLUMNS = (
    "projection_name, version, status, application_name, replay_until, "
    "created_at, switched_at"
)
"""The columns of every statement that reads records, in this order."""


def version_record(row: Any, timestamp: Callable[[Any], datetime]) -> VersionRecord:
    """The record of a row of :data:`COLUMNS`; ``timestamp`` reads the
    backend's stored times."""
    return VersionRecord(
        projection_name=row[0],
        version=row[1],
        status=VersionStatus(row[2]),
        application_name=row[3],
        replay_until=row[4],
        created_at=timestamp(row[5]),
        switched_at=None if row[6] is None else timestamp(row[6]),
    )


class SQLVersions(Versions, Generic[Conn]):
    """The control flow of the versions table; the SQL is the subclass's."""

    # The backend's statements: parameters in the order of the names.
    create_table_statements: tuple[str, ...]
    select_statement: str  # (projection_name)
    select_for_update_statement: str  # (projection_name)
    select_one_for_share_statement: str  # (projection_name, version)
    insert_statement: str  # (projection_name, version, status, application_name)
    retire_statement: str  # (projection_name)
    serve_statement: str  # (projection_name, version, replay_until)
    mark_statement: str  # (projection_name, version, replay_until)
    delete_statement: str  # (projection_name, version)

    def __init__(self, datastore: SQLDatastore[Conn]) -> None:
        self.datastore = datastore

    @abstractmethod
    async def _execute(self, conn: Conn, statement: str, *args: Any) -> None:
        """Run ``statement`` with ``args``."""

    @abstractmethod
    async def _fetch(
        self, conn: Conn, statement: str, *args: Any
    ) -> list[VersionRecord]:
        """The records that ``statement`` selects (:data:`COLUMNS`)."""

    async def _lock_registrations(self, conn: Conn, projection_name: str) -> None:
        """Serialise the registrations of ``projection_name``, so that two
        first versions do not both serve (nothing to do where write
        transactions are serial)."""

    async def create_table(self) -> None:
        async with self.datastore.creating_tables() as conn:
            for statement in self.create_table_statements:
                await self._execute(conn, statement)

    async def register(
        self, projection_name: str, version: int, application_name: str
    ) -> VersionRecord:
        async with self.datastore.transaction(commit=True) as conn:
            await self._lock_registrations(conn, projection_name)
            records = await self._fetch(conn, self.select_statement, projection_name)
            for record in records:
                if record.version == version:
                    return record
            status = VersionStatus.BUILDING if records else VersionStatus.SERVING
            await self._execute(
                conn,
                self.insert_statement,
                projection_name,
                version,
                status.value,
                application_name,
            )
            records = await self._fetch(conn, self.select_statement, projection_name)
        return find_version(records, projection_name, version)

    async def records(self, projection_name: str) -> list[VersionRecord]:
        async with self.datastore.transaction() as conn:
            return await self._fetch(conn, self.select_statement, projection_name)

    async def read_locked(
        self, projection_name: str, version: int
    ) -> VersionRecord | None:
        # Joins the task's write transaction: the lock lasts until it ends.
        async with self.datastore.transaction(commit=True) as conn:
            records = await self._fetch(
                conn, self.select_one_for_share_statement, projection_name, version
            )
        return records[0] if records else None

    async def switch(
        self, projection_name: str, version: int, old_position: ReadPositions
    ) -> VersionRecord:
        async with self.datastore.transaction(commit=True) as conn:
            records = await self._fetch(
                conn, self.select_for_update_statement, projection_name
            )
            record = find_version(records, projection_name, version)
            if record.status is not VersionStatus.SERVING:
                mark = self.greater(record.replay_until, await old_position(conn))
                await self._execute(conn, self.retire_statement, projection_name)
                await self._execute(
                    conn, self.serve_statement, projection_name, version, mark
                )
            records = await self._fetch(conn, self.select_statement, projection_name)
        return find_version(records, projection_name, version)

    async def mark_replay(
        self, projection_name: str, version: int, position: int | None
    ) -> None:
        async with self.datastore.transaction(commit=True) as conn:
            records = await self._fetch(
                conn, self.select_for_update_statement, projection_name
            )
            record = find_version(records, projection_name, version)
            mark = self.greater(record.replay_until, position)
            await self._execute(
                conn, self.mark_statement, projection_name, version, mark
            )

    async def forget(self, projection_name: str, version: int) -> None:
        async with self.datastore.transaction(commit=True) as conn:
            await self._execute(conn, self.delete_statement, projection_name, version)
