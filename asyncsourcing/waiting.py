"""Event-driven waiting for tracking positions.

A :class:`PositionBoard` holds, for one tracking table, the highest position
known to be recorded for each application name, and the tasks waiting for a
position to be reached. Backends feed it with :meth:`PositionBoard.advance`
(after their own commits, and when another process announces one), so a
waiter wakes the moment its position is recorded. Database reads are shared:
however many tasks wait, the board runs at most one query per application
name at a time.

Positions kept in partitions (:mod:`asyncsourcing.partitions`) are on the
same board: each partition's under its
:func:`~asyncsourcing.partitions.partition_key`, and the application's,
under its name, is the least of them, which the board works out as the
partitions advance once it knows how many there are
(:meth:`PositionBoard.advance_partitions`).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NamedTuple

from eventsourcing.persistence import WaitInterruptedError

from asyncsourcing.partitions import (
    PARTITION_SEPARATOR,
    describe_position,
    partition_key,
    split_partition_key,
)

__all__ = ["PositionBoard"]

logger = logging.getLogger(__name__)

FetchMax = Callable[[str], Awaitable[int | None]]


class _Waiter(NamedTuple):
    # A tuple, so the heap compares positions in C: waking ten thousand
    # waiters costs no Python-level comparisons.
    position: int
    seq: int
    future: asyncio.Future[None]


class PositionBoard:
    """Known tracking positions of one tracking table, and their waiters.

    Positions are kept under keys: an application's name, or a partition's
    :func:`~asyncsourcing.partitions.partition_key`. ``fetch_max(key)``
    reads the recorded position from the database (for an application with
    partitions, the least of theirs; the recorder then also tells the board
    theirs, with :meth:`advance_partitions`). ``before_fetch()``, when
    given, is awaited before the first read so that a backend can start
    listening for announcements before it reads
    (otherwise a commit between the read and the listen would be missed).
    ``poll_interval`` (seconds), when given, re-reads the positions that
    tasks are waiting for at that interval: a safety net for announcements
    that can be lost, never the path that sets the latency.
    """

    def __init__(
        self,
        fetch_max: FetchMax,
        *,
        before_fetch: Callable[[], Awaitable[None]] | None = None,
        poll_interval: float | None = None,
    ) -> None:
        self._fetch_max = fetch_max
        self._before_fetch = before_fetch
        self._poll_interval = poll_interval
        self._known: dict[str, int] = {}
        # The number of partitions of each application known to have them.
        self._partitions: dict[str, int] = {}
        self._fetched: set[str] = set()
        self._waiters: dict[str, list[_Waiter]] = {}
        self._fetches: dict[str, asyncio.Task[None]] = {}
        self._poller: asyncio.Task[None] | None = None
        self._seq = itertools.count()
        self._dead = 0
        self._closed = False

    def known(self, application_name: str) -> int | None:
        """The highest position this board knows to be recorded."""
        return self._known.get(application_name)

    def advance(self, application_name: str, position: int | None) -> None:
        """Record that ``position`` has been committed, waking its waiters.

        ``application_name`` may be a partition's key: the application's
        position then follows, if the board knows the number of partitions.
        """
        if position is None:
            return
        previous = self._record(application_name, position)
        if PARTITION_SEPARATOR in application_name:
            self._partition_advanced(application_name, previous)

    def advance_partitions(
        self, application_name: str, positions: Mapping[int, int | None]
    ) -> None:
        """Record the positions of all the partitions of ``application_name``,
        as read (None: a partition has none yet), and so their number; the
        application's position, the least of theirs, follows."""
        self._partitions[application_name] = len(positions)
        for partition, position in positions.items():
            if position is not None:
                self._record(partition_key(application_name, partition), position)
        self._advance_least(application_name)

    async def partitions(self, application_name: str) -> int | None:
        """The number of partitions of ``application_name``, or None if it
        has none (as far as is recorded).

        Read when not known (a read shared with those waiting for the
        application), unless the application has a position without.
        """
        count = self._partitions.get(application_name)
        if count is not None or application_name in self._known:
            return count
        # The read of the application's position tells the board the number.
        self._start_fetch(application_name)
        fetch = self._fetches.get(application_name)
        if fetch is not None:
            await asyncio.shield(fetch)
        return self._partitions.get(application_name)

    def _record(self, key: str, position: int) -> int | None:
        """Record ``position`` of ``key`` and wake its waiters; the position
        known before."""
        previous = self._known.get(key)
        if previous is None or position > previous:
            self._known[key] = position
        heap = self._waiters.get(key)
        while heap and heap[0].position <= position:
            waiter = heapq.heappop(heap)
            if waiter.future.done():
                self._dead = max(0, self._dead - 1)
            else:
                waiter.future.set_result(None)
        return previous

    def _partition_advanced(self, key: str, previous: int | None) -> None:
        application_name = key.rpartition(PARTITION_SEPARATOR)[0]
        if application_name not in self._partitions:
            # The partitions were claimed since the application was read (by
            # another process, maybe): read it again for those waiting for
            # it, which also tells the board their number.
            if self._has_live_waiters_for(application_name):
                self._start_fetch(application_name)
            return
        least = self._known.get(application_name)
        if least is not None and previous is not None and previous > least:
            return  # Another partition is behind: the least is unchanged.
        self._advance_least(application_name)

    def _advance_least(self, application_name: str) -> None:
        count = self._partitions[application_name]
        positions = [
            self._known.get(partition_key(application_name, partition))
            for partition in range(count)
        ]
        if positions and None not in positions:
            self._record(application_name, min(p for p in positions if p is not None))

    def refresh(self) -> None:
        """Re-read every position that tasks are waiting for.

        Backends call this when announcements may have been lost, for
        example after a listening connection was re-established.
        """
        for application_name, heap in self._waiters.items():
            if any(not w.future.done() for w in heap):
                self._start_fetch(application_name)

    def forget(self) -> None:
        """Drop what the board knows, so the next waiters read it again."""
        self._known.clear()
        self._fetched.clear()
        self._partitions.clear()

    async def wait(
        self,
        application_name: str,
        position: int,
        timeout: float,
        interrupt: asyncio.Event | None = None,
    ) -> None:
        """Return once ``position`` is recorded for ``application_name`` (or
        for a partition: its key).

        Raises the builtin :class:`TimeoutError` after ``timeout`` seconds,
        and :class:`WaitInterruptedError` when ``interrupt`` is set first.
        """
        if self._known.get(application_name, -1) >= position:
            return
        if interrupt is not None and interrupt.is_set():
            raise WaitInterruptedError
        loop = asyncio.get_running_loop()
        waiter = _Waiter(position, next(self._seq), loop.create_future())
        heapq.heappush(self._waiters.setdefault(application_name, []), waiter)
        if application_name not in self._fetched:
            self._start_fetch(application_name)
        self._start_poller()
        try:
            async with asyncio.timeout(timeout):
                if interrupt is None:
                    # Awaited directly (a timeout cancels it): a thousand
                    # waiters wake a thousand tasks and nothing else.
                    await waiter.future
                else:
                    await self._wait_or_interrupt(waiter.future, interrupt)
        except TimeoutError:
            split = split_partition_key(application_name)
            whose = (
                describe_position(application_name, None)
                if split is None
                else describe_position(*split)
            )
            msg = (
                f"Timed out waiting for notification {position} "
                f"from {whose} to be processed"
            )
            raise TimeoutError(msg) from None
        finally:
            if not waiter.future.done():
                waiter.future.cancel()
            if waiter.future.cancelled():
                self._discard()

    @staticmethod
    async def _wait_or_interrupt(
        future: asyncio.Future[None], interrupt: asyncio.Event
    ) -> None:
        interrupted = asyncio.ensure_future(interrupt.wait())
        awaited: list[asyncio.Future[Any]] = [future, interrupted]
        try:
            await asyncio.wait(awaited, return_when=asyncio.FIRST_COMPLETED)
        finally:
            interrupted.cancel()
        if not future.done():
            raise WaitInterruptedError
        future.result()  # Surfaces a failed database read.

    async def aclose(self) -> None:
        """Cancel the board's reads and fail its waiters; idempotent."""
        self._closed = True
        tasks = [*self._fetches.values()]
        if self._poller is not None:
            tasks.append(self._poller)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for heap in self._waiters.values():
            for waiter in heap:
                if not waiter.future.done():
                    waiter.future.set_exception(
                        WaitInterruptedError("the recorder was closed")
                    )
        self._waiters.clear()

    def _discard(self) -> None:
        # Removing from the middle of a heap costs O(n); a timed-out or
        # cancelled waiter stays until it surfaces or dead ones are the majority.
        self._dead += 1
        if self._dead > 64 and self._dead * 2 > self._count_waiters():
            for application_name, heap in self._waiters.items():
                self._waiters[application_name] = [
                    w for w in heap if not w.future.done()
                ]
                heapq.heapify(self._waiters[application_name])
            self._dead = 0

    def _has_live_waiters(self) -> bool:
        return any(not w.future.done() for heap in self._waiters.values() for w in heap)

    def _has_live_waiters_for(self, key: str) -> bool:
        return any(not w.future.done() for w in self._waiters.get(key, ()))

    def _count_waiters(self) -> int:
        return sum(len(heap) for heap in self._waiters.values())

    def _start_fetch(self, application_name: str) -> None:
        if self._closed:
            return
        running = self._fetches.get(application_name)
        if running is not None and not running.done():
            return
        task = asyncio.create_task(self._fetch(application_name))
        self._fetches[application_name] = task
        task.add_done_callback(
            lambda done: (
                self._fetches.pop(application_name, None)
                if self._fetches.get(application_name) is done
                else None
            )
        )

    async def _fetch(self, application_name: str) -> None:
        try:
            if self._before_fetch is not None:
                await self._before_fetch()
            position = await self._fetch_max(application_name)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            # Waiters re-raise what they were waiting on; a later waiter reads again.
            for waiter in self._waiters.pop(application_name, []):
                if waiter.future.done():
                    self._dead = max(0, self._dead - 1)
                else:
                    waiter.future.set_exception(error)
            return
        self._fetched.add(application_name)
        self.advance(application_name, position)

    def _start_poller(self) -> None:
        if self._poll_interval is None or self._closed:
            return
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll(self._poll_interval))

    async def _poll(self, interval: float) -> None:
        while self._has_live_waiters():
            await asyncio.sleep(interval)
            self.refresh()
