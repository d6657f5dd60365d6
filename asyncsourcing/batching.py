"""Tracking in batch transactions: checked per event, written once per batch.

A projection runner catching up processes many events inside one view
transaction (:meth:`~asyncsourcing.persistence.TrackingRecorder.batch_transaction`).
Tracking only moves forward, so within such a transaction only the last
position of each application needs writing: :class:`TrackingBatches` checks
each position as it comes (raising :class:`IntegrityError` at once, as the
write would) and writes the last one just before the transaction commits,
saving a database round trip per event.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Generic, TypeVar

from asyncsourcing.persistence import IntegrityError, Tracking

__all__ = ["TrackingBatches"]

Conn = TypeVar("Conn")


class _Batch:
    def __init__(self) -> None:
        self.latest: dict[str, int | None] = {}  # Recorded or pending.
        self.pending: dict[str, int] = {}


class TrackingBatches(Generic[Conn]):
    """The batch transactions open on a tracking recorder's connections.

    ``record(conn, tracking)`` writes tracking (raising
    :class:`IntegrityError` if it is not ahead) and ``read_max(conn,
    application_name)`` reads the recorded position, both in the
    transaction of ``conn``.
    """

    def __init__(
        self,
        record: Callable[[Conn, Tracking], Awaitable[None]],
        read_max: Callable[[Conn, str], Awaitable[int | None]],
    ) -> None:
        self._record = record
        self._read_max = read_max
        self._open: dict[Conn, _Batch] = {}

    @asynccontextmanager
    async def batch(
        self, transaction: AbstractAsyncContextManager[Conn]
    ) -> AsyncIterator[Conn]:
        """``transaction``, in which tracking is written once, before it commits."""
        async with transaction as conn:
            batch = self._open[conn] = _Batch()
            try:
                yield conn
                for application_name, position in batch.pending.items():
                    await self._record(conn, Tracking(application_name, position))
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
            batch.latest[name] = await self._read_max(conn, name)
        latest = batch.latest[name]
        if latest is not None and tracking.notification_id <= latest:
            msg = (
                f"Tracking notification ID {tracking.notification_id} not greater "
                f"than current max tracking ID {latest} for application '{name}'"
            )
            raise IntegrityError(msg)
        batch.latest[name] = batch.pending[name] = tracking.notification_id
        return True
