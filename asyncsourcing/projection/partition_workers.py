"""One generation of a partitioned runner: a reader, a worker per partition owned.

A :class:`Generation` runs while the runner's set of partitions stays the
same. Its reader follows the application's sequence once, from the lowest
position of the partitions it owns, and hands each event to its
partition's :class:`PartitionWorker`; the workers process their events
concurrently, each in view transactions of its own partition (fenced by
that partition's lease). Events of partitions owned elsewhere are passed
over.

A partition's position means "every event of the partition up to here is
processed", so it may be the id of another partition's event. After each
chunk it reads, the reader gives every worker a mark: the position it has
read up to. A worker records its mark with its next batch; the marks of
workers with nothing to process are recorded together, at most once every
``mark_interval`` seconds (:meth:`Generation.record_marks`), so that
``wait()`` for every partition returns without one write per partition and
event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from asyncsourcing.application import Application
from asyncsourcing.leases import FencedError, Lease
from asyncsourcing.partitions import partition_of
from asyncsourcing.persistence import Notification, TrackingRecorder
from asyncsourcing.projection.processing import Processor
from asyncsourcing.projection.subscription import ApplicationSubscription

__all__ = ["Generation", "PartitionFencedError", "PartitionWorker"]

logger = logging.getLogger("asyncsourcing.projection.runners")

QUEUE_BATCHES = 2
"""How many batches of events a worker's queue holds before the reader
waits for it: enough to keep it busy, not so many that a slow partition
holds the whole backlog in memory."""


class PartitionFencedError(FencedError):
    """A view transaction of a partition found its lease taken over."""

    def __init__(self, partition: int, error: FencedError) -> None:
        super().__init__(str(error))
        self.partition = partition


class PartitionWorker:
    """Processes the events of one partition, in the order they are handed.

    ``position`` is the partition's recorded position when the generation
    began: the reader hands only events after it. ``processed()`` is called
    after each batch (its mark may be recorded then).
    """

    def __init__(
        self,
        partition: int,
        position: int | None,
        processor: Processor,
        size: int,
        processed: Callable[[], None],
    ) -> None:
        self.partition = partition
        self.handed = position or 0
        """The last event handed to the worker (or its starting position)."""
        self.recorded = position or 0
        """The position known to be recorded for the partition."""
        self.mark = self.handed
        """The position the reader has read up to, past this worker's events."""
        self._processor = processor
        self._processed = processed
        self._queue: asyncio.Queue[Notification] = asyncio.Queue(size)
        self._max_batch = max(1, size // QUEUE_BATCHES)
        self._busy = False
        self._stopping = False

    @property
    def is_idle(self) -> bool:
        """True when every event handed to the worker has been processed."""
        return not self._busy and self._queue.empty()

    async def hand(self, notification: Notification) -> None:
        """Queue ``notification`` for processing (waits while the queue is full)."""
        await self._queue.put(notification)
        self.handed = notification.id

    def stop(self) -> bool:
        """Stop after the batch in hand; True if there is none (the caller
        may cancel :meth:`run` then: it only waits)."""
        self._stopping = True
        return not self._busy

    async def run(self) -> None:
        """Process what is handed, a batch of what is queued at a time, until
        stopped after a batch or cancelled; a fenced view transaction raises
        :class:`PartitionFencedError`."""
        while not self._stopping:
            first = await self._queue.get()
            self._busy = True
            try:
                batch = [first]
                while len(batch) < self._max_batch and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                try:
                    await self._processor.process_batch(batch)
                except FencedError as error:
                    raise PartitionFencedError(self.partition, error) from error
                self.recorded = max(self.recorded, batch[-1].id)
            finally:
                self._busy = False
            self._processed()


class Generation:
    """The reader and the workers of one set of owned partitions.

    ``processor(partition)`` makes the processor of a partition's worker,
    ``fence(partition)`` gives the partition's lease (None: no fencing), or
    raises :class:`FencedError` if the partition is not the runner's any
    more.
    """

    def __init__(
        self,
        app: Application[Any],
        tracking_recorder: TrackingRecorder,
        topics: Sequence[str],
        partitions: int,
        positions: Mapping[int, int | None],
        processor: Callable[[int], Processor],
        fence: Callable[[int], Lease | None],
        *,
        max_batch_size: int,
        mark_interval: float,
    ) -> None:
        self._app = app
        self._tracking_recorder = tracking_recorder
        self._partitions = partitions
        self._fence = fence
        self._mark_interval = mark_interval
        self._marked = asyncio.Event()
        size = max(2, max_batch_size * QUEUE_BATCHES)
        self.workers = {
            p: PartitionWorker(p, position, processor(p), size, self._marked.set)
            for p, position in positions.items()
        }
        start = min((w.handed for w in self.workers.values()), default=0)
        self._subscription = ApplicationSubscription(
            app, gt=start or None, topics=topics
        )
        self._subscription.subscription.on_caught_up = self._caught_up
        self._max_batch_size = max_batch_size
        self._reader: asyncio.Task[None] | None = None
        self._stopped = False

    def stop(self) -> None:
        """End the reading, and let :meth:`run` return once the workers have
        finished the batches in hand."""
        self._stopped = True
        self._subscription.stop()
        if self._reader is not None:
            # It holds no transaction; it may wait for a full queue.
            self._reader.cancel()

    async def run(self) -> None:
        """Read, process and record marks until stopped or failed.

        Returns when the reading ends (:meth:`stop`), once the workers have
        finished the batches in hand (what is queued is left: the next
        generation reads it again from the recorded positions). Raises the
        first error of the reader, a worker or the marks, cancelling the
        others. Nothing is left running.
        """
        async with self._subscription:
            reader = asyncio.create_task(self._read(), name="partitions reader")
            self._reader = reader
            if self._stopped:
                reader.cancel()
            marks = asyncio.create_task(self._record_marks(), name="partition marks")
            workers = {
                asyncio.create_task(w.run(), name=f"partition {p}"): w
                for p, w in self.workers.items()
            }
            tasks = [reader, marks, *workers]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task is reader and task.cancelled() and self._stopped:
                        continue  # Stopped while it waited for a queue.
                    task.result()  # The error, if any; else the reading ended.
                marks.cancel()
                for task, worker in workers.items():
                    if worker.stop():
                        task.cancel()  # Idle: it only waits for events.
                if workers:
                    await asyncio.wait(workers)
                for task in workers:
                    if not task.cancelled() and task.exception() is not None:
                        task.result()  # A batch in hand failed.
            finally:
                for task in tasks:
                    task.cancel()
                for task in tasks:
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task

    async def _read(self) -> None:
        notifications = self._subscription.subscription
        async for notification in notifications:
            chunk = [
                notification,
                *notifications.take_ready(self._max_batch_size - 1),
            ]
            for n in chunk:
                worker = self.workers.get(
                    partition_of(n.originator_id, self._partitions)
                )
                if worker is not None and n.id > worker.handed:
                    await worker.hand(n)
            self._mark_all(chunk[-1].id)

    async def _caught_up(self, position: int) -> float | None:
        """The subscription has read up to ``position`` (past events its
        topics filter out): every worker's mark moves there."""
        self._mark_all(position)
        return None

    def _mark_all(self, position: int) -> None:
        # Every event up to position has been handed: a worker that has
        # processed what it was handed has processed its partition up to it.
        for worker in self.workers.values():
            worker.mark = max(worker.mark, position)
        self._marked.set()

    async def _record_marks(self) -> None:
        """Record the marks of idle workers, at most once per interval."""
        loop = asyncio.get_running_loop()
        while True:
            await self._marked.wait()
            self._marked.clear()
            marks = {
                p: w.mark
                for p, w in self.workers.items()
                if w.mark > w.recorded and w.is_idle
            }
            if marks:
                began = loop.time()
                await self.record_marks(marks)
                await asyncio.sleep(max(0.0, began + self._mark_interval - loop.time()))
                # Busy workers may have gone idle meanwhile: look again.
                self._marked.set()

    async def record_marks(self, marks: Mapping[int, int]) -> None:
        """Record ``marks`` (partition: position) in one transaction, fenced
        by the partitions' leases."""
        try:
            fences = [lease for p in marks if (lease := self._fence(p)) is not None]
            await self._tracking_recorder.record_partition_marks(
                self._app.name, marks, fences
            )
        except FencedError as error:
            # Which partition's lease moved is not known: the first of them
            # stands for all, and the leadership reads them all again.
            raise PartitionFencedError(min(marks), error) from error
        for p, position in marks.items():
            worker = self.workers[p]
            worker.recorded = max(worker.recorded, position)
