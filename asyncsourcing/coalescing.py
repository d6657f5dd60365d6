"""Coalesced writes: concurrent inserts that arrive together share one transaction.

A write that finds no other in flight goes at once, in the caller's task,
so a lone writer waits for nothing and pays for no batch. Writes that arrive
while one is in flight queue up, and the next of them to run takes the whole
queue into one transaction: one table lock and one commit for many
``save()`` calls. A conflict in one of them fails only that one: the others
are then recorded one at a time. A batch goes on when the task that leads
it is cancelled: the other writes get its true outcome (a statement sent
may be committed whatever the client does).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

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
        self._inflight: set[asyncio.Future[Any]] = set()
        # The writes in write(), whatever they wait for.
        self._writes = 0

    async def write(self, stored_events: Sequence[StoredEvent]) -> Sequence[int]:
        """Record ``stored_events`` atomically, with any writes that queue meanwhile."""
        self._writes += 1
        try:
            if self._writes == 1:
                # Alone (none other in flight, queued, or handing the lock
                # on): recorded in this task, as a batch of its own would be,
                # but without the batch's task, futures and turns of the event
                # loop; a lone writer's every save comes this way. The writes
                # that arrive meanwhile queue for the next batch. None waits
                # for this one's outcome: a cancellation may interrupt it.
                async with self._lock:  # Free: taken at once.
                    return await self._insert(stored_events)
            return await self._write_in_batch(stored_events)
        finally:
            self._writes -= 1

    async def _write_in_batch(
        self, stored_events: Sequence[StoredEvent]
    ) -> Sequence[int]:
        write = _Write(stored_events)
        self._queue.append(write)
        try:
            async with self._lock:
                if write in self._queue:  # Not yet taken by a batch: lead one.
                    batch, self._queue = self._queue, []
                    await self._run(batch)
            # Taken by a batch (perhaps one whose leader was cancelled, and
            # which goes on without it): its outcome.
            return await asyncio.shield(write.result)
        except asyncio.CancelledError:
            if write in self._queue:
                self._queue.remove(write)  # Not taken: nothing was written.
            else:
                # Taken by a batch: its outcome is no one's to retrieve.
                write.result.add_done_callback(_discard_outcome)
            raise

    async def _run(self, batch: list[_Write]) -> None:
        # The batch runs to its end even if the leader is cancelled: once a
        # statement is sent, the server may commit it whatever the client
        # does, so the other writes must be told its true outcome (retrying
        # them would fail with IntegrityError events that were recorded).
        inserting = asyncio.ensure_future(
            self._insert_batch([w.stored_events for w in batch])
        )
        self._inflight.add(inserting)
        inserting.add_done_callback(self._inflight.discard)
        inserting.add_done_callback(lambda done: _deliver(batch, done))
        with contextlib.suppress(Exception):  # Delivered to each write.
            await asyncio.shield(inserting)

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


def _deliver(
    batch: list[_Write],
    inserting: asyncio.Future[list[Sequence[int] | BaseException]],
) -> None:
    if inserting.cancelled():  # Only when the event loop is torn down.
        for write in batch:
            write.result.cancel()
        return
    error = inserting.exception()
    results: list[Sequence[int] | BaseException] = (
        [error] * len(batch) if error is not None else inserting.result()
    )
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
