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
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Generic, TypeVar

from asyncsourcing.leases import Lease
from asyncsourcing.persistence import IntegrityError, Tracking, TrackingBatch

__all__ = ["TrackingBatches"]

Conn = TypeVar("Conn")


class _Batch(TrackingBatch):
    def __init__(self, application_name: str | None) -> None:
        super().__init__(application_name)
        self.started: dict[str, int | None] = {}  # Read when first needed.
        self.latest: dict[str, int | None] = {}  # Recorded or pending.
        self.pending: dict[str, int] = {}


class TrackingBatches(Generic[Conn]):
    """The batch transactions open on a tracking recorder's connections.

    ``lock(conn, application_name)`` locks the application's tracking row
    (if it has one) and returns its position; ``read_max(conn,
    application_name)`` reads the position without locking;
    ``compare_and_set(conn, tracking, expected)`` moves the position from
    ``expected`` to ``tracking.notification_id``, raising
    :class:`IntegrityError` if it is not ``expected`` any more. All three run
    in the transaction of ``conn``, as does ``check_fence(conn, lease)``,
    which raises :class:`~asyncsourcing.leases.FencedError` if the lease
    was taken over.
    """

    def __init__(
        self,
        *,
        lock: Callable[[Conn, str], Awaitable[int | None]],
        read_max: Callable[[Conn, str], Awaitable[int | None]],
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
    ) -> AsyncIterator[TrackingBatch]:
        """``transaction``, in which tracking is written once, before it commits.

        With ``application_name``, that application's tracking row is locked
        first, and its position is the batch's :attr:`~TrackingBatch.position`;
        with ``fence``, the lease is checked next.
        """
        async with transaction as conn:
            batch = _Batch(application_name)
            if fence is not None:
                await self._check_fence(conn, fence)
            if application_name is not None:
                batch.position = await self._lock(conn, application_name)
                batch.started[application_name] = batch.position
                batch.latest[application_name] = batch.position
            self._open[conn] = batch
            try:
                yield batch
                for name, position in batch.pending.items():
                    await self._compare_and_set(
                        conn, Tracking(name, position), batch.started[name]
                    )
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
        name = tracking.application_name
        if name not in batch.latest:
            batch.started[name] = batch.latest[name] = await self._read_max(conn, name)
        latest = batch.latest[name]
        if latest is not None and tracking.notification_id <= latest:
            msg = (
                f"Tracking notification ID {tracking.notification_id} not greater "
                f"than current max tracking ID {latest} for application '{name}'"
            )
            raise IntegrityError(msg)
        batch.latest[name] = batch.pending[name] = tracking.notification_id
        return True
