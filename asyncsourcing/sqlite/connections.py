"""The aiosqlite connections of one SQLite database: opening, sharing, closing.

A file database is used in WAL mode, so that readers never block the writer
and the writer never blocks readers: :class:`SQLiteConnections` keeps one
writer connection and up to ``pool_size`` idle reader connections. An
in-memory database lives as long as a connection to it, so it gets a single
connection, which its users take in turns.

aiosqlite runs each connection in a thread of its own: closing a connection
is only done once its thread has ended, so that nothing outlives
:meth:`SQLiteConnections.close`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import NoReturn, TypeVar
from urllib.parse import parse_qs, unquote

import aiosqlite

from asyncsourcing.persistence import InterfaceError, OperationalError
from asyncsourcing.sqlite.errors import translate_error

__all__ = [
    "SQLiteConnections",
    "close_connection",
    "is_connection_closed",
    "split_db_name",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

# How long closing waits for a connection's thread to end after the
# connection has been told to stop. The thread ends as soon as it has run
# what was queued before the stop, so this is only reached if a statement
# runs on (for example, a lock wait up to SQLITE_LOCK_TIMEOUT).
_THREAD_END_GRACE = 30.0


class SQLiteConnections:
    """The connections of one database, opened when first needed.

    ``owner`` (the datastore) names them in errors; ``lock_timeout`` is how
    many seconds a connection waits for another's lock. ``is_memory``: one
    connection serves everything. ``read_only``: the file is opened
    ``mode=ro``, so its journal mode is left as it is.
    """

    def __init__(
        self,
        owner: object,
        db_name: str,
        *,
        lock_timeout: float,
        pool_size: int,
        is_memory: bool,
        read_only: bool,
    ) -> None:
        self.db_name = db_name
        self.closed = False
        """Set when the owner starts closing: from then on nothing is handed out."""
        self._owner = owner
        self._lock_timeout = lock_timeout
        self._is_memory = is_memory
        self._read_only = read_only
        self._connections: set[aiosqlite.Connection] = set()
        self._broken: set[aiosqlite.Connection] = set()
        self._discarding: set[asyncio.Task[None]] = set()
        self._writer: aiosqlite.Connection | None = None
        self._writer_lock = asyncio.Lock()
        self._idle_readers: list[aiosqlite.Connection] = []
        self._reader_slots = asyncio.Semaphore(pool_size)
        self._journal_mode_checked = False

    @asynccontextmanager
    async def connection(self, *, writer: bool) -> AsyncIterator[aiosqlite.Connection]:
        """The writer connection, or an idle reader, for the block's use.

        The writer is one task's at a time; so is an in-memory database's
        only connection, reader or not. A connection that the block leaves
        in a transaction, or :meth:`abandon` gave up on, is closed rather
        than handed out again.
        """
        self.check_open()
        if writer or self._is_memory:
            async with self._writer_lock:
                if self._writer is None:
                    self._writer = await self._open()
                connection = self._writer
                try:
                    yield connection
                finally:
                    if not self._is_reusable(connection):
                        self._writer = None
                        self._discard(connection)
        else:
            async with self._reader_slots:
                if self._idle_readers:
                    connection = self._idle_readers.pop()
                else:
                    connection = await self._open()
                try:
                    yield connection
                finally:
                    if self._is_reusable(connection):
                        self._idle_readers.append(connection)
                    else:
                        self._discard(connection)

    async def run_writer(
        self, query: Callable[[aiosqlite.Connection], Awaitable[T]]
    ) -> T:
        """The result of ``query``, run on the writer connection (in its turn).

        :meth:`connection` for one query, without its context managers (a
        save's insert runs it). Errors come out as PEP 249 errors; a
        connection left in a transaction, or that :meth:`abandon` gave up
        on, is closed rather than used again.
        """
        self.check_open()
        async with self._writer_lock:
            connection = self._writer
            if connection is None:
                connection = self._writer = await self._open()
            try:
                return await query(connection)
            except BaseException as error:
                self.raise_translated(error, connection)
            finally:
                if not self._is_reusable(connection):
                    self._writer = None
                    self._discard(connection)

    async def abandon(self, connection: aiosqlite.Connection) -> None:
        """Roll back after an error; a connection that can't is not reused."""
        try:
            await connection.rollback()
        except asyncio.CancelledError:
            self._broken.add(connection)
            raise
        except Exception:
            self._broken.add(connection)

    def check_open(self) -> None:
        if self.closed:
            raise self.closed_error()

    def closed_error(self) -> InterfaceError:
        return InterfaceError(f"{self._owner!r} is closed")

    def raise_translated(
        self, error: BaseException, connection: aiosqlite.Connection | None = None
    ) -> NoReturn:
        """Raise ``error`` as a PEP 249 error (with it as the cause), or as it is.

        ``connection`` is the connection the failed work was done on, if any.
        """
        translated = self._translate(error, connection)
        if translated is error:
            raise error
        raise translated from error

    def _translate(
        self, error: BaseException, connection: aiosqlite.Connection | None
    ) -> BaseException:
        translated = error
        if isinstance(error, sqlite3.Error):
            translated = translate_error(error, self.db_name, self._lock_timeout)
        if self.closed and isinstance(error, ValueError):
            # aiosqlite's "Connection closed": close() closed it under us.
            return self.closed_error()
        if (
            connection is not None
            and isinstance(error, Exception)  # Not a cancellation.
            and not isinstance(translated, OperationalError | InterfaceError)
            and is_connection_closed(connection)
        ):
            # The work on a closed connection cannot have committed, whatever
            # the error says (aiosqlite's ValueError "Connection closed", or
            # the caller's own error wrapping it): a connection error, which
            # projection runners answer by reconnecting or stopping, never
            # by skipping the event.
            msg = (
                f"The connection to SQLite database {self.db_name!r} was closed: "
                f"{type(error).__name__}: {error}"
            )
            return OperationalError(msg)
        return translated

    def _is_reusable(self, connection: aiosqlite.Connection) -> bool:
        if self.closed or connection in self._broken:
            return False
        try:
            return not connection.in_transaction
        except ValueError:  # aiosqlite: "no active connection"
            return False

    async def _open(self) -> aiosqlite.Connection:
        connection = aiosqlite.connect(
            self.db_name,
            uri=True,
            timeout=self._lock_timeout,
            # Autocommit mode: transactions begin where we say, as we say.
            isolation_level=None,
        )
        # Tracked before its thread starts, so that close() finds it even
        # if the opening task is cancelled halfway.
        self._connections.add(connection)
        try:
            await connection
            if not (self._is_memory or self._journal_mode_checked):
                await self._use_wal_journal(connection)
        except BaseException as error:
            self._discard(connection)
            self.raise_translated(error)
        if self.closed:
            self._discard(connection)
            raise self.closed_error()
        return connection

    async def _use_wal_journal(self, connection: aiosqlite.Connection) -> None:
        # The journal mode is stored in the file: set once, it stays.
        # Reading it is also the first read of the file, which fails here,
        # before anything is written, if the file is not a database.
        rows = list(await connection.execute_fetchall("PRAGMA journal_mode"))
        if str(rows[0][0]).lower() != "wal" and not self._read_only:
            await connection.execute_fetchall("PRAGMA journal_mode=WAL")
        self._journal_mode_checked = True

    def _discard(self, connection: aiosqlite.Connection) -> None:
        """Close ``connection`` in the background; :meth:`close` awaits it."""
        self._connections.discard(connection)
        self._broken.discard(connection)
        task = asyncio.get_running_loop().create_task(
            close_connection(connection), name=f"close connection to {self.db_name}"
        )
        self._discarding.add(task)
        task.add_done_callback(self._discarding.discard)

    async def close(self) -> None:
        """Close every connection, in use or idle, and wait for their threads."""
        self.closed = True
        connections = list(self._connections)
        self._connections.clear()
        self._idle_readers.clear()
        self._writer = None
        await asyncio.gather(
            *(close_connection(c) for c in connections),
            *self._discarding,
            return_exceptions=True,
        )


async def close_connection(connection: aiosqlite.Connection) -> None:
    """Close ``connection`` and wait for its thread to end."""
    with contextlib.suppress(Exception):
        # Queued after what the connection is running; also stops a
        # connection whose opening failed or was cancelled.
        await connection.close()
    thread = _worker_thread(connection)
    if thread is None or thread.ident is None:
        return  # Never started.
    deadline = asyncio.get_running_loop().time() + _THREAD_END_GRACE
    # Nothing signals the end of the thread: poll it. It has resolved our
    # future and is returning, which takes microseconds, so this is not
    # worth a thread of our own to join it (which would outlive close()).
    while thread.is_alive():
        if asyncio.get_running_loop().time() > deadline:
            logger.warning("Gave up waiting for %s to end", thread.name)
            return
        await asyncio.sleep(0.001)


def is_connection_closed(connection: aiosqlite.Connection) -> bool:
    """True if ``connection`` refuses work: closed, stopped, or never opened.

    aiosqlite has no public way to ask; this is the test its own methods
    make before they raise ``ValueError("Connection closed")``. Should a
    later aiosqlite rename its attributes, connections count as open, so the
    caller's errors stay the caller's.
    """
    running = getattr(connection, "_running", True)
    return not running or getattr(connection, "_connection", ...) is None


def _worker_thread(connection: aiosqlite.Connection) -> threading.Thread | None:
    # aiosqlite >= 0.22 keeps its thread in ``_thread``; before, the
    # connection was itself the thread.
    thread = getattr(connection, "_thread", connection)
    return thread if isinstance(thread, threading.Thread) else None


def split_db_name(db_name: str) -> tuple[str, dict[str, list[str]]]:
    """The file path (or memory database name) and the URI query of ``db_name``."""
    if not db_name.startswith("file:"):
        return db_name, {}
    rest = db_name.removeprefix("file:").partition("#")[0]
    path, _, query = rest.partition("?")
    if path.startswith("//"):
        # "file://host/path": SQLite accepts only an empty host or "localhost".
        path = "/" + path[2:].partition("/")[2]
    return unquote(path), parse_qs(query)
