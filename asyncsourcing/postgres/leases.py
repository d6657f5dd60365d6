"""Leases of projections in PostgreSQL, and the fast path's advisory lock.

See :mod:`asyncsourcing.leases`. Times come from the database's clock
(``clock_timestamp()``), so the runners' clocks need not agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import asyncpg

from asyncsourcing.leases import (
    FencedError,
    Lease,
    Leases,
    LeaseState,
    Presence,
    SessionLock,
)
from asyncsourcing.postgres.errors import translate_errors
from asyncsourcing.postgres.identifiers import qualified

if TYPE_CHECKING:
    from asyncsourcing.postgres.datastore import PostgresConnection, PostgresDatastore

__all__ = ["PostgresLeases", "PostgresSessionLock"]

_COLUMNS = (
    "application_name, projection_name, owner, epoch, expires_at, acquired_at, "
    "holder_pid"
)

# A standby's wait for the advisory lock is a statement, which holds a
# snapshot (and so the cluster's vacuum horizon) while it waits: waiting
# in steps of this many seconds lets the horizon move on.
_LOCK_WAIT_STEP = 2.0


class PostgresLeases(Leases):
    """The ``asyncsourcing_leases`` table of a datastore's schema."""

    def __init__(self, datastore: PostgresDatastore) -> None:
        self.datastore = datastore
        table = qualified(datastore.schema, self.table_name)
        self.create_table_statement = (
            f"CREATE TABLE IF NOT EXISTS {table} ("
            "application_name text, projection_name text, owner text NOT NULL, "
            "epoch bigint NOT NULL, expires_at timestamptz NOT NULL, "
            "acquired_at timestamptz NOT NULL, holder_pid integer, "
            "PRIMARY KEY (application_name, projection_name))"
        )
        # Free, expired for $7 seconds, or held by a session lock whose
        # session is gone ($6: the caller has a lock's session too: the
        # projection's lock, which the owner cannot hold then, or its own
        # runner's lock for a partition). The session's end is the fact.
        self.acquire_statement = (
            f"INSERT INTO {table} AS lease ({_COLUMNS}) VALUES ($1, $2, $3, 1, "
            "clock_timestamp() + make_interval(secs => $4), clock_timestamp(), $5) "
            "ON CONFLICT (application_name, projection_name) DO UPDATE SET "
            "owner = excluded.owner, epoch = lease.epoch + 1, "
            "expires_at = excluded.expires_at, acquired_at = excluded.acquired_at, "
            "holder_pid = excluded.holder_pid "
            "WHERE lease.expires_at <= clock_timestamp() - make_interval(secs => $7) "
            "OR ($6 AND lease.holder_pid IS NOT NULL AND NOT EXISTS ("
            "SELECT FROM pg_stat_activity WHERE pid = lease.holder_pid)) "
            f"RETURNING {_COLUMNS}"
        )
        # An expired lease whose epoch has not moved is still the owner's:
        # nobody processed meanwhile, so renewing it late is safe.
        self.renew_statement = (
            f"UPDATE {table} SET expires_at = clock_timestamp() + "
            "make_interval(secs => $5), holder_pid = $6 "
            "WHERE application_name = $1 AND projection_name = $2 "
            f"AND owner = $3 AND epoch = $4 RETURNING {_COLUMNS}"
        )
        self.release_statement = (
            f"UPDATE {table} SET expires_at = clock_timestamp(), holder_pid = NULL "
            "WHERE application_name = $1 AND projection_name = $2 AND owner = $3"
        )
        self.read_statement = (
            f"SELECT {_COLUMNS} FROM {table} "
            "WHERE application_name = $1 AND projection_name = $2"
        )
        self.survey_statement = (
            f"SELECT {_COLUMNS}, expires_at <= clock_timestamp(), "
            "holder_pid IS NOT NULL AND NOT EXISTS (SELECT FROM pg_stat_activity "
            f"WHERE pid = lease.holder_pid) FROM {table} AS lease "
            "WHERE application_name = $1 AND projection_name = ANY($2::text[])"
        )
        self.fence_statement = (
            f"SELECT owner, epoch FROM {table} "
            "WHERE application_name = $1 AND projection_name = $2 FOR SHARE"
        )
        self.fence_out_statement = (
            f"UPDATE {table} SET epoch = epoch + 1 "
            "WHERE application_name = $1 AND projection_name = $2"
        )
        runners = qualified(datastore.schema, self.presence_table_name)
        self.create_presence_table_statement = (
            f"CREATE TABLE IF NOT EXISTS {runners} ("
            "application_name text, projection_name text, owner text, "
            "role text NOT NULL, seen_at timestamptz NOT NULL, "
            "expires_at timestamptz NOT NULL, "
            "PRIMARY KEY (application_name, projection_name, owner))"
        )
        self.announce_statements = (
            f"DELETE FROM {runners} WHERE application_name = $1 "
            "AND projection_name = $2 AND expires_at <= clock_timestamp()",
            f"INSERT INTO {runners} AS runner VALUES ($1, $2, $3, $4, "
            "clock_timestamp(), clock_timestamp() + make_interval(secs => $5)) "
            "ON CONFLICT (application_name, projection_name, owner) DO UPDATE "
            "SET role = excluded.role, seen_at = excluded.seen_at, "
            "expires_at = excluded.expires_at",
        )
        self.withdraw_statement = (
            f"DELETE FROM {runners} WHERE application_name = $1 "
            "AND projection_name = $2 AND owner = $3"
        )
        self.present_statement = (
            f"SELECT owner, role, seen_at FROM {runners} "
            "WHERE application_name = $1 AND projection_name = $2 "
            "AND expires_at > clock_timestamp() ORDER BY owner"
        )

    async def create_table(self) -> None:
        # Serialised with other processes' table creation: concurrent
        # CREATE TABLE IF NOT EXISTS can fail on pg_type's unique index.
        async with self.datastore.creating_tables() as conn:
            with translate_errors():
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
        return await self._write(
            self.acquire_statement,
            application_name,
            projection_name,
            owner,
            ttl,
            holder_pid,
            holder_pid is not None,
            grace,
        )

    async def renew(self, lease: Lease, ttl: float) -> Lease | None:
        return await self._write(
            self.renew_statement,
            lease.application_name,
            lease.projection_name,
            lease.owner,
            lease.epoch,
            ttl,
            lease.holder_pid,
        )

    async def release(
        self, application_name: str, projection_name: str, owner: str
    ) -> None:
        async with self.datastore.transaction(commit=True) as conn:
            with translate_errors():
                await conn.execute(
                    self.release_statement, application_name, projection_name, owner
                )

    async def read(self, application_name: str, projection_name: str) -> Lease | None:
        async with self.datastore.transaction() as conn:
            with translate_errors():
                row = await conn.fetchrow(
                    self.read_statement, application_name, projection_name
                )
        return None if row is None else Lease(*row)

    async def survey(
        self, application_name: str, projection_names: Sequence[str]
    ) -> list[LeaseState]:
        async with self.datastore.transaction() as conn:
            with translate_errors():
                rows = await conn.fetch(
                    self.survey_statement, application_name, list(projection_names)
                )
        return [LeaseState(Lease(*row[:7]), row[7], row[8]) for row in rows]

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
            with translate_errors():
                await conn.execute(forget, application_name, projection_name)
                await conn.execute(
                    record, application_name, projection_name, owner, role, ttl
                )

    async def withdraw(
        self, application_name: str, projection_name: str, owner: str
    ) -> None:
        async with self.datastore.transaction(commit=True) as conn:
            with translate_errors():
                await conn.execute(
                    self.withdraw_statement, application_name, projection_name, owner
                )

    async def present(
        self, application_name: str, projection_name: str
    ) -> list[Presence]:
        async with self.datastore.transaction() as conn:
            with translate_errors():
                rows = await conn.fetch(
                    self.present_statement, application_name, projection_name
                )
        return [Presence(*row) for row in rows]

    async def fence_out(
        self, conn: PostgresConnection, application_name: str, projection_name: str
    ) -> None:
        with translate_errors():
            await conn.execute(
                self.fence_out_statement, application_name, projection_name
            )

    async def check_fence(self, conn: PostgresConnection, lease: Lease) -> None:
        """Raise :class:`FencedError` unless ``lease`` still holds, in the
        transaction of ``conn``; a takeover waits until it ends."""
        with translate_errors():
            row = await conn.fetchrow(
                self.fence_statement, lease.application_name, lease.projection_name
            )
        FencedError.unless_held(lease, None if row is None else (row[0], row[1]))

    def session_lock(
        self, application_name: str, projection_name: str
    ) -> PostgresSessionLock:
        key = f"asyncsourcing lease {self.datastore.schema}/{application_name}/"
        return PostgresSessionLock(self.datastore, key + projection_name)

    async def _write(self, statement: str, *args: Any) -> Lease | None:
        async with self.datastore.transaction(commit=True) as conn:
            with translate_errors():
                row = await conn.fetchrow(statement, *args)
        return None if row is None else Lease(*row)


class PostgresSessionLock(SessionLock):
    """A session advisory lock, on a connection of its own (not pooled)."""

    def __init__(self, datastore: PostgresDatastore, key: str) -> None:
        self._datastore = datastore
        self.key = key
        """Hashed into the advisory lock's 64-bit key (``hashtextextended``)."""
        self._conn: asyncpg.Connection[Any] | None = None

    @property
    def pid(self) -> int | None:
        if self._conn is None or self._conn.is_closed():
            return None  # No session, so no lock: it ended with its session.
        return self._conn.get_server_pid()

    async def try_acquire(self) -> bool:
        conn = await self._connection()
        with translate_errors():
            held: bool = await conn.fetchval(
                "SELECT pg_try_advisory_lock(hashtextextended($1, 0))", self.key
            )
        return held

    async def acquire(self) -> None:
        conn = await self._connection()
        while True:
            try:
                with translate_errors():
                    await conn.execute(
                        "SELECT pg_advisory_lock(hashtextextended($1, 0))", self.key
                    )
                return
            except BaseException as error:
                if isinstance(error.__cause__, asyncpg.LockNotAvailableError):
                    continue  # One step of the wait is over: the next.
                # Cancelled mid-statement, the session's state is unknown.
                await self.aclose()
                raise

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close(timeout=1)
            except BaseException as error:
                conn.terminate()  # Not closed in time, or we are cancelled.
                if not isinstance(error, Exception):
                    raise

    async def _connection(self) -> asyncpg.Connection[Any]:
        if self._conn is None or self._conn.is_closed():
            settings = self._datastore.settings
            with translate_errors(connecting=True):
                conn = await asyncpg.connect(**settings.connect_kwargs(listen=True))
                try:
                    await conn.execute(f"SET lock_timeout = '{_LOCK_WAIT_STEP}s'")
                except BaseException:
                    conn.terminate()
                    raise
            self._conn = conn
        return self._conn
