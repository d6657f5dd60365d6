"""Leases of projections in an SQLite file, for runners in several processes.

See :mod:`asyncsourcing.leases`. Write transactions lock the whole file
(``BEGIN IMMEDIATE``), so the fence check of a view transaction needs no
lock of its own. The fast path: a lease whose owner's process, on this
host, has exited is taken over at once (:func:`has_exited_here`); otherwise
a takeover after a crash waits for the lease to expire.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from asyncsourcing.leases import (
    FencedError,
    Lease,
    Leases,
    LeaseState,
    Presence,
    has_exited_here,
)

if TYPE_CHECKING:
    import aiosqlite

    from asyncsourcing.sqlite.datastore import SQLiteDatastore

__all__ = ["SQLiteLeases"]

_COLUMNS = (
    "application_name, projection_name, owner, epoch, expires_at, acquired_at, "
    "holder_pid"
)
# The database's clock, in seconds since the epoch (SQLite 3.40 has no
# unixepoch('subsec')).
_NOW = "((julianday('now') - 2440587.5) * 86400.0)"


class SQLiteLeases(Leases):
    """The ``asyncsourcing_leases`` table of an SQLite file."""

    def __init__(self, datastore: SQLiteDatastore) -> None:
        self.datastore = datastore
        table = f'"{self.table_name}"'  # A fixed, plain identifier.
        self.create_table_statement = (
            f"CREATE TABLE IF NOT EXISTS {table} ("
            "application_name TEXT, projection_name TEXT, owner TEXT NOT NULL, "
            "epoch INTEGER NOT NULL, expires_at REAL NOT NULL, "
            "acquired_at REAL NOT NULL, holder_pid INTEGER, "
            "PRIMARY KEY (application_name, projection_name)) WITHOUT ROWID"
        )
        self.acquire_statement = (
            f"INSERT INTO {table} ({_COLUMNS}) "
            f"VALUES (?, ?, ?, 1, {_NOW} + ?, {_NOW}, ?) "
            "ON CONFLICT (application_name, projection_name) DO UPDATE SET "
            f"owner = excluded.owner, epoch = {table}.epoch + 1, "
            "expires_at = excluded.expires_at, acquired_at = excluded.acquired_at, "
            "holder_pid = excluded.holder_pid "
            f"WHERE {table}.expires_at <= {_NOW} - ? "
            f"OR ({table}.owner = ? AND {table}.epoch = ?) "
            f"RETURNING {_COLUMNS}"
        )
        # An expired lease whose epoch has not moved is still the owner's:
        # nobody processed meanwhile, so renewing it late is safe.
        self.renew_statement = (
            f"UPDATE {table} SET expires_at = {_NOW} + ?, holder_pid = ? "
            "WHERE application_name = ? AND projection_name = ? "
            f"AND owner = ? AND epoch = ? RETURNING {_COLUMNS}"
        )
        self.release_statement = (
            f"UPDATE {table} SET expires_at = {_NOW}, holder_pid = NULL "
            "WHERE application_name = ? AND projection_name = ? AND owner = ?"
        )
        self.read_statement = (
            f"SELECT {_COLUMNS} FROM {table} "
            "WHERE application_name = ? AND projection_name = ?"
        )
        # Followed by "IN (?, ...)", a parameter per name.
        self.survey_statement = (
            f"SELECT {_COLUMNS}, expires_at <= {_NOW} FROM {table} "
            "WHERE application_name = ? AND projection_name IN "
        )
        self.fence_statement = (
            f"SELECT owner, epoch FROM {table} "
            "WHERE application_name = ? AND projection_name = ?"
        )
        self.fence_out_statement = (
            f"UPDATE {table} SET epoch = epoch + 1 "
            "WHERE application_name = ? AND projection_name = ?"
        )
        runners = f'"{self.presence_table_name}"'
        self.create_presence_table_statement = (
            f"CREATE TABLE IF NOT EXISTS {runners} ("
            "application_name TEXT, projection_name TEXT, owner TEXT, "
            "role TEXT NOT NULL, seen_at REAL NOT NULL, expires_at REAL NOT NULL, "
            "PRIMARY KEY (application_name, projection_name, owner)) WITHOUT ROWID"
        )
        self.announce_statements = (
            f"DELETE FROM {runners} WHERE application_name = ? "
            f"AND projection_name = ? AND expires_at <= {_NOW}",
            f"INSERT INTO {runners} VALUES (?, ?, ?, ?, {_NOW}, {_NOW} + ?) "
            "ON CONFLICT (application_name, projection_name, owner) DO UPDATE "
            "SET role = excluded.role, seen_at = excluded.seen_at, "
            "expires_at = excluded.expires_at",
        )
        self.withdraw_statement = (
            f"DELETE FROM {runners} WHERE application_name = ? "
            "AND projection_name = ? AND owner = ?"
        )
        self.present_statement = (
            f"SELECT owner, role, seen_at FROM {runners} "
            "WHERE application_name = ? AND projection_name = ? "
            f"AND expires_at > {_NOW} ORDER BY owner"
        )

    async def create_table(self) -> None:
        async with self.datastore.transaction(commit=True) as conn:
            await conn.execute(self.create_table_statement)
            await conn.execute(self.create_presence_table_statement)

    async def acquire(
        self,
        application_name: str,
        projection_name: str,
        owner: str,
        ttl: float,
        *,
        holder_pid: int | None = None,
        grace: float = 0.0,
    ) -> Lease | None:
        async with self.datastore.transaction(commit=True) as conn:
            # Read and write under the file's write lock: the owner judged
            # gone is the one replaced.
            rows = list(
                await conn.execute_fetchall(
                    self.fence_statement, (application_name, projection_name)
                )
            )
            gone = rows[0] if rows and has_exited_here(rows[0][0]) else (None, None)
            rows = list(
                await conn.execute_fetchall(
                    self.acquire_statement,
                    (
                        application_name,
                        projection_name,
                        owner,
                        ttl,
                        holder_pid,
                        grace,
                        *gone,
                    ),
                )
            )
        return _lease(rows[0]) if rows else None

    async def renew(self, lease: Lease, ttl: float) -> Lease | None:
        return await self._write(
            self.renew_statement,
            (
                ttl,
                lease.holder_pid,
                lease.application_name,
                lease.projection_name,
                lease.owner,
                lease.epoch,
            ),
        )

    async def release(
        self, application_name: str, projection_name: str, owner: str
    ) -> None:
        async with self.datastore.transaction(commit=True) as conn:
            await conn.execute(
                self.release_statement, (application_name, projection_name, owner)
            )

    async def read(self, application_name: str, projection_name: str) -> Lease | None:
        async with self.datastore.transaction() as conn:
            rows = list(
                await conn.execute_fetchall(
                    self.read_statement, (application_name, projection_name)
                )
            )
        return _lease(rows[0]) if rows else None

    async def survey(
        self, application_name: str, projection_names: Sequence[str]
    ) -> list[LeaseState]:
        names = list(projection_names)
        statement = self.survey_statement + f"({', '.join('?' * len(names))})"
        async with self.datastore.transaction() as conn:
            rows = await conn.execute_fetchall(statement, (application_name, *names))
        # The owner is judged gone as acquire judges it (a released lease's
        # owner too: it has expired anyway).
        return [
            LeaseState(_lease(row), bool(row[7]), has_exited_here(row[2]))
            for row in rows
        ]

    async def announce(
        self,
        application_name: str,
        projection_name: str,
        owner: str,
        role: str,
        ttl: float,
    ) -> None:
        forget, record = self.announce_statements
        async with self.datastore.transaction(commit=True) as conn:
            await conn.execute(forget, (application_name, projection_name))
            await conn.execute(
                record, (application_name, projection_name, owner, role, ttl)
            )

    async def withdraw(
        self, application_name: str, projection_name: str, owner: str
    ) -> None:
        async with self.datastore.transaction(commit=True) as conn:
            await conn.execute(
                self.withdraw_statement, (application_name, projection_name, owner)
            )

    async def present(
        self, application_name: str, projection_name: str
    ) -> list[Presence]:
        async with self.datastore.transaction() as conn:
            rows = await conn.execute_fetchall(
                self.present_statement, (application_name, projection_name)
            )
        return [
            Presence(owner, role, datetime.fromtimestamp(seen_at, UTC))
            for owner, role, seen_at in rows
        ]

    async def fence_out(
        self, conn: aiosqlite.Connection, application_name: str, projection_name: str
    ) -> None:
        await conn.execute(
            self.fence_out_statement, (application_name, projection_name)
        )

    async def check_fence(self, conn: aiosqlite.Connection, lease: Lease) -> None:
        """Raise :class:`FencedError` unless ``lease`` still holds, in the
        transaction of ``conn`` (which has the file's write lock)."""
        rows = list(
            await conn.execute_fetchall(
                self.fence_statement, (lease.application_name, lease.projection_name)
            )
        )
        row = rows[0] if rows else None
        FencedError.unless_held(lease, None if row is None else (row[0], row[1]))

    async def _write(self, statement: str, parameters: tuple[Any, ...]) -> Lease | None:
        async with self.datastore.transaction(commit=True) as conn:
            rows = list(await conn.execute_fetchall(statement, parameters))
        return _lease(rows[0]) if rows else None


def _lease(row: Any) -> Lease:
    return Lease(
        application_name=row[0],
        projection_name=row[1],
        owner=row[2],
        epoch=row[3],
        expires_at=datetime.fromtimestamp(row[4], UTC),
        acquired_at=datetime.fromtimestamp(row[5], UTC),
        holder_pid=row[6],
    )
