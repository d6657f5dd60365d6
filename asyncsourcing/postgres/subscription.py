"""Following a Postgres application sequence: select in batches, wake on NOTIFY."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from asyncsourcing.persistence import Subscription

if TYPE_CHECKING:
    from asyncsourcing.postgres.listener import ListenerRegistration
    from asyncsourcing.postgres.recorders import PostgresApplicationRecorder

__all__ = ["PostgresSubscription"]


class PostgresSubscription(Subscription["PostgresApplicationRecorder"]):
    """Notifications of a Postgres application recorder, in order of their ids.

    Reads batches of at most ``batch_size`` with the topics filtered in SQL
    (``topic = ANY($n)``), holding one batch at a time. Between batches it is
    woken by a NOTIFY on the events table's channel, received by the
    datastore's one LISTEN connection; a notification only makes it read
    again, so coalesced or lost notifications lose nothing. After the LISTEN
    connection is re-established it reads again, and it re-reads every
    ``poll_interval`` seconds anyway, the safety net for writers that do not
    notify. The iteration ends when the datastore is closed. Starting, it
    logs a warning if the schema's ``es_insert_events_<type>`` function
    inserts without the table lock (see
    :meth:`PostgresApplicationRecorder.check_insert_events_function`).
    """

    def __init__(
        self,
        recorder: PostgresApplicationRecorder,
        gt: int | None = None,
        topics: Sequence[str] = (),
    ) -> None:
        super().__init__(recorder, gt=gt, topics=topics)
        self._registration: ListenerRegistration | None = None

    async def _start_listening(self) -> None:
        # Listening before the first read: a commit after the read is then
        # announced, one before it is read.
        listener = self._recorder.datastore.listener
        channel = self._recorder.channel_name
        if self._registration is None:
            self._registration = listener.register(
                channel,
                on_notify=self._on_notify,
                on_resync=self._on_resync,
                on_close=self.stop,
            )
        try:
            await listener.listening(channel)
            # Warns when eventsourcing's insert function takes no table lock.
            await self._recorder.check_insert_events_function()
        except BaseException:
            self._unregister()
            raise
        await super()._start_listening()

    async def _stop_listening(self) -> None:
        self._unregister()

    async def _wait_for_news(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._recorder.datastore.settings.poll_interval):
                await self._has_been_notified.wait()

    def _on_notify(self, _: str) -> None:
        self.notify()

    def _on_resync(self, missed: bool) -> None:
        # The listener's poll ticks are for waiters: this subscription polls
        # in _wait_for_news().
        if missed:
            self.notify()

    def _unregister(self) -> None:
        if self._registration is not None:
            self._recorder.datastore.listener.unregister(self._registration)
            self._registration = None
