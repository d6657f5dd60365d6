"""Dialects: a backend's SQL text, and how to run it.

The recorders of :mod:`asyncsourcing.sql` are written once; for every
statement on its tables a recorder asks its backend's dialect objects,
made for those tables. A dialect method given a connection (``Conn``, the
backend's connection type) runs in whatever transaction that connection is
in, and leaves committing to it; only :meth:`EventsDialect.insert_alone`
takes a connection of its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple, Protocol, TypeVar
from uuid import UUID

if TYPE_CHECKING:
    from asyncsourcing.leases import Lease, Leases
    from asyncsourcing.persistence import (
        Notification,
        ParkedEvent,
        PartitionTracking,
        StoredEvent,
        Tracking,
    )
    from asyncsourcing.versions import Versions

__all__ = [
    "Dialect",
    "EventsDialect",
    "PartitionDialect",
    "PartitionRow",
    "TrackingDialect",
]

Conn_contra = TypeVar("Conn_contra", contravariant=True)


class Dialect(Protocol[Conn_contra]):
    """What every recorder of a backend asks of it, whatever its tables."""

    def check_identifier(self, name: str) -> None:
        """Raise :class:`ProgrammingError` unless ``name`` can name a table
        of the backend, as it is (no truncation, no collision)."""
        ...

    async def execute_create(self, conn: Conn_contra, statement: str) -> None:
        """Run ``statement``, one of a recorder's ``sql_create_statements``,
        which makes something unless it exists."""
        ...


class EventsDialect(Protocol[Conn_contra]):
    """The SQL of one events table.

    The table either has notification ids (an application's) or not (an
    aggregate recorder's, such as the snapshots'); inserting into one with
    ids also wakes its subscribers, in the backend's way, once the insert
    has committed.
    """

    inserts_alone: bool
    """Whether :meth:`insert_alone` is worth calling: False where it would
    always return None (a backend may find that out on the way)."""

    def create_table_statements(self) -> list[str]:
        """The statements that make the table (and what goes with it)."""
        ...

    async def insert(
        self, conn: Conn_contra, stored_events: Sequence[StoredEvent]
    ) -> Sequence[int]:
        """Insert ``stored_events`` (not empty) in the transaction of
        ``conn``: their notification ids, in order, or ``[]`` for a table
        without. Raises :class:`IntegrityError` on a taken version."""
        ...

    async def insert_alone(
        self, stored_events: Sequence[StoredEvent]
    ) -> Sequence[int] | None:
        """Insert ``stored_events`` (not empty) in a transaction of their own,
        in the fewest round trips the backend allows, returning as
        :meth:`insert`; None, having done nothing, where the backend cannot
        this time (the recorder then opens a transaction and calls
        :meth:`insert`)."""
        ...

    async def select_events(
        self,
        conn: Conn_contra,
        originator_id: UUID | str,
        *,
        gt: int | None,
        lte: int | None,
        desc: bool,
        limit: int | None,
    ) -> Sequence[StoredEvent]:
        """The events of one aggregate sequence, as
        :meth:`~asyncsourcing.persistence.AggregateRecorder.select_events`."""
        ...

    async def select_notifications(
        self,
        conn: Conn_contra,
        *,
        start: int | None,
        limit: int,
        stop: int | None,
        topics: Sequence[str],
        inclusive_of_start: bool,
    ) -> Sequence[Notification]:
        """Notifications in order of id, as
        :meth:`~asyncsourcing.persistence.ApplicationRecorder.select_notifications`."""
        ...

    async def max_notification_id(self, conn: Conn_contra) -> int | None:
        """The largest notification id, or None."""
        ...


class TrackingDialect(Protocol[Conn_contra]):
    """The SQL of one tracking table: eventsourcing 9.5's single-row layout
    (one row per application name), and the dead-letter table beside it.

    Positions only move forward: :meth:`insert` and :meth:`compare_and_set`
    change nothing, and return False, where the recorded position is not
    behind the new one.
    """

    def create_table_statements(self) -> list[str]:
        """The statements that make the tracking table."""
        ...

    async def exists(self, conn: Conn_contra) -> bool:
        """Whether the tracking table exists (before it is created)."""
        ...

    async def set_aside_multi_row_table(
        self, conn: Conn_contra
    ) -> list[tuple[str, int]]:
        """Rename the table, one of an eventsourcing older than 9.5 (a row per
        position), to eventsourcing's name for its backup; returns each
        application's maximum, for the single-row table that replaces it."""
        ...

    async def insert_rows(
        self, conn: Conn_contra, rows: Sequence[tuple[str, int]]
    ) -> None:
        """Insert ``(application_name, position)`` rows into a table just made."""
        ...

    async def insert(self, conn: Conn_contra, tracking: Tracking) -> bool:
        """Record ``tracking`` if it is ahead of the recorded position (or
        none is): whether it was recorded. Announces it where the backend
        announces positions to other processes."""
        ...

    async def compare_and_set(
        self, conn: Conn_contra, tracking: Tracking, expected: int | None
    ) -> bool:
        """As :meth:`insert`, but only if the recorded position is still
        ``expected`` (None: no row)."""
        ...

    async def lock(self, conn: Conn_contra, application_name: str) -> int | None:
        """Lock the position of ``application_name`` until the transaction
        ends (runners of a projection take this lock first, one lock order),
        and return it; the lock exists before the row does."""
        ...

    async def read_max(self, conn: Conn_contra, application_name: str) -> int | None:
        """The recorded position of ``application_name``, or None."""
        ...

    async def create_parked_table(self, conn: Conn_contra, name: str) -> None:
        """Make the dead-letter table ``name`` unless it exists."""
        ...

    async def insert_parked(
        self, conn: Conn_contra, name: str, parked: ParkedEvent
    ) -> None:
        """Insert ``parked`` into the dead-letter table ``name``."""
        ...

    async def select_parked(
        self, conn: Conn_contra, name: str, application_name: str
    ) -> list[ParkedEvent]:
        """The rows of ``application_name`` in the dead-letter table ``name``,
        in order of id; ``[]`` when the table does not exist."""
        ...

    @property
    def partitions(self) -> PartitionDialect[Conn_contra]:
        """The SQL of the table of partition positions beside the tracking
        table (made on first use)."""
        ...

    @property
    def leases(self) -> Leases:
        """The leases of the projections whose views are in this database."""
        ...

    @property
    def versions(self) -> Versions:
        """The versions of the projections whose views are in this database."""
        ...

    async def drop_tables(self, conn: Conn_contra, tables: Sequence[str]) -> None:
        """Drop ``tables`` (names as the create statements write them) and
        the dead-letter table beside the tracking table, if they exist."""
        ...

    async def check_fence(self, conn: Conn_contra, lease: Lease) -> None:
        """Raise :class:`~asyncsourcing.leases.FencedError` unless ``lease``
        still holds, in the transaction of ``conn``."""
        ...


class PartitionRow(NamedTuple):
    """A row of a table of partition positions (for one application)."""

    partition: int
    partitions: int
    """The number of partitions of the application, the same in each row."""
    notification_id: int | None


class PartitionDialect(Protocol[Conn_contra]):
    """The SQL of the partition positions beside a tracking table.

    One row per partition of an application, made by :meth:`claim`, whose
    position only moves forward: :meth:`insert`, :meth:`compare_and_set` and
    :meth:`advance` change nothing where it is not behind (and nothing
    where there is no row). Each position written is announced where the
    backend announces positions to other processes, as those of the
    tracking table are. The table is made only by :meth:`create_table`, so
    that eventsourcing's tables stay as they are.
    """

    table_name: str
    """The table's name, as :func:`~asyncsourcing.persistence.partition_table_name`
    gives it."""

    table: str
    """The table's name as SQL writes it (quoted, qualified)."""

    async def create_table(self, conn: Conn_contra) -> None:
        """Make the table unless it exists."""
        ...

    async def read_tracking(
        self, conn: Conn_contra, application_name: str
    ) -> tuple[int | None, bool]:
        """The position of ``application_name`` in the tracking table (None:
        none), and whether the table of partition positions exists, in one
        query."""
        ...

    async def claim(
        self, conn: Conn_contra, application_name: str, partitions: int
    ) -> list[PartitionRow]:
        """Insert the rows of partitions 0 to ``partitions - 1`` of
        ``application_name`` that do not exist; then the rows of the
        application, in order of partition (those of others included, when
        another number was claimed before)."""
        ...

    async def select(
        self, conn: Conn_contra, application_name: str
    ) -> list[PartitionRow]:
        """The rows of ``application_name``, in order of partition."""
        ...

    async def read(
        self, conn: Conn_contra, application_name: str, partition: int
    ) -> PartitionRow | None:
        """The row of one partition, or None."""
        ...

    async def lock(
        self, conn: Conn_contra, application_name: str, partition: int
    ) -> PartitionRow | None:
        """:meth:`read`, locking the row until the transaction ends."""
        ...

    async def insert(self, conn: Conn_contra, tracking: PartitionTracking) -> bool:
        """Move the position of the partition of ``tracking`` forward to it
        if it is behind (or has none): whether it moved."""
        ...

    async def compare_and_set(
        self, conn: Conn_contra, tracking: PartitionTracking, expected: int | None
    ) -> bool:
        """As :meth:`insert`, but only if the recorded position is still
        ``expected``."""
        ...

    async def advance(
        self, conn: Conn_contra, application_name: str, marks: Mapping[int, int]
    ) -> list[PartitionRow]:
        """Move each partition of ``marks`` forward to its mark where it is
        behind (locking the rows in order of partition): the rows moved."""
        ...
