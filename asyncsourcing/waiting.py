"""Event-driven waiting for tracking positions.

A :class:`PositionBoard` holds, for one tracking table, the highest position
known to be recorded for each application name, and the tasks waiting for a
position to be reached. Backends feed it with :meth:`PositionBoard.advance`
(after their own commits, and when another process announces one), so a
waiter wakes the moment its position is recorded. Database reads are shared:
however many tasks wait, the board runs at most one query per application
name at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from eventsourcing.persistence import WaitInterruptedError

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

    ``fetch_max(application_name)`` reads the recorded maximum from the
    database. ``before_fetch()``, when given, is awaited before the first read
    so that a backend can start listening for announcements before it reads
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
        """Record that ``position`` has been committed, waking its waiters."""
        if position is None:
            return
        if position > self._known.get(application_name, -1):
            self._known[application_name] = position
        heap = self._waiters.get(application_name)
        while heap and heap[0].position <= position:
            waiter = heapq.heappop(heap)
            if waiter.future.done():
                self._dead = max(0, self._dead - 1)
            else:
                waiter.future.set_result(None)

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

    async def wait(
        self,
        application_name: str,
        position: int,
        timeout: float,
        interrupt: asyncio.Event | None = None,
    ) -> None:
        """Return once ``position`` is recorded for ``application_name``.

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
            msg = (
                f"Timed out waiting for notification {position} "
                f"from application '{application_name}' to be processed"
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
