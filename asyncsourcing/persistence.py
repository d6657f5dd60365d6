"""Async persistence interfaces: the recorders, and the value objects and errors.

The value objects (:class:`StoredEvent`, :class:`Notification`,
:class:`Tracking`, :class:`Recording`) and the PEP 249 errors are the very
objects of :mod:`eventsourcing.persistence`, so ``except IntegrityError``
catches the errors of both libraries. Everything that does IO is async.
:class:`Subscription` (:mod:`asyncsourcing.subscription`) and
:class:`InfrastructureFactory` (:mod:`asyncsourcing.factory`) are defined
in modules of their own and importable from here.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from eventsourcing.persistence import (
    DatabaseError,
    DataError,
    InfrastructureFactoryError,
    IntegrityError,
    InterfaceError,
    InternalError,
    Mapper,
    Notification,
    NotSupportedError,
    OperationalError,
    PersistenceError,
    ProgrammingError,
    Recording,
    StoredEvent,
    Tracking,
    WaitInterruptedError,
)

from asyncsourcing.factory import InfrastructureFactory
from asyncsourcing.partitions import (
    describe_position,
    partition_key,
    partition_of,
    split_partition_key,
)
from asyncsourcing.subscription import Subscription
from asyncsourcing.waiting import PositionBoard

if TYPE_CHECKING:
    from asyncsourcing.leases import Lease, Leases
    from asyncsourcing.versions import Versions

__all__ = [
    "AggregateRecorder",
    "ApplicationRecorder",
    "DataError",
    "DatabaseError",
    "InfrastructureFactory",
    "InfrastructureFactoryError",
    "IntegrityError",
    "InterfaceError",
    "InternalError",
    "Mapper",
    "NotSupportedError",
    "Notification",
    "OperationalError",
    "ParkedEvent",
    "PartitionTracking",
    "PersistenceError",
    "ProcessRecorder",
    "ProgrammingError",
    "Recorder",
    "Recording",
    "StoredEvent",
    "Subscription",
    "Tracking",
    "TrackingBatch",
    "TrackingRecorder",
    "WaitInterruptedError",
    "describe_tracking",
    "parked_table_name",
    "partition_table_name",
    "position_key",
]


class Recorder:
    """Base class of recorders.

    Constructing a recorder never does IO. Backends that keep tables create
    them with :meth:`create_table`, which is idempotent.
    """

    async def create_table(self) -> None:
        """Create the recorder's tables if they do not exist."""


class AggregateRecorder(Recorder, ABC):
    """Records and selects stored events in aggregate sequences."""

    @abstractmethod
    async def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """Write ``stored_events`` atomically.

        Raises :class:`IntegrityError`, recording nothing, when an event's
        originator version is already taken. Application recorders return
        the notification ids given to the events.
        """

    @abstractmethod
    async def select_events(
        self,
        originator_id: UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Sequence[StoredEvent]:
        """Read the stored events of one aggregate sequence."""


class ApplicationRecorder(AggregateRecorder):
    """Records events in aggregate sequences and in the application sequence."""

    @abstractmethod
    async def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Notification]:
        """Read up to ``limit`` notifications in order of their ids.

        Ids run from ``start`` (included unless ``inclusive_of_start`` is
        false) to ``stop`` (included); ``topics``, when not empty, keeps only
        the notifications whose topic is one of them.
        """

    @abstractmethod
    async def max_notification_id(self) -> int | None:
        """The largest notification id, or None when nothing is recorded."""

    @abstractmethod
    def subscribe(
        self, gt: int | None = None, topics: Sequence[str] = ()
    ) -> Subscription[ApplicationRecorder]:
        """Follow the application sequence from after ``gt``.

        Returns at once, without IO: the subscription reads when it is
        iterated. It first yields what is recorded, then waits for new events.
        """


@dataclass(frozen=True)
class ParkedEvent:
    """A notification that a projection could not process, kept with its error.

    ``state`` is the notification's stored state (as recorded: compressed or
    encrypted if the application's mapper does so).
    """

    application_name: str
    notification_id: int
    topic: str
    state: bytes
    error: str
    parked_at: datetime


@dataclass(frozen=True)
class PartitionTracking(Tracking):
    """The position of a processed event in one partition of a projection.

    Every event of ``partition`` (see
    :func:`~asyncsourcing.partitions.partition_of`) whose notification id is
    at most ``notification_id`` has been processed: the position may be
    that of an event of another partition, up to which the partition's
    worker has read. Views record it as they record a :class:`Tracking`.
    """

    partition: int


def position_key(tracking: Tracking) -> str:
    """The key of ``tracking``'s position on a
    :class:`~asyncsourcing.waiting.PositionBoard`: its application's name,
    or for a :class:`PartitionTracking` a
    :func:`~asyncsourcing.partitions.partition_key`."""
    if isinstance(tracking, PartitionTracking):
        return partition_key(tracking.application_name, tracking.partition)
    return tracking.application_name


def describe_tracking(tracking: Tracking) -> str:
    """``application 'name'``, or ``partition 3 of application 'name'``."""
    partition = tracking.partition if isinstance(tracking, PartitionTracking) else None
    return describe_position(tracking.application_name, partition)


def _beside(tracking_table_name: str, suffix: str) -> str:
    # "x_tracking" gives "x_<suffix>", "tracking" gives "<suffix>", and
    # another name gets "_<suffix>" appended.
    if tracking_table_name == "tracking":
        return suffix
    if tracking_table_name.endswith("_tracking"):
        return tracking_table_name.removesuffix("_tracking") + "_" + suffix
    return tracking_table_name + "_" + suffix


def parked_table_name(tracking_table_name: str) -> str:
    """The dead-letter table beside ``tracking_table_name``.

    ``x_tracking`` gives ``x_parked``, ``tracking`` gives ``parked``, and
    another name gets ``_parked`` appended.
    """
    return _beside(tracking_table_name, "parked")


def partition_table_name(tracking_table_name: str) -> str:
    """The table of partition positions beside ``tracking_table_name``.

    ``x_tracking`` gives ``x_partitions``, ``tracking`` gives
    ``partitions``, and another name gets ``_partitions`` appended.
    """
    return _beside(tracking_table_name, "partitions")


class TrackingBatch:
    """A batch transaction of a tracking recorder, as its ``async with`` gives it.

    :attr:`position` is the position of :attr:`application_name` recorded
    when the batch began, read under a lock of its tracking row that the
    batch holds until it ends: events up to it were processed by another
    runner and must not be processed again. None when no application was
    named, or nothing is recorded for it yet. With :attr:`partition`, the
    position and the lock are those of that partition of the application.
    """

    def __init__(
        self, application_name: str | None, partition: int | None = None
    ) -> None:
        self.application_name = application_name
        self.partition = partition
        self.position: int | None = None


class TrackingRecorder(Recorder, ABC):
    """Records the positions of processed events, atomically with a view's update.

    :meth:`wait` is event-driven: backends feed the recorder's
    :class:`~asyncsourcing.waiting.PositionBoard` when tracking is committed.

    A partitioned projection (see :mod:`asyncsourcing.partitions`) records
    a position per partition: its runner claims the partitions
    (:meth:`claim_partitions`), and its views record
    :class:`PartitionTracking` as they record :class:`Tracking`. The
    application's position (:meth:`max_tracking_id`) is then the least of
    the partitions' positions.
    """

    _position_board: PositionBoard | None = None

    @abstractmethod
    async def insert_tracking(self, tracking: Tracking) -> None:
        """Record ``tracking``.

        Raises :class:`IntegrityError`, changing nothing, when its position
        is not greater than the recorded maximum for its application.
        """

    @abstractmethod
    async def max_tracking_id(self, application_name: str) -> int | None:
        """The largest recorded position for ``application_name``, or None.

        For an application whose positions are kept in partitions, the least
        of theirs: None until each partition has one.
        """

    async def has_tracking_id(
        self, application_name: str, notification_id: int | None
    ) -> bool:
        """True if ``notification_id`` is None or has been reached."""
        if notification_id is None:
            return True
        max_tracking_id = await self.max_tracking_id(application_name)
        return max_tracking_id is not None and max_tracking_id >= notification_id

    async def wait(
        self,
        application_name: str,
        notification_id: int | None,
        timeout: float = 1.0,
        interrupt: asyncio.Event | None = None,
        *,
        originator_id: UUID | str | None = None,
    ) -> None:
        """Return once ``notification_id`` has been recorded for ``application_name``.

        Woken by the commit that records it, not by polling. Raises the builtin
        :class:`TimeoutError` after ``timeout`` seconds, and
        :class:`WaitInterruptedError` when ``interrupt`` is set first.
        Concurrent waiters share their database reads.

        Where the application's positions are kept in partitions, it waits
        for every partition to reach ``notification_id``; with
        ``originator_id``, only for the partition of that aggregate's events
        (which have then been processed up to ``notification_id``). Without
        partitions, ``originator_id`` changes nothing.
        """
        if notification_id is None:
            return
        board = self.position_board
        key = application_name
        if originator_id is not None:
            started = time.monotonic()
            # Known once read (the number is fixed): the first waiters of an
            # application share one read, later ones none.
            partitions = await board.partitions(application_name)
            if partitions is not None:
                partition = partition_of(originator_id, partitions)
                key = partition_key(application_name, partition)
            timeout = max(0.0, timeout - (time.monotonic() - started))
        await board.wait(key, notification_id, timeout, interrupt)

    @property
    def position_board(self) -> PositionBoard:
        """The board through which this recorder's waiters are woken."""
        if self._position_board is None:
            self._position_board = self._construct_position_board()
        return self._position_board

    def _construct_position_board(self) -> PositionBoard:
        """Backends override this to share a board or to listen across processes."""
        return PositionBoard(self._fetch_position)

    async def _fetch_position(self, key: str) -> int | None:
        """What the position board reads for ``key``: an application's
        position (:meth:`max_tracking_id`), or a partition's
        (:func:`~asyncsourcing.partitions.partition_key`)."""
        split = split_partition_key(key)
        if split is None:
            return await self.max_tracking_id(key)
        application_name, partition = split
        positions = await self.partition_positions(application_name)
        return positions.get(partition)

    def _partitions_read(
        self, application_name: str, positions: Mapping[int, int | None]
    ) -> None:
        """Tell the position board, if there is one, the positions just read
        of the partitions of ``application_name`` (and so their number):
        backends call it when they read them."""
        if positions and self._position_board is not None:
            self._position_board.advance_partitions(application_name, positions)

    # Partitions.

    async def claim_partitions(self, application_name: str, partitions: int) -> None:
        """Keep the positions of ``application_name`` in ``partitions`` partitions.

        Idempotent, and safe when runners in several processes claim at
        once. Raises :class:`~asyncsourcing.partitions.PartitionError` if
        they are kept in another number of partitions, or were recorded
        without partitions: a new number needs a new version of the
        projection.
        """
        msg = f"{type(self).__qualname__} cannot keep positions in partitions"
        raise NotImplementedError(msg)

    async def partition_positions(self, application_name: str) -> dict[int, int | None]:
        """The position of each partition of ``application_name`` (None where
        a partition has none yet); empty where it has no partitions."""
        return {}

    async def record_partition_marks(
        self,
        application_name: str,
        marks: Mapping[int, int],
        fences: Sequence[Lease] = (),
    ) -> None:
        """Move each partition of ``application_name`` in ``marks`` forward to
        its mark, if it is behind, in one transaction.

        What a runner records for partitions whose workers had nothing to
        process up to the mark: each has then been read up to it. With
        ``fences``, the transaction raises
        :class:`~asyncsourcing.leases.FencedError`, writing nothing, unless
        each of those leases still holds. Waiters are woken once it commits.
        Call it outside batch transactions.
        """
        msg = f"{type(self).__qualname__} cannot keep positions in partitions"
        raise NotImplementedError(msg)

    async def park(
        self, tracking: Tracking, topic: str, state: bytes, error: str
    ) -> None:
        """Record a notification that could not be processed, with ``tracking``.

        The dead letter and the tracking are recorded atomically (raising
        :class:`IntegrityError`, recording neither, when the position is not
        ahead), so the notification is not processed again. Backends keep
        dead letters in a table named by :func:`parked_table_name`, made on
        first use.
        """
        msg = f"{type(self).__qualname__} cannot park events"
        raise NotImplementedError(msg)

    async def parked(self, application_name: str) -> list[ParkedEvent]:
        """The parked notifications of ``application_name``, in order of id."""
        msg = f"{type(self).__qualname__} cannot park events"
        raise NotImplementedError(msg)

    def batch_transaction(
        self,
        application_name: str | None = None,
        fence: Lease | None = None,
        partition: int | None = None,
    ) -> AbstractAsyncContextManager[TrackingBatch] | None:
        """A transaction that the recorder's own transactions join, or None.

        A projection runner processes events inside such transactions, so
        that a batch of them commits together (the view's methods need no
        change) with its last position written once. With
        ``application_name``, that application's tracking row is locked
        first and its recorded position read: see :class:`TrackingBatch`;
        with ``partition`` too, that partition's row instead (partitions are
        processed concurrently). With ``fence``, the transaction raises
        :class:`~asyncsourcing.leases.FencedError` unless that lease still
        holds. None (the default) means the backend does not batch.
        """
        return None

    @property
    def leases(self) -> Leases | None:
        """The leases of projections whose views are in this database, or
        None where runners need no coordination (in memory)."""
        return None

    @property
    def versions(self) -> Versions | None:
        """The versions of projections whose views are in this database, or
        None where a view lives in its process only (in memory)."""
        return None

    async def drop_tables(self) -> None:
        """Drop the view's tables, its tracking with them (what ``asyncsourcing
        reset`` does); the next :meth:`create_table` makes them empty."""
        msg = f"{type(self).__qualname__} cannot drop its tables"
        raise NotImplementedError(msg)


class ProcessRecorder(TrackingRecorder, ApplicationRecorder, ABC):
    """Records new events atomically with the tracking of the processed event.

    ``insert_events(stored_events, tracking=tracking)`` records both or neither.
    """
