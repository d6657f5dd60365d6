"""The base class of subscriptions to an application sequence.

A backend's application recorder returns one of its subclasses from
``subscribe()``; it is also importable from :mod:`asyncsourcing.persistence`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Generic, Self, TypeVar

from eventsourcing.persistence import Notification, ProgrammingError

if TYPE_CHECKING:
    from asyncsourcing.persistence import ApplicationRecorder

__all__ = ["Subscription"]


TApplicationRecorder_co = TypeVar(
    "TApplicationRecorder_co", bound="ApplicationRecorder", covariant=True
)


class Subscription(AsyncIterator[Notification], Generic[TApplicationRecorder_co]):
    """Notifications of an application sequence: first those recorded, then new ones.

    Reads in batches of at most ``batch_size`` and holds one batch at a time,
    so a slow consumer never makes memory grow. Between batches it sleeps on
    an :class:`asyncio.Event` that backends set when events are recorded.
    Use it with ``async with``; :meth:`stop` ends the iteration.
    """

    batch_size = 500

    def __init__(
        self,
        recorder: TApplicationRecorder_co,
        gt: int | None = None,
        topics: Sequence[str] = (),
    ) -> None:
        self._recorder = recorder
        self._last_notification_id = gt
        self._topics = tuple(topics)
        self._buffer: deque[Notification] = deque()
        # Every notification up to here is yielded or in the buffer, those
        # that the topics filter out included: the next read starts here.
        self._read_up_to = gt
        self._last_read_was_full = False
        self.on_caught_up: Callable[[int], Awaitable[float | None]] | None = None
        """Awaited, when set, as the subscription (with topics) is about to
        wait for news, having yielded everything it read, with the position
        it has read up to when that is past the last notification it yielded:
        the notifications in between are all filtered out by the topics. So
        the caller has dealt with every notification of its topics up to
        that position. It may return a delay in seconds: it is then awaited
        again after that delay, news or not. What it raises comes out of
        ``__anext__``."""
        self._has_been_entered = False
        self._has_been_stopped = False
        self._has_been_notified = asyncio.Event()
        self._is_listening = False

    @property
    def recorder(self) -> TApplicationRecorder_co:
        return self._recorder

    @property
    def last_notification_id(self) -> int | None:
        """The id of the last notification yielded (or ``gt``)."""
        return self._last_notification_id

    async def __aenter__(self) -> Self:
        if self._has_been_entered:
            msg = "Already entered subscription context manager"
            raise ProgrammingError(msg)
        self._has_been_entered = True
        await self._start_listening()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        self.stop()
        await self.aclose()

    def stop(self) -> None:
        """End the iteration; a task waiting in ``__anext__`` stops at once."""
        self._has_been_stopped = True
        self._has_been_notified.set()

    @property
    def is_stopped(self) -> bool:
        return self._has_been_stopped

    async def aclose(self) -> None:
        """Stop and release what the subscription holds."""
        self.stop()
        if self._is_listening:
            self._is_listening = False
            await self._stop_listening()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Notification:
        while not self._has_been_stopped:
            if self._buffer:
                notification = self._buffer.popleft()
                self._last_notification_id = notification.id
                return notification
            if not self._is_listening:
                await self._start_listening()
            # Cleared before reading, so a commit during the read is not missed.
            self._has_been_notified.clear()
            head = await self._head()
            batch = await self._recorder.select_notifications(
                start=self._read_up_to or 0,
                limit=self.batch_size,
                topics=self._topics,
                inclusive_of_start=False,
            )
            self._last_read_was_full = len(batch) >= self.batch_size
            if batch:
                self._buffer.extend(batch)
                self._read_up_to = batch[-1].id
            if head is not None and not self._last_read_was_full:
                # Ids are committed in order (invariant 3): the read, after
                # the head was, found everything of the topics up to it.
                self._read_up_to = max(self._read_up_to or 0, head)
            if not batch:
                await self._wait_for_news_or_caught_up()
        raise StopAsyncIteration

    async def _head(self) -> int | None:
        """With topics, near the end: the last notification id, before reading."""
        if not self._topics or self._last_read_was_full:
            return None
        return await self._recorder.max_notification_id()

    async def _wait_for_news_or_caught_up(self) -> None:
        position = self._read_up_to
        delay: float | None = None
        if (
            self.on_caught_up is not None
            and position is not None
            and position > (self._last_notification_id or 0)
        ):
            delay = await self.on_caught_up(position)
        if delay is None:
            await self._wait_for_news()
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._wait_for_news()

    def take_ready(self, limit: int) -> list[Notification]:
        """Up to ``limit`` notifications that are already read, without waiting."""
        taken: list[Notification] = []
        while self._buffer and len(taken) < limit and not self._has_been_stopped:
            taken.append(self._buffer.popleft())
        if taken:
            self._last_notification_id = taken[-1].id
        return taken

    def notify(self) -> None:
        """Wake the subscription: new events may have been recorded."""
        self._has_been_notified.set()

    async def _wait_for_news(self) -> None:
        """Sleep until :meth:`notify` or :meth:`stop`; backends may add a poll."""
        await self._has_been_notified.wait()

    async def _start_listening(self) -> None:
        """Register for wake-ups; called before the first read."""
        self._is_listening = True

    async def _stop_listening(self) -> None:
        """Unregister from wake-ups."""
