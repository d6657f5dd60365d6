"""The tracking recorder of the SQL backends, written once.

Positions are kept in eventsourcing 9.5's single-row layout: one row per
application name, beside a :data:`MIGRATION_APPLICATION_NAME` row that tells
eventsourcing the table is already single-row (a multi-row table of an
older eventsourcing is migrated as eventsourcing migrates it). The backend's
:class:`~asyncsourcing.sql.dialects.TrackingDialect` supplies the SQL; the
recorder holds the rest: the errors, the batch transactions of projection
runners, the fencing, the wake-ups of waiters after commit, and parking.

A partitioned projection's positions are kept in a table of their own
beside the tracking table (:func:`~asyncsourcing.persistence.partition_table_name`),
made when the projection's runner first claims its partitions: one row
per partition of an application, whose SQL the backend's
:class:`~asyncsourcing.sql.dialects.PartitionDialect` supplies.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from functools import partial
from typing import Any
from uuid import UUID

from asyncsourcing.batching import TrackingBatches
from asyncsourcing.leases import Lease, Leases
from asyncsourcing.partitions import (
    check_partitions,
    least_position,
    mismatch_error,
    unclaimed_error,
    unpartitioned_error,
)
from asyncsourcing.persistence import (
    IntegrityError,
    ParkedEvent,
    PartitionTracking,
    ProgrammingError,
    Tracking,
    TrackingBatch,
    TrackingRecorder,
    describe_tracking,
    parked_table_name,
    partition_table_name,
    position_key,
)
from asyncsourcing.sql.datastore import Conn, SQLDatastore
from asyncsourcing.sql.dialects import PartitionDialect, PartitionRow, TrackingDialect
from asyncsourcing.sql.recorder import SQLRecorder
from asyncsourcing.versions import Versions
from asyncsourcing.waiting import PositionBoard

__all__ = ["MIGRATION_APPLICATION_NAME", "SQLTrackingRecorder"]

# The name in "CREATE [UNLOGGED] TABLE [IF NOT EXISTS] name": plain or
# quoted, maybe qualified by a schema.
_NAME_PART = r'(?:"(?:[^"]|"")*"|[^\s."(]+)'
_CREATE_TABLE = re.compile(
    r"\s*CREATE\s+(?:UNLOGGED\s+)?TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?"
    rf"({_NAME_PART}(?:\s*\.\s*{_NAME_PART})?)",
    re.IGNORECASE,
)

MIGRATION_APPLICATION_NAME = "__migration__"
"""The row by which eventsourcing knows a tracking table is single-row."""


class SQLTrackingRecorder(SQLRecorder[Conn], TrackingRecorder):
    """Positions of processed events, one row per application name.

    A view subclasses the backend's tracking recorder: in ``__init__`` it
    adds its tables to :attr:`sql_create_statements`, and in its command
    methods it records tracking with its update, in one transaction::

        async with self.datastore.transaction(commit=True) as conn:
            await self.record_tracking(conn, tracking)
            ...  # The view's update, on conn.

    :meth:`wait` is woken once the position has committed, by this
    process's commits at once and by other processes' as the backend learns
    of them (see the backend's datastore).

    Two hooks let a backend do more around reading and writing positions:
    :meth:`_before_read` and :meth:`_before_write` (SQLite claims the
    tracking rows of an application for one projection there:
    :mod:`asyncsourcing.sqlite.ownership`).
    """

    def __init__(
        self, datastore: SQLDatastore[Conn], *, tracking_table_name: str, **kwargs: Any
    ) -> None:
        self.check_identifier_length(tracking_table_name)
        self.tracking_table_name = tracking_table_name
        self.tracking_dialect = self._construct_tracking_dialect(
            datastore, tracking_table_name
        )
        self.partition_table_name = partition_table_name(tracking_table_name)
        # A tracking table whose name leaves no room for the partitions'
        # table beside it (a PostgreSQL name near the length limit) works as
        # ever, without partitions: claiming them raises this.
        self._partition_table_error: ProgrammingError | None = None
        try:
            self.check_identifier_length(self.partition_table_name)
        except ProgrammingError as error:
            self._partition_table_error = error
        # Whether the partitions' table is known to exist (made or found).
        self._partition_table_exists = False
        # The number of partitions of each application known to have them:
        # fixed, so known for good once read.
        self._partition_counts: dict[str, int] = {}
        super().__init__(datastore, **kwargs)
        self._tracking_batches: TrackingBatches[Conn] = TrackingBatches(
            lock=self._lock_tracking,
            read_max=self._read_max_tracking_id,
            compare_and_set=self._compare_and_set_tracking,
            check_fence=self._check_fence,
        )

    def _construct_tracking_dialect(
        self, datastore: SQLDatastore[Conn], tracking_table_name: str
    ) -> TrackingDialect[Conn]:
        """The backend's SQL of the tracking table: a backend's recorder base
        class provides it."""
        raise NotImplementedError

    def _construct_create_table_statements(self) -> list[str]:
        return [
            *super()._construct_create_table_statements(),
            *self.tracking_dialect.create_table_statements(),
        ]

    async def _create_tables(self, conn: Conn) -> None:
        dialect = self.tracking_dialect
        exists = await dialect.exists(conn)
        migrated = (
            exists
            and await dialect.read_max(conn, MIGRATION_APPLICATION_NAME) is not None
        )
        maxima: list[tuple[str, int]] = []
        if exists and not migrated:
            # A multi-row table of an eventsourcing older than 9.5: kept as a
            # backup and replaced, as eventsourcing 9.5 does, by a single-row
            # table of each application's maximum.
            maxima = await dialect.set_aside_multi_row_table(conn)
        await super()._create_tables(conn)
        if not migrated:
            await dialect.insert_rows(conn, [(MIGRATION_APPLICATION_NAME, 1), *maxima])

    # Hooks.

    async def _before_read(self, application_name: str) -> None:
        """Awaited before :meth:`max_tracking_id` and :meth:`wait` read the
        position of ``application_name``, outside any transaction of theirs;
        does nothing here."""

    async def _before_write(self, conn: Conn, application_name: str) -> None:
        """Awaited in the write transaction of ``conn`` before a position of
        ``application_name`` is written; does nothing here."""

    # Recording.

    async def insert_tracking(self, tracking: Tracking) -> None:
        async with self.datastore.transaction(commit=True) as conn:
            await self.record_tracking(conn, tracking)

    async def record_tracking(self, conn: Conn, tracking: Tracking) -> None:
        """Record ``tracking`` in the transaction of ``conn``: what a view
        calls with its update.

        Raises :class:`IntegrityError` when the position is not ahead of the
        recorded one: the view's transaction then rolls back, its update
        with it. Waiters are woken once the transaction has committed, not
        before. In a :meth:`batch_transaction`, the position is checked at
        once but only the batch's last one is written, as the batch commits.
        A :class:`PartitionTracking` is the position of its partition, which
        must have been claimed (:meth:`claim_partitions`).
        """
        await self._insert_tracking(conn, tracking)

    async def _insert_tracking(self, conn: Conn, tracking: Tracking) -> None:
        """:meth:`record_tracking`, by eventsourcing's name, kept for the
        views that call it; :meth:`record_tracking` calls it, so that a
        subclass overriding it, as views written for eventsourcing may,
        changes both."""
        if not await self._tracking_batches.defer(conn, tracking):
            await self._write_tracking(conn, tracking)

    async def _write_tracking(self, conn: Conn, tracking: Tracking) -> None:
        await self._before_write(conn, tracking.application_name)
        if isinstance(tracking, PartitionTracking):
            written = await self.partition_dialect.insert(conn, tracking)
            if not written:
                # Behind, or never claimed: the latter raises its own error.
                await self._read_max_tracking_id(
                    conn, tracking.application_name, tracking.partition
                )
        else:
            written = await self.tracking_dialect.insert(conn, tracking)
        if not written:
            msg = (
                f"Tracking notification ID {tracking.notification_id} not greater "
                f"than the recorded one for {describe_tracking(tracking)} "
                f"(in {self._table_of(tracking)})"
            )
            raise IntegrityError(msg)
        self._advance_after_commit(conn, tracking)

    async def _compare_and_set_tracking(
        self, conn: Conn, tracking: Tracking, expected: int | None
    ) -> None:
        await self._before_write(conn, tracking.application_name)
        if isinstance(tracking, PartitionTracking):
            dialect = self.partition_dialect
            written = await dialect.compare_and_set(conn, tracking, expected)
        else:
            written = await self.tracking_dialect.compare_and_set(
                conn, tracking, expected
            )
        if not written:
            msg = (
                f"Tracking of {describe_tracking(tracking)} (in "
                f"{self._table_of(tracking)}) moved from {expected} while a batch "
                f"up to {tracking.notification_id} was processed: another runner "
                "processed some of its events"
            )
            raise IntegrityError(msg)
        self._advance_after_commit(conn, tracking)

    def _table_of(self, tracking: Tracking) -> str:
        if isinstance(tracking, PartitionTracking):
            return self.partition_table_name
        return self.tracking_table_name

    async def _lock_tracking(
        self, conn: Conn, application_name: str, partition: int | None = None
    ) -> int | None:
        if partition is None:
            return await self.tracking_dialect.lock(conn, application_name)
        row = await self.partition_dialect.lock(conn, application_name, partition)
        return self._claimed_position(application_name, partition, row)

    async def _read_max_tracking_id(
        self, conn: Conn, application_name: str, partition: int | None = None
    ) -> int | None:
        """The recorded position of ``application_name`` in the tracking
        table, or of its ``partition``, read on ``conn``."""
        if partition is None:
            return await self.tracking_dialect.read_max(conn, application_name)
        row = await self.partition_dialect.read(conn, application_name, partition)
        return self._claimed_position(application_name, partition, row)

    def _claimed_position(
        self, application_name: str, partition: int, row: PartitionRow | None
    ) -> int | None:
        if row is None:
            raise unclaimed_error(self._in_tables, application_name, partition)
        return row.notification_id

    async def _check_fence(self, conn: Conn, lease: Lease) -> None:
        await self.tracking_dialect.check_fence(conn, lease)

    def batch_transaction(
        self,
        application_name: str | None = None,
        fence: Lease | None = None,
        partition: int | None = None,
    ) -> AbstractAsyncContextManager[TrackingBatch]:
        """A write transaction that this view's own transactions join.

        A projection runner processes a batch of events in it, committing
        them (and their last tracking position) together. With
        ``application_name``, the application's position is locked first
        (see :class:`~asyncsourcing.batching.TrackingBatches`): runners of
        one projection process each event once. With ``partition`` too,
        that partition's position is locked instead (on PostgreSQL its row
        only: other partitions' batches go on at the same time).
        """
        return self._tracking_batches.batch(
            self.datastore.transaction(commit=True), application_name, fence, partition
        )

    # Partitions.

    @property
    def partition_dialect(self) -> PartitionDialect[Conn]:
        """The SQL of the partition positions (raising
        :class:`ProgrammingError` where the tracking table's name leaves no
        room for their table's)."""
        if self._partition_table_error is not None:
            raise self._partition_table_error
        return self.tracking_dialect.partitions

    @property
    def _in_tables(self) -> str:
        # Where the positions are, for messages.
        return f"in tables {self.tracking_table_name} and {self.partition_table_name}"

    async def create_partition_table(self) -> None:
        """Make the table of partition positions beside the tracking table,
        unless it exists (:meth:`claim_partitions` does)."""
        dialect = self.partition_dialect
        async with self.datastore.creating_tables() as conn:
            await dialect.create_table(conn)
        self._partition_table_exists = True

    async def claim_partitions(self, application_name: str, partitions: int) -> None:
        check_partitions(partitions)
        await self.create_partition_table()
        async with self.datastore.transaction(commit=True) as conn:
            await self._before_write(conn, application_name)
            position = await self._read_max_tracking_id(conn, application_name)
            if position is not None:
                raise unpartitioned_error(self._in_tables, application_name, position)
            rows = await self.partition_dialect.claim(
                conn, application_name, partitions
            )
            for row in rows:
                if row.partitions != partitions:
                    raise mismatch_error(
                        self._in_tables, application_name, row.partitions, partitions
                    )
        self._partitions_selected(application_name, rows)

    async def partition_positions(self, application_name: str) -> dict[int, int | None]:
        await self._before_read(application_name)
        _, positions = await self.datastore.read(
            lambda conn: self._read_positions(conn, application_name)
        )
        return positions

    async def record_partition_marks(
        self,
        application_name: str,
        marks: Mapping[int, int],
        fences: Sequence[Lease] = (),
    ) -> None:
        count = self._partition_counts.get(application_name)
        for partition in marks:
            if count is not None and not 0 <= partition < count:
                raise unclaimed_error(self._in_tables, application_name, partition)
        if not marks:
            return
        async with self.datastore.transaction(commit=True) as conn:
            for lease in fences:
                await self._check_fence(conn, lease)
            await self._before_write(conn, application_name)
            rows = await self.partition_dialect.advance(conn, application_name, marks)
            for row in rows:
                if row.notification_id is not None:
                    tracking = PartitionTracking(
                        application_name, row.notification_id, row.partition
                    )
                    self._advance_after_commit(conn, tracking)

    async def _read_positions(
        self, conn: Conn, application_name: str
    ) -> tuple[int | None, dict[int, int | None]]:
        """The position of ``application_name`` in the tracking table, and
        those of its partitions, read on ``conn``: one query where it has
        none of the latter, whose table is not read unless it exists."""
        if application_name not in self._partition_counts:
            if self._partition_table_error is not None:
                return await self._read_max_tracking_id(conn, application_name), {}
            read = self.partition_dialect.read_tracking
            position, table_exists = await read(conn, application_name)
            self._partition_table_exists |= table_exists
            # Claiming partitions refuses an application with a position:
            # it has none of theirs.
            if position is not None or not table_exists:
                return position, {}
        rows = await self.partition_dialect.select(conn, application_name)
        return None, self._partitions_selected(application_name, rows)

    def _partitions_selected(
        self, application_name: str, rows: Sequence[PartitionRow]
    ) -> dict[int, int | None]:
        """The positions of the partitions of ``application_name`` in ``rows``,
        as read, remembered (their number) and told to the position board."""
        positions = {row.partition: row.notification_id for row in rows}
        if positions:
            self._partition_counts[application_name] = len(positions)
            self._partitions_read(application_name, positions)
        return positions

    @property
    def leases(self) -> Leases:
        return self.tracking_dialect.leases

    @property
    def versions(self) -> Versions:
        return self.tracking_dialect.versions

    def created_tables(self) -> list[str]:
        """The tables that :attr:`sql_create_statements` create, as they
        name them (quoted, qualified): the view's tables and the tracking
        table, which :meth:`drop_tables` drops with the dead-letter table;
        and the table of partition positions, once it is known to exist.
        A view that makes tables otherwise overrides this."""
        tables = [
            match.group(1)
            for statement in self.sql_create_statements
            if (match := _CREATE_TABLE.match(statement))
        ]
        if self._partition_table_exists:
            tables.append(self.partition_dialect.table)
        return tables

    async def drop_tables(self) -> None:
        tables = self.created_tables()
        # The partitions' table, whether or not this recorder knows of it.
        if (
            self._partition_table_error is None
            and self.partition_dialect.table not in tables
        ):
            tables.append(self.partition_dialect.table)
        async with self.datastore.transaction(commit=True) as conn:
            await self.tracking_dialect.drop_tables(conn, tables)
        # A new number of partitions may be claimed now.
        self._partition_table_exists = False
        self._partition_counts.clear()
        if self._position_board is not None:
            self._position_board.forget()

    # Waking waiters.

    def _advance_after_commit(self, conn: Conn, tracking: Tracking) -> None:
        # In-process waiters learn the position from the commit itself.
        self.datastore.call_after_commit(
            conn,
            partial(
                self.datastore.advance_position_board,
                self.tracking_table_name,
                position_key(tracking),
                tracking.notification_id,
            ),
        )

    def _construct_position_board(self) -> PositionBoard:
        # The datastore's board of the table, shared by every recorder on it.
        return self.datastore.position_board(
            self.tracking_table_name, self._fetch_position
        )

    # Reading.

    async def max_tracking_id(self, application_name: str) -> int | None:
        await self._before_read(application_name)
        return await self.datastore.read(
            lambda conn: self.read_position(conn, application_name)
        )

    async def read_position(self, conn: Conn, application_name: str) -> int | None:
        """The position of ``application_name``, read on ``conn``: its
        tracking row's, or for a partitioned projection the least of its
        partitions' (every event up to it is processed)."""
        position, positions = await self._read_positions(conn, application_name)
        return least_position(positions) if positions else position

    async def wait(
        self,
        application_name: str,
        notification_id: int | None,
        timeout: float = 1.0,
        interrupt: asyncio.Event | None = None,
        *,
        originator_id: UUID | str | None = None,
    ) -> None:
        await self._before_read(application_name)
        await super().wait(
            application_name,
            notification_id,
            timeout,
            interrupt,
            originator_id=originator_id,
        )

    # Parking.

    @property
    def parked_table_name(self) -> str:
        """The dead-letter table of :meth:`park` (checked, unquoted)."""
        name = parked_table_name(self.tracking_table_name)
        self.check_identifier_length(name)
        return name

    async def park(
        self, tracking: Tracking, topic: str, state: bytes, error: str
    ) -> None:
        name = self.parked_table_name
        async with self.datastore.transaction(commit=True) as conn:
            # Made on first use: the tables of eventsourcing stay as they are.
            await self.tracking_dialect.create_parked_table(conn, name)
            await self.record_tracking(conn, tracking)
            parked = ParkedEvent(
                tracking.application_name,
                tracking.notification_id,
                topic,
                state,
                error,
                datetime.now(UTC),
            )
            await self.tracking_dialect.insert_parked(conn, name, parked)

    async def parked(self, application_name: str) -> list[ParkedEvent]:
        name = self.parked_table_name
        return await self.datastore.read(
            lambda conn: self.tracking_dialect.select_parked(
                conn, name, application_name
            )
        )
