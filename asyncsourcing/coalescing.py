"""Coalesced writes: concurrent inserts that arrive together share one transaction.

A write that finds no other in flight goes at once, so a lone writer waits
for nothing. Writes that arrive while one is in flight queue up, and the
next of them to run takes the whole queue into one transaction: one table
lock and one commit for many ``save()`` calls. A conflict in one of them
fails only that one (the backend retries the others without it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from asyncsourcing.persistence import StoredEvent

__all__ = ["BatchResult", "WriteCoalescer"]

BatchResult = Sequence[int] | BaseException
"""What one write of a batch came to: its notification ids, or its error."""

WriteBatch = Callable[[list[Sequence[StoredEvent]]], Awaitable[list[BatchResult]]]


@dataclass
class _Write:
    stored_events: Sequence[StoredEvent]
    result: asyncio.Future[Sequence[int]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class WriteCoalescer:
    """Runs ``write_batch`` for the writes queued while the previous batch ran.

    ``write_batch(writes)`` records the given writes atomically each, in as
    few transactions as it can, and returns a result per write: its
    notification ids or the error that failed it alone. If it raises, every
    write of the batch fails with that error (nothing of it was recorded).
    """

    def __init__(self, write_batch: WriteBatch) -> None:
        self._write_batch = write_batch
        self._queue: list[_Write] = []
        self._lock = asyncio.Lock()

    async def write(self, stored_events: Sequence[StoredEvent]) -> Sequence[int]:
        """Record ``stored_events`` atomically, with any writes that queue meanwhile."""
        write = _Write(stored_events)
        self._queue.append(write)
        try:
            async with self._lock:
                if not write.result.done():
                    batch, self._queue = self._queue, []
                    await self._run(batch)
        except asyncio.CancelledError:
            if write in self._queue:
                self._queue.remove(write)  # Not taken: nothing was written.
            else:
                # Taken by a batch: its outcome is no one's to retrieve.
                write.result.add_done_callback(_discard_outcome)
            raise
        return write.result.result()

    async def _run(self, batch: list[_Write]) -> None:
        try:
            results = await self._write_batch([w.stored_events for w in batch])
        except asyncio.CancelledError:
            # The leader was cancelled, and the transaction rolled back: the
            # others go first in the queue for the next leader.
            self._queue[:0] = [w for w in batch if not w.result.done()]
            raise
        except Exception as error:
            results = [error] * len(batch)
        for write, result in zip(batch, results, strict=True):
            if write.result.done():
                continue
            if isinstance(result, BaseException):
                write.result.set_exception(result)
            else:
                write.result.set_result(result)


def _discard_outcome(future: asyncio.Future[Sequence[int]]) -> None:
    if not future.cancelled():
        future.exception()
