"""Subscriptions to an application sequence stored in SQLite."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from asyncsourcing.persistence import ApplicationRecorder, Subscription

if TYPE_CHECKING:
    from asyncsourcing.sqlite.notifier import Subscriber

__all__ = ["EventsWakeUps", "SQLiteSubscription"]


class EventsWakeUps(Protocol):
    """Where a subscription registers to be woken by commits to its table
    (within the process: see :mod:`asyncsourcing.sqlite.notifier`)."""

    def add_subscriber(self, subscriber: Subscriber) -> None:
        """Wake ``subscriber`` when events commit to the table."""
        ...

    def discard_subscriber(self, subscriber: Subscriber) -> None:
        """Wake ``subscriber`` no more."""
        ...


class SQLiteSubscription(Subscription[ApplicationRecorder]):
    """Catches up with the recorded events, then waits for new ones.

    Within the process, a commit to the same events table through any
    datastore on the same database wakes the subscription at once, through
    ``wake_ups``. Commits by other processes are found by polling, the only
    way SQLite offers: the subscription re-reads after ``poll_interval``
    seconds of quiet (setting ``SQLITE_POLL_INTERVAL``), doubling the
    interval after each poll that finds nothing, up to :attr:`max_backoff`
    times the setting, and going back to it when events arrive. With
    ``poll_interval`` None (a private in-memory database, which nothing
    outside its datastore can write to), it does not poll.
    """

    max_backoff = 8
    """The longest wait between polls, as a multiple of the poll interval."""

    def __init__(
        self,
        recorder: ApplicationRecorder,
        gt: int | None = None,
        topics: Sequence[str] = (),
        *,
        wake_ups: EventsWakeUps,
        poll_interval: float | None,
    ) -> None:
        super().__init__(recorder, gt=gt, topics=topics)
        self._wake_ups = wake_ups
        self._poll_interval = poll_interval
        self._poll_delay = poll_interval
        self._position_at_last_wait = gt

    async def _start_listening(self) -> None:
        await super()._start_listening()
        self._wake_ups.add_subscriber(self)

    async def _stop_listening(self) -> None:
        self._wake_ups.discard_subscriber(self)

    async def _wait_for_news(self) -> None:
        if self._poll_interval is None or self._poll_delay is None:
            await super()._wait_for_news()
            return
        if self._last_notification_id != self._position_at_last_wait:
            # The last poll, or a wake-up, found events: poll eagerly again.
            self._poll_delay = self._poll_interval
        self._position_at_last_wait = self._last_notification_id
        try:
            async with asyncio.timeout(self._poll_delay):
                await self._has_been_notified.wait()
        except TimeoutError:
            self._poll_delay = min(
                self._poll_delay * 2, self._poll_interval * self.max_backoff
            )
