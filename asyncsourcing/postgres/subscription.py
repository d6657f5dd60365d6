"""Following a Postgres application sequence: select in batches, wake on NOTIFY."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from asyncsourcing.persistence import ApplicationRecorder, Subscription

if TYPE_CHECKING:
    from asyncsourcing.postgres.listener import ListenerRegistration, PostgresListener

__all__ = ["PostgresSubscription"]


class PostgresSubscription(Subscription[ApplicationRecorder]):
    """Notifications of a Postgres application recorder, in order of their ids.

    Reads batches of at most ``batch_size`` with the topics filtered in SQL
    (``topic = ANY($n)``), holding one batch at a time. Between batches it is
    woken by a NOTIFY on ``channel``, the events table's, received by
    ``listener``, the datastore's one LISTEN connection; a notification only
    makes it read again, so coalesced or lost notifications lose nothing.
    After the LISTEN connection is re-established it reads again, and it
    re-reads every ``poll_interval`` seconds anyway, the safety net for
    writers that do not notify. The iteration ends when the listener is
    closed (with its datastore).

    ``on_listening``, when given, is awaited once the channel is listened
    to, before the first read: the recorder checks there that
    eventsourcing's insert function takes the table lock (see
    :meth:`PostgresApplicationRecorder.check_insert_events_function
    <asyncsourcing.postgres.PostgresApplicationRecorder.check_insert_events_function>`).
    """

    def __init__(
        self,
        recorder: ApplicationRecorder,
        gt: int | None = None,
        topics: Sequence[str] = (),
        *,
        listener: PostgresListener,
        channel: str,
        poll_interval: float,
        on_listening: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        super().__init__(recorder, gt=gt, topics=topics)
        self._listener = listener
        self._channel = channel
        self._poll_interval = poll_interval
        self._on_listening = on_listening
        self._registration: ListenerRegistration | None = None

    async def _start_listening(self) -> None:
        # Listening before the first read: a commit after the read is then
        # announced, one before it is read.
        if self._registration is None:
            self._registration = self._listener.register(
                self._channel,
                on_notify=self._on_notify,
                on_resync=self._on_resync,
                on_close=self.stop,
            )
        try:
            await self._listener.listening(self._channel)
            if self._on_listening is not None:
                await self._on_listening()
        except BaseException:
            self._unregister()
            raise
        await super()._start_listening()

    async def _stop_listening(self) -> None:
        self._unregister()

    async def _wait_for_news(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._poll_interval):
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
            self._listener.unregister(self._registration)
            self._registration = None
