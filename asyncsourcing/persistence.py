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
from abc import ABC, abstractmethod
from collections.abc import Sequence
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
    "parked_table_name",
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


def parked_table_name(tracking_table_name: str) -> str:
    """The dead-letter table beside ``tracking_table_name``.

    ``x_tracking`` gives ``x_parked``, ``tracking`` gives ``parked``, and
    another name gets ``_parked`` appended.
    """
    if tracking_table_name == "tracking":
        return "parked"
    if tracking_table_name.endswith("_tracking"):
        return tracking_table_name.removesuffix("_tracking") + "_parked"
    return tracking_table_name + "_parked"


class TrackingBatch:
    """A batch transaction of a tracking recorder, as its ``async with`` gives it.

    :attr:`position` is the position of :attr:`application_name` recorded
    when the batch began, read under a lock of its tracking row that the
    batch holds until it ends: events up to it were processed by another
    runner and must not be processed again. None when no application was
    named, or nothing is recorded for it yet.
    """

    def __init__(self, application_name: str | None) -> None:
        self.application_name = application_name
        self.position: int | None = None


class TrackingRecorder(Recorder, ABC):
    """Records the positions of processed events, atomically with a view's update.

    :meth:`wait` is event-driven: backends feed the recorder's
    :class:`~asyncsourcing.waiting.PositionBoard` when tracking is committed.
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
        """The largest recorded position for ``application_name``, or None."""

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
    ) -> None:
        """Return once ``notification_id`` has been recorded for ``application_name``.

        Woken by the commit that records it, not by polling. Raises the builtin
        :class:`TimeoutError` after ``timeout`` seconds, and
        :class:`WaitInterruptedError` when ``interrupt`` is set first.
        Concurrent waiters share their database reads.
        """
        if notification_id is None:
            return
        board = self.position_board
        await board.wait(application_name, notification_id, timeout, interrupt)

    @property
    def position_board(self) -> PositionBoard:
        """The board through which this recorder's waiters are woken."""
        if self._position_board is None:
            self._position_board = self._construct_position_board()
        return self._position_board

    def _construct_position_board(self) -> PositionBoard:
        """Backends override this to share a board or to listen across processes."""
        return PositionBoard(self.max_tracking_id)

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
        self, application_name: str | None = None, fence: Lease | None = None
    ) -> AbstractAsyncContextManager[TrackingBatch] | None:
        """A transaction that the recorder's own transactions join, or None.

        A projection runner processes events inside such transactions, so
        that a batch of them commits together (the view's methods need no
        change) with its last position written once. With
        ``application_name``, that application's tracking row is locked
        first and its recorded position read: see :class:`TrackingBatch`.
        With ``fence``, the transaction raises
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
