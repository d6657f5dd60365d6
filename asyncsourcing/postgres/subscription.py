"""Following a Postgres application sequence: select in batches, wake on NOTIFY."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from asyncsourcing.persistence import ApplicationRecorder, Notification, Subscription

if TYPE_CHECKING:
    from asyncsourcing.postgres.listener import ListenerRegistration, PostgresListener

__all__ = ["PostgresSubscription"]


class PostgresSubscription(Subscription[ApplicationRecorder]):
    """Notifications of a Postgres application recorder, in order of their ids.

    Reads batches of at most ``batch_size`` with the topics filtered in SQL
    (``topic = ANY($n)``). Between batches it is woken by a NOTIFY on
    ``channel``, the events table's, received by ``listener``, the
    datastore's one LISTEN connection; a notification only makes it read
    again, so coalesced or lost notifications lose nothing. After the LISTEN
    connection is re-established it reads again, and it re-reads every
    ``poll_interval`` seconds anyway, the safety net for writers that do not
    notify. The iteration ends when the listener is closed (with its
    datastore).

    While it catches up (a batch came full), it reads the next batch ahead,
    in a task of its own on another pooled connection, as the notifications
    of the current one are consumed: a projection runner's view transaction
    and the next select then wait for the server at the same time. So it
    holds at most two batches. The read-ahead is used only once the current
    batch is consumed, so the order is that of the ids; it is cancelled and
    awaited when the subscription is closed, and its error, if any, comes
    out of ``__anext__`` as a read's would.

    ``on_listening``, when given, is awaited as the channel is being
    listened to (both before the first read): the recorder checks there
    that eventsourcing's insert function takes the table lock (see
    :meth:`PostgresApplicationRecorder.check_insert_events_function
    <asyncsourcing.postgres.PostgresApplicationRecorder.check_insert_events_function>`).

    ``held_back``, when given (concurrent write mode), says whether the last
    read stopped at a visibility horizon below the last id issued: the
    subscription then reads again every ``held_back_poll_interval`` seconds
    rather than every ``poll_interval``, since the transaction that holds
    the horizon back may roll back, which notifies no one.
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
        held_back: Callable[[], bool] | None = None,
        held_back_poll_interval: float = 0.05,
    ) -> None:
        super().__init__(recorder, gt=gt, topics=topics)
        self._listener = listener
        self._channel = channel
        self._poll_interval = poll_interval
        self._held_back = held_back
        self._held_back_poll_interval = min(held_back_poll_interval, poll_interval)
        self._on_listening = on_listening
        self._registration: ListenerRegistration | None = None
        self._read_ahead: asyncio.Task[Sequence[Notification]] | None = None

    async def __anext__(self) -> Notification:
        if (
            self._read_ahead is not None
            and not self._buffer
            and not self._has_been_stopped
        ):
            task = self._read_ahead
            try:
                # Not "await task": its cancellation by stop() is not ours.
                await asyncio.wait({task})
            except BaseException:
                # We are cancelled: so is the read (aclose() awaits it).
                _cancel_once(task)
                raise
            self._read_ahead = None
            # Cancelled: by stop() (the base class ends the iteration), or
            # with an earlier call of ours (the base class reads it again).
            if not task.cancelled():
                batch = task.result()  # Raises what the read raised.
                self._last_read_was_full = len(batch) >= self.batch_size
                if batch:
                    self._buffer.extend(batch)
                    self._read_up_to = batch[-1].id
                # Empty: the base class reads again (clearing the wake-up
                # first), and then waits for news.
        notification = await super().__anext__()
        self._start_reading_ahead()
        return notification

    def _start_reading_ahead(self) -> None:
        """Read the batch after the buffered one, if that came full."""
        if (
            self._read_ahead is not None
            or not self._last_read_was_full
            or not self._buffer
            or self._has_been_stopped
        ):
            return
        self._read_ahead = task = asyncio.create_task(
            self._recorder.select_notifications(
                start=self._read_up_to or 0,
                limit=self.batch_size,
                topics=self._topics,
                inclusive_of_start=False,
            ),
            name="asyncsourcing postgres subscription read-ahead",
        )
        # Left unused when stopped: its error is not worth a warning then.
        task.add_done_callback(_retrieve_exception)

    def stop(self) -> None:
        super().stop()
        if self._read_ahead is not None:
            _cancel_once(self._read_ahead)

    async def aclose(self) -> None:
        self.stop()
        task, self._read_ahead = self._read_ahead, None
        try:
            if task is not None:
                # Its pooled connection is given back before we return;
                # wait() raises no error of it, only our own cancellation.
                await asyncio.wait({task})
        finally:
            await super().aclose()

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
            await self._listening_and_checking()
        except BaseException:
            self._unregister()
            raise
        await super()._start_listening()

    async def _listening_and_checking(self) -> None:
        """The LISTEN and the ``on_listening`` check, at the same time: the
        first may open the listener's connection, the second the pool's."""
        if self._on_listening is None:
            await self._listener.listening(self._channel)
            return
        listening = asyncio.ensure_future(self._listener.listening(self._channel))
        listening.add_done_callback(_retrieve_exception)
        try:
            await self._on_listening()
        except BaseException:
            listening.cancel()
            # Raises no error of it, only our own cancellation.
            await asyncio.wait({listening})
            raise
        # Cancelled with us, if we are.
        await listening

    async def _stop_listening(self) -> None:
        self._unregister()

    async def _wait_for_news(self) -> None:
        interval = self._poll_interval
        if self._held_back is not None and self._held_back():
            # A poll, not a skip: what the horizon holds back is read once
            # the transactions below it have ended.
            interval = self._held_back_poll_interval
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval):
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


def _cancel_once(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` unless it is already being cancelled: a second
    cancellation would cut short its cleanup (giving back its connection)."""
    if not task.cancelling():
        task.cancel()


def _retrieve_exception(task: asyncio.Future[Any]) -> None:
    """Mark the error of ``task`` as seen: whoever awaits it still gets it."""
    if not task.cancelled():
        task.exception()
