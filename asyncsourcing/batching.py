"""Tracking in batch transactions: checked per event, written once per batch.

A projection runner processes events inside a view transaction of its own
(:meth:`~asyncsourcing.persistence.TrackingRecorder.batch_transaction`).
Tracking only moves forward, so within such a transaction only the last
position of each application needs writing: :class:`TrackingBatches` checks
each position as it comes (raising :class:`IntegrityError` at once, as the
write would) and writes the last one just before the transaction commits,
saving a database round trip per event.

Several runners of one projection may process the same events at once. So
that each event is applied exactly once, a batch opened for an application
first locks that application's tracking row (every runner of the projection
takes it first: one lock order, no deadlock) and reads the position under
the lock; the final write is a compare-and-set against that position, so a
batch that raced another one (when there was no row to lock yet) fails with
:class:`IntegrityError` and rolls back instead of applying events twice.

Positions kept in partitions (:class:`~asyncsourcing.persistence.PartitionTracking`)
are held and written alike, each partition's apart from the application's
and the other partitions': a batch opened for one partition locks that
partition's row only, so that the partitions of an application are
processed concurrently.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Generic, TypeVar

from asyncsourcing.leases import Lease
from asyncsourcing.persistence import (
    IntegrityError,
    PartitionTracking,
    Tracking,
    TrackingBatch,
    describe_tracking,
)

__all__ = ["PositionOf", "TrackingBatches"]

Conn = TypeVar("Conn")

PositionOf = tuple[str, int | None]
"""Whose position: an application's name, and a partition or None."""


def _position_of(tracking: Tracking) -> PositionOf:
    if isinstance(tracking, PartitionTracking):
        return tracking.application_name, tracking.partition
    return tracking.application_name, None


class _Batch(TrackingBatch):
    def __init__(self, application_name: str | None, partition: int | None) -> None:
        super().__init__(application_name, partition)
        self.started: dict[PositionOf, int | None] = {}  # Read when first needed.
        self.latest: dict[PositionOf, int | None] = {}  # Recorded or pending.
        # The last tracking of each position: it says which row to write.
        self.pending: dict[PositionOf, Tracking] = {}


class TrackingBatches(Generic[Conn]):
    """The batch transactions open on a tracking recorder's connections.

    ``lock(conn, application_name, partition)`` locks the application's
    tracking row (if it has one), or with a partition that partition's row,
    and returns its position; ``read_max(conn, application_name,
    partition)`` reads the position without locking; ``compare_and_set(conn,
    tracking, expected)`` moves the position of ``tracking`` (its
    application's, or its partition's) from ``expected`` to
    ``tracking.notification_id``, raising :class:`IntegrityError` if it is
    not ``expected`` any more. All three run in the transaction of ``conn``,
    as does ``check_fence(conn, lease)``, which raises
    :class:`~asyncsourcing.leases.FencedError` if the lease was taken over.
    """

    def __init__(
        self,
        *,
        lock: Callable[[Conn, str, int | None], Awaitable[int | None]],
        read_max: Callable[[Conn, str, int | None], Awaitable[int | None]],
        compare_and_set: Callable[[Conn, Tracking, int | None], Awaitable[None]],
        check_fence: Callable[[Conn, Lease], Awaitable[None]],
    ) -> None:
        self._lock = lock
        self._read_max = read_max
        self._compare_and_set = compare_and_set
        self._check_fence = check_fence
        self._open: dict[Conn, _Batch] = {}

    @asynccontextmanager
    async def batch(
        self,
        transaction: AbstractAsyncContextManager[Conn],
        application_name: str | None = None,
        fence: Lease | None = None,
        partition: int | None = None,
    ) -> AsyncIterator[TrackingBatch]:
        """``transaction``, in which tracking is written once, before it commits.

        With ``application_name``, the lease of ``fence`` (if given) is
        checked first, then that application's tracking row is locked (with
        ``partition``, that partition's row), and its position is the
        batch's :attr:`~TrackingBatch.position`.
        """
        if partition is not None and application_name is None:
            msg = "A batch of a partition needs the partition's application name"
            raise ValueError(msg)
        async with transaction as conn:
            batch = _Batch(application_name, partition)
            if fence is not None:
                await self._check_fence(conn, fence)
            if application_name is not None:
                whose = (application_name, partition)
                batch.position = await self._lock(conn, *whose)
                batch.started[whose] = batch.latest[whose] = batch.position
            self._open[conn] = batch
            try:
                yield batch
                for whose, tracking in batch.pending.items():
                    await self._compare_and_set(conn, tracking, batch.started[whose])
            finally:
                del self._open[conn]

    async def defer(self, conn: Conn, tracking: Tracking) -> bool:
        """Hold ``tracking`` for the batch of ``conn``; False outside a batch.

        Raises :class:`IntegrityError` when the position is not ahead of the
        recorded or pending one, as writing it would.
        """
        batch = self._open.get(conn)
        if batch is None:
            return False
        whose = _position_of(tracking)
        if whose not in batch.latest:
            position = await self._read_max(conn, *whose)
            batch.started[whose] = batch.latest[whose] = position
        latest = batch.latest[whose]
        if latest is not None and tracking.notification_id <= latest:
            msg = (
                f"Tracking notification ID {tracking.notification_id} not greater "
                f"than current max tracking ID {latest} for "
                f"{describe_tracking(tracking)}"
            )
            raise IntegrityError(msg)
        batch.latest[whose] = tracking.notification_id
        batch.pending[whose] = tracking
        return True
