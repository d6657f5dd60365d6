"""Coalesced writes: concurrent inserts that arrive together share one transaction.

A write that finds no other in flight goes at once, so a lone writer waits
for nothing. Writes that arrive while one is in flight queue up, and the
next of them to run takes the whole queue into one transaction: one table
lock and one commit for many ``save()`` calls. A conflict in one of them
fails only that one: the others are then recorded one at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from asyncsourcing.persistence import IntegrityError, StoredEvent

__all__ = ["WriteCoalescer"]

Insert = Callable[[Sequence[StoredEvent]], Awaitable[Sequence[int]]]


@dataclass
class _Write:
    stored_events: Sequence[StoredEvent]
    result: asyncio.Future[Sequence[int]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class WriteCoalescer:
    """Records the writes queued while a batch ran, in one call of ``insert``.

    ``insert(stored_events)`` records events atomically, in a transaction of
    its own, and returns their notification ids in order. When a batch raises
    :class:`IntegrityError`, its writes are recorded one at a time instead,
    so the conflict fails only the write that has it. Any other error fails
    every write of the batch (none of it was recorded).
    """

    def __init__(self, insert: Insert) -> None:
        self._insert = insert
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
            results = await self._insert_batch([w.stored_events for w in batch])
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

    async def _insert_batch(
        self, writes: list[Sequence[StoredEvent]]
    ) -> list[Sequence[int] | BaseException]:
        try:
            notification_ids = await self._insert([e for w in writes for e in w])
        except IntegrityError as error:
            if len(writes) == 1:
                return [error]
            return [await self._insert_alone(w) for w in writes]
        results: list[Sequence[int] | BaseException] = []
        for stored_events in writes:
            results.append(notification_ids[: len(stored_events)])
            notification_ids = notification_ids[len(stored_events) :]
        return results

    async def _insert_alone(
        self, stored_events: Sequence[StoredEvent]
    ) -> Sequence[int] | BaseException:
        try:
            return await self._insert(stored_events)
        except IntegrityError as error:
            return error


def _discard_outcome(future: asyncio.Future[Sequence[int]]) -> None:
    if not future.cancelled():
        future.exception()
