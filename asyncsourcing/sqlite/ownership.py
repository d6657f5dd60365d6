"""Which projection records which application's positions in which table of
an SQLite file.

Views of one application may share a file with it and with each other, and
eventsourcing's shared ``tracking`` table holds the positions of every
event-sourced projection of the file: two projections could then share a
tracking row unawares, each skipping the events that the other processed.
So a tracking recorder with an owner claims the rows it uses, in
:data:`TRACKING_OWNERS_TABLE` (asyncsourcing's own table, which
eventsourcing ignores), and a second projection claiming one fails with
:class:`TrackingConflictError`, naming both.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

import aiosqlite

from asyncsourcing.persistence import ProgrammingError
from asyncsourcing.sql.tracking import SQLTrackingRecorder
from asyncsourcing.sqlite.dialect import quote, table_exists
from asyncsourcing.sqlite.tracking import SHARED_TRACKING_TABLE

if TYPE_CHECKING:
    from asyncsourcing.sqlite.datastore import SQLiteDatastore

__all__ = [
    "TRACKING_OWNERS_TABLE",
    "TrackingConflictError",
    "TrackingOwnership",
    "TrackingUpgradeError",
]

TRACKING_OWNERS_TABLE = "asyncsourcing_tracking_owners"
"""Which projection records which application's positions in which table."""

_CREATE_OWNERS_TABLE = (
    f"CREATE TABLE IF NOT EXISTS {quote(TRACKING_OWNERS_TABLE)} ("
    "tracking_table TEXT, "
    "application_name TEXT, "
    "projection_name TEXT NOT NULL, "
    "claimed_at TEXT NOT NULL, "
    "PRIMARY KEY (tracking_table, application_name)) "
    "WITHOUT ROWID"
)


class TrackingConflictError(ProgrammingError):
    """Two projections would record one application's positions in one row.

    Each would then take the other's position for its own and skip events.
    The message names both projections, the table and the file.
    """


class TrackingUpgradeError(ProgrammingError):
    """A view's tracking table is new, but the shared ``tracking`` table of
    its file has a position for the application that no projection claims:
    most likely the view's own, recorded before SQLite views had tracking
    tables of their own. Processing from the start would apply events to
    the view twice, so the view does not start; the message says how to
    keep the position or to start afresh.
    """


class TrackingOwnership(SQLTrackingRecorder[aiosqlite.Connection]):
    """A tracking recorder that claims its tracking rows.

    The base of :class:`~asyncsourcing.sqlite.SQLiteTrackingRecorder`: it
    implements the recorder's hooks. Before the recorder reads a position of
    an application outside a write (:meth:`_before_read`), it claims the row
    in a transaction of its own; before it writes one
    (:meth:`_before_write`), in the write's transaction. A claim once made
    (or found to be this recorder's) is remembered.
    """

    datastore: SQLiteDatastore

    owner_name: str | None = None
    """The projection whose positions this recorder records, or None: the
    factory sets it to its environment's name. Without, nothing is claimed."""

    check_upgrade: bool = False
    """Whether to look for the view's position in eventsourcing's shared
    ``tracking`` table before starting an application afresh: see
    :class:`TrackingUpgradeError` (the factory sets it for views whose
    tracking table is named after them by default)."""

    def __init__(self, datastore: SQLiteDatastore, **kwargs: Any) -> None:
        # Applications whose row this recorder has claimed (or found its own).
        self._claimed: set[str] = set()
        super().__init__(datastore, **kwargs)

    async def _before_read(self, application_name: str) -> None:
        await self._claim(application_name)

    async def _before_write(
        self, conn: aiosqlite.Connection, application_name: str
    ) -> None:
        await self._claim_in(conn, application_name)

    async def _claim(self, application_name: str) -> None:
        """Claim the row of ``application_name`` for :attr:`owner_name`.

        Reads first: a claim already made costs no write transaction. Inside
        a transaction of the task it does nothing: recording tracking
        claims, in that transaction.
        """
        if (
            self.owner_name is None
            or application_name in self._claimed
            or self.datastore.in_transaction()
        ):
            return
        owner = await self.datastore.read(
            lambda conn: _owner(conn, self.tracking_table_name, application_name)
        )
        if owner is not None:
            self._check_owner(owner, application_name)
            self._claimed.add(application_name)
            return
        async with self.datastore.transaction(commit=True) as conn:
            await self._claim_in(conn, application_name)

    async def _claim_in(
        self, conn: aiosqlite.Connection, application_name: str
    ) -> None:
        """Claim, in the write transaction of ``conn``, which holds the
        file's write lock: the first projection to claim a row keeps it."""
        if self.owner_name is None or application_name in self._claimed:
            return
        await conn.execute(_CREATE_OWNERS_TABLE)
        owner = await _owner(conn, self.tracking_table_name, application_name)
        if owner is None:
            if self.check_upgrade:
                await self._check_not_upgraded(conn, application_name)
            await conn.execute(
                f"INSERT INTO {quote(TRACKING_OWNERS_TABLE)} (tracking_table, "
                "application_name, projection_name, claimed_at) VALUES (?, ?, ?, ?)",
                (
                    self.tracking_table_name,
                    application_name,
                    self.owner_name,
                    datetime.now(UTC).isoformat(),
                ),
            )
        else:
            self._check_owner(owner, application_name)
        self.datastore.call_after_commit(
            conn, partial(self._claimed.add, application_name)
        )

    def _check_owner(self, owner: str, application_name: str) -> None:
        if owner == self.owner_name:
            return
        if self.tracking_table_name == SHARED_TRACKING_TABLE:
            remedy = (
                f"give one of them a database file of its own "
                f"({_setting(self.owner_name, 'SQLITE_DBNAME')})"
            )
        else:
            remedy = (
                "give each projection a tracking table of its own ("
                f"{_setting(self.owner_name, 'SQLITE_TRACKING_TABLE')} names this "
                "one's) or a database file of its own "
                f"({_setting(self.owner_name, 'SQLITE_DBNAME')})"
            )
        msg = (
            f"Projection {self.owner_name!r} cannot record the positions of "
            f"application {application_name!r} in table "
            f"{self.tracking_table_name!r} of {self.datastore.db_name}: projection "
            f"{owner!r} records them there, and each would skip the events that "
            f"the other processed; {remedy}"
        )
        raise TrackingConflictError(msg)

    async def _check_not_upgraded(
        self, conn: aiosqlite.Connection, application_name: str
    ) -> None:
        """Raise :class:`TrackingUpgradeError` if this view would start
        ``application_name`` afresh while an unclaimed position of it is in
        the shared ``tracking`` table (see :attr:`check_upgrade`)."""
        shared = SHARED_TRACKING_TABLE
        if self.tracking_table_name == shared or not await table_exists(conn, shared):
            return
        if await self._read_max_tracking_id(conn, application_name) is not None:
            return  # The view has started with its own table.
        rows = list(
            await conn.execute_fetchall(
                f"SELECT notification_id FROM {quote(shared)} "
                "WHERE application_name = ?",
                (application_name,),
            )
        )
        if not rows:
            return
        owner = await _owner(conn, shared, application_name)
        if owner is not None and owner != self.owner_name:
            return  # Another projection's position (an event-sourced one's).
        position = rows[0][0]
        keep = _setting(self.owner_name, "SQLITE_TRACKING_TABLE")
        if owner is None:
            whose = (
                "which no projection claims: most likely this view's, recorded "
                "before SQLite views had tracking tables of their own"
            )
        else:
            whose = f"which this projection recorded there while {keep} said so"
        msg = (
            f"Projection {self.owner_name!r} has no position of application "
            f"{application_name!r} in its tracking table "
            f"{self.tracking_table_name!r} of {self.datastore.db_name}, but "
            f"eventsourcing's shared table {shared!r} there has position "
            f"{position} of {application_name!r}, {whose}. Not starting from "
            f"the beginning: to keep that position (and the view's tables), set "
            f"{keep}={shared}; if it is not this view's, start the projection it "
            f"belongs to first, or set {keep}={self.tracking_table_name} to "
            "process every event again"
        )
        raise TrackingUpgradeError(msg)


async def _owner(
    conn: aiosqlite.Connection, table: str, application_name: str
) -> str | None:
    """The projection that claims ``table``'s row of ``application_name``."""
    if not await table_exists(conn, TRACKING_OWNERS_TABLE):
        return None
    rows = list(
        await conn.execute_fetchall(
            f"SELECT projection_name FROM {quote(TRACKING_OWNERS_TABLE)} "
            "WHERE tracking_table = ? AND application_name = ?",
            (table, application_name),
        )
    )
    return str(rows[0][0]) if rows else None


def _setting(name: str | None, key: str) -> str:
    """The environment variable of ``key`` that configures ``name`` alone."""
    return f"{name.upper()}_{key}" if name else key
