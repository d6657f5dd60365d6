"""Subscriptions to an application sequence stored in SQLite."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING

from asyncsourcing.persistence import Subscription

if TYPE_CHECKING:
    from asyncsourcing.sqlite.recorders import SQLiteApplicationRecorder

__all__ = ["SQLiteSubscription"]


class SQLiteSubscription(Subscription["SQLiteApplicationRecorder"]):
    """Catches up with the recorded events, then waits for new ones.

    Within the process, a commit to the same events table through any
    datastore on the same database wakes the subscription at once (see
    :mod:`asyncsourcing.sqlite.notifier`). Commits by other processes are
    found by polling, the only way SQLite offers: the subscription re-reads
    after ``poll_interval`` seconds of quiet (setting
    ``SQLITE_POLL_INTERVAL``), doubling the interval after each poll that
    finds nothing, up to :attr:`max_backoff` times the setting, and going
    back to it when events arrive. A private in-memory database is not
    polled: nothing outside its datastore can write to it.
    """

    max_backoff = 8
    """The longest wait between polls, as a multiple of the poll interval."""

    def __init__(
        self,
        recorder: SQLiteApplicationRecorder,
        gt: int | None = None,
        topics: Sequence[str] = (),
    ) -> None:
        super().__init__(recorder, gt=gt, topics=topics)
        self._poll_interval = recorder.datastore.cross_process_poll_interval
        self._poll_delay = self._poll_interval
        self._position_at_last_wait = gt

    async def _start_listening(self) -> None:
        await super()._start_listening()
        datastore = self._recorder.datastore
        datastore.notifier.add_listener(
            datastore, self._recorder.events_table_name, self
        )

    async def _stop_listening(self) -> None:
        datastore = self._recorder.datastore
        if not datastore.is_closed:
            datastore.notifier.discard_listener(self._recorder.events_table_name, self)

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
