"""The one LISTEN connection of a datastore, shared by its subscribers and waiters.

A notification only says "look again": subscribers and waiters then read the
table, so notifications that are coalesced by PostgreSQL, or lost while the
connection is down, lose nothing. What the listener must guarantee is that
whoever may have missed something is told to look again:

* a channel is being listened to before :meth:`PostgresListener.listening`
  returns, so a caller that reads afterwards is told about every later commit;
* when the connection drops (``pg_terminate_backend``, a restart, a network
  failure found by the periodic ping) it is re-opened with backoff, every
  channel is listened to again, and then every registration is resynced with
  ``missed=True``;
* every ``poll_interval`` seconds every registration is resynced with
  ``missed=False``: the slow safety net, never what sets the latency. It
  goes on whatever the connection is doing: while it cannot be re-opened
  (the server refuses logins, say), waiters still learn of the positions
  that the pool can read.

It is not a pooled connection: LISTEN belongs to a session, and a pooled
connection is reset (``UNLISTEN *``) whenever it is released.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import asyncpg.pool
from eventsourcing.persistence import InterfaceError

from asyncsourcing.postgres.errors import translate_errors
from asyncsourcing.postgres.identifiers import check_identifier

__all__ = ["ListenerRegistration", "PostgresListener"]

logger = logging.getLogger(__name__)

Connect = Callable[[], Awaitable["asyncpg.Connection[Any]"]]

# Reconnection backoff: the first attempt is immediate (a terminated backend is
# usually replaced at once), then the delay doubles up to the maximum.
_BACKOFF_INITIAL = 0.05
_BACKOFF_MAX = 5.0
# A half-open TCP connection delivers nothing and reports no error: a query on
# the listening connection this often finds out.
_PING_INTERVAL = 10.0
_PING_TIMEOUT = 10.0
_CLOSE_TIMEOUT = 2.0


@dataclass(eq=False)
class ListenerRegistration:
    """What to call for one subscriber or waiter board of a channel.

    ``on_notify(payload)`` for each notification on ``channel``;
    ``on_resync(missed)`` when it should read again: ``missed`` is true after
    the connection was re-established (announcements may have been lost);
    ``on_close()`` when the listener is closed, so it stops waiting.
    """

    channel: str
    on_notify: Callable[[str], None]
    on_resync: Callable[[bool], None]
    on_close: Callable[[], None] | None = None
    active: bool = field(default=True, init=False)


class PostgresListener:
    """One dedicated LISTEN connection and the registrations it serves.

    Opens its connection on the first :meth:`listening`, and from then on runs
    one supervising task (the poll ticks, the ping, the reconnection) until
    :meth:`close`; a ping or a reconnection runs in a task of its own while
    it lasts, so that the poll ticks go on meanwhile.
    """

    def __init__(self, connect: Connect, *, poll_interval: float) -> None:
        self._connect = connect
        self._poll_interval = poll_interval
        self._registrations: dict[str, list[ListenerRegistration]] = {}
        self._conn: asyncpg.Connection[Any] | None = None
        self._listened: set[str] = set()  # channels LISTENed on self._conn
        self._lost = asyncio.Event()
        # Serialises commands on the connection (asyncpg allows one at a time)
        # and the opening of the first connection.
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.reconnections = 0

    @property
    def is_connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    @property
    def server_pid(self) -> int | None:
        """The backend process id of the listening connection, if connected."""
        return self._conn.get_server_pid() if self._conn is not None else None

    def register(
        self,
        channel: str,
        on_notify: Callable[[str], None],
        on_resync: Callable[[bool], None],
        on_close: Callable[[], None] | None = None,
    ) -> ListenerRegistration:
        """Register callbacks for ``channel`` (no IO: see :meth:`listening`)."""
        check_identifier(channel)
        registration = ListenerRegistration(channel, on_notify, on_resync, on_close)
        self._registrations.setdefault(channel, []).append(registration)
        return registration

    def unregister(self, registration: ListenerRegistration) -> None:
        """Stop calling ``registration``; the channel stays listened to.

        Keeping the LISTEN costs nothing while idle, and avoids a race with
        a new registration for the same channel.
        """
        registration.active = False
        registrations = self._registrations.get(registration.channel)
        if registrations and registration in registrations:
            registrations.remove(registration)

    async def listening(self, channel: str) -> None:
        """Return once notifications on ``channel`` reach its registrations.

        Opens the connection if it was never opened, raising
        :class:`~eventsourcing.persistence.OperationalError` if it cannot.
        While the connection is being re-established it returns at once:
        the reconnection resyncs every registration when it is done.
        """
        if self._closed:
            msg = "The Postgres listener has been closed"
            raise InterfaceError(msg)
        if channel in self._listened and self.is_connected:
            return
        async with self._lock:
            if self._closed:
                msg = "The Postgres listener has been closed"
                raise InterfaceError(msg)
            if self._task is None:
                conn = await self._open()
                if self._closed:
                    conn.terminate()
                    msg = "The Postgres listener has been closed"
                    raise InterfaceError(msg)
                self._attach(conn)
                self._task = asyncio.create_task(
                    self._supervise(), name="asyncsourcing postgres listener"
                )
            conn_or_none = self._conn
            if conn_or_none is None or channel in self._listened:
                return
            try:
                with translate_errors():
                    await conn_or_none.add_listener(channel, self._dispatch)
            except Exception:
                if conn_or_none.is_closed():
                    # Lost meanwhile: the reconnection will listen and resync.
                    self._mark_lost(conn_or_none)
                    return
                raise
            self._listened.add(channel)

    async def close(self) -> None:
        """Close the connection, stop the task, release waiters; idempotent.

        If the caller is cancelled meanwhile, the connection is terminated
        rather than left open.
        """
        if self._closed:
            return
        self._closed = True
        task, self._task = self._task, None
        conn, self._conn = self._conn, None
        self._listened.clear()
        registrations = [r for rs in self._registrations.values() for r in rs]
        self._registrations.clear()
        for registration in registrations:
            registration.active = False
            if registration.on_close is not None:
                _call(registration.on_close)
        try:
            if task is not None:
                task.cancel()
                # Unlike awaiting the task, this raises no CancelledError of
                # its: only ours, if our caller is cancelled.
                await asyncio.wait({task})
        finally:
            if conn is not None:
                await _close_connection(conn)

    # Internals.

    async def _open(self) -> asyncpg.Connection[Any]:
        with translate_errors(connecting=True):
            return await self._connect()

    def _attach(self, conn: asyncpg.Connection[Any]) -> None:
        self._conn = conn
        self._lost = asyncio.Event()
        conn.add_termination_listener(self._mark_lost)

    def _mark_lost(
        self, conn: asyncpg.Connection[Any] | asyncpg.pool.PoolConnectionProxy[Any]
    ) -> None:
        if conn is self._conn:
            self._conn = None
            self._listened.clear()
            self._lost.set()
        if not conn.is_closed():
            conn.terminate()

    def _dispatch(self, conn: object, pid: int, channel: str, payload: object) -> None:
        for registration in list(self._registrations.get(channel, ())):
            if registration.active:
                _call(registration.on_notify, str(payload))

    def _resync(self, *, missed: bool) -> None:
        for registrations in list(self._registrations.values()):
            for registration in list(registrations):
                if registration.active:
                    _call(registration.on_resync, missed)

    async def _supervise(self) -> None:
        """Poll ticks; a ping now and then; a reconnection when it is lost."""
        loop = asyncio.get_running_loop()
        next_ping = loop.time() + _PING_INTERVAL
        while True:
            try:
                lost = self._lost
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._poll_interval):
                        await lost.wait()
                if not lost.is_set():
                    self._resync(missed=False)
                    if loop.time() >= next_ping:
                        next_ping = loop.time() + _PING_INTERVAL
                        await self._polling_meanwhile(self._ping())
                    continue
                await self._polling_meanwhile(self._reconnect())
                self.reconnections += 1
                self._resync(missed=True)
            except Exception:
                # The task is the only one to reconnect: it must outlive bugs.
                logger.exception("Error in the Postgres listener task")
                await asyncio.sleep(self._poll_interval)

    async def _polling_meanwhile(self, work: Coroutine[Any, Any, None]) -> None:
        """Await ``work``, resyncing every registration each poll interval.

        ``work`` runs in a task of its own, for as long as it lasts: a server
        that refuses connections for minutes, or a ping that gets no answer,
        does not stop the poll.
        """
        task = asyncio.create_task(work, name="asyncsourcing postgres listener work")
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=self._poll_interval)
                if not task.done():
                    self._resync(missed=False)
            task.result()
        finally:
            if not task.done():
                # We are cancelled (closed): so is the work, which then
                # terminates a connection it has just opened.
                task.cancel()
                await asyncio.wait({task})

    async def _ping(self) -> None:
        conn = self._conn
        if conn is None:
            return
        try:
            async with self._lock:
                await conn.fetchval("SELECT 1", timeout=_PING_TIMEOUT)
        except (
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            asyncpg.exceptions.InternalClientError,
            OSError,
            TimeoutError,
        ):
            logger.warning("Postgres LISTEN connection does not answer; reconnecting")
            self._mark_lost(conn)

    async def _reconnect(self) -> None:
        delay = 0.0
        while True:
            if delay:
                await asyncio.sleep(delay)
            delay = min(max(delay * 2, _BACKOFF_INITIAL), _BACKOFF_MAX)
            try:
                conn = await self._connect()
            except Exception as error:
                logger.warning(
                    "Cannot re-open the Postgres LISTEN connection (%s); "
                    "retrying in %.2fs",
                    error,
                    delay,
                )
                continue
            try:
                async with self._lock:
                    channels = list(self._registrations)
                    for channel in channels:
                        await conn.add_listener(channel, self._dispatch)
                    self._attach(conn)
                    self._listened.update(channels)
            except Exception as error:
                logger.warning(
                    "Cannot LISTEN on the re-opened Postgres connection (%s)", error
                )
                conn.terminate()
                continue
            except BaseException:
                # Cancelled by close(): the new connection is not ours to keep.
                conn.terminate()
                raise
            logger.info("Postgres LISTEN connection re-established")
            return


def _call(func: Callable[..., None], *args: Any) -> None:
    # One failing callback must not keep the others from being called, nor
    # stop the listener.
    try:
        func(*args)
    except Exception:
        logger.exception("Error in a Postgres listener callback")


async def _close_connection(conn: asyncpg.Connection[Any]) -> None:
    try:
        await asyncio.wait_for(conn.close(), _CLOSE_TIMEOUT)
    except Exception:
        conn.terminate()
    except BaseException:
        # Cancelled: still leave no connection behind.
        conn.terminate()
        raise
