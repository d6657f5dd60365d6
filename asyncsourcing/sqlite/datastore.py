"""The SQLite datastore: lazily opened aiosqlite connections, and transactions.

A file database is used in WAL mode: readers never block the writer and the
writer never blocks readers. The datastore keeps one writer connection, whose
transactions begin with ``BEGIN IMMEDIATE`` so that writers, in this process
and in others, serialise at the start of their transactions and commit
notification ids in the order they were given; and up to ``pool_size``
reader connections. An in-memory database lives as long as a connection to
it, so it gets a single connection that all of the datastore's recorders
share, and its transactions take turns.

aiosqlite runs each connection in a thread of its own: :meth:`close` closes
every connection, in use or idle, and returns once their threads have ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from contextlib import asynccontextmanager
from typing import Literal, NoReturn
from urllib.parse import parse_qs, unquote

import aiosqlite

from asyncsourcing.persistence import (
    DatabaseError,
    DataError,
    IntegrityError,
    InterfaceError,
    InternalError,
    NotSupportedError,
    OperationalError,
    PersistenceError,
    ProgrammingError,
)
from asyncsourcing.resources import Resource
from asyncsourcing.sqlite.notifier import SQLiteNotifier, shared_notifier

__all__ = [
    "DEFAULT_LOCK_TIMEOUT",
    "DEFAULT_POLL_INTERVAL",
    "SQLiteDatastore",
    "TableCreator",
    "translate_error",
]

logger = logging.getLogger(__name__)

TableCreator = Callable[[aiosqlite.Connection], Awaitable[None]]
"""Creates tables with the given connection, inside a write transaction."""

DEFAULT_LOCK_TIMEOUT = 5.0
"""Seconds, as in eventsourcing: how long to wait for another connection's lock."""

DEFAULT_POLL_INTERVAL = 0.1
"""Seconds between reads that look for other processes' commits."""

# The primary result codes (the low byte of extended codes) that get messages
# of their own: https://www.sqlite.org/rescode.html
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_SQLITE_CANTOPEN = 14
_SQLITE_NOTADB = 26

# sqlite3's message for a statement on a closed connection: a
# ProgrammingError, but the connection's state, not the caller's mistake.
_CLOSED_DATABASE = "Cannot operate on a closed database"

# Most specific first: every sqlite3 error class but InterfaceError derives
# from sqlite3.DatabaseError.
_ERROR_CLASSES: tuple[tuple[type[sqlite3.Error], type[PersistenceError]], ...] = (
    (sqlite3.InterfaceError, InterfaceError),
    (sqlite3.DataError, DataError),
    (sqlite3.OperationalError, OperationalError),
    (sqlite3.IntegrityError, IntegrityError),
    (sqlite3.InternalError, InternalError),
    (sqlite3.ProgrammingError, ProgrammingError),
    (sqlite3.NotSupportedError, NotSupportedError),
    (sqlite3.DatabaseError, DatabaseError),
)

# How long close() waits for a connection's thread to end after the
# connection has been told to stop. The thread ends as soon as it has run
# what was queued before the stop, so this is only reached if a statement
# runs on (for example, a lock wait up to SQLITE_LOCK_TIMEOUT).
_THREAD_END_GRACE = 30.0


def translate_error(
    error: sqlite3.Error, db_name: str, lock_timeout: float | None = None
) -> PersistenceError:
    """The PEP 249 error of :mod:`asyncsourcing.persistence` for ``error``.

    Raise it ``from error`` to keep the cause. Errors that need context to be
    understood (a locked, missing or foreign database file) get a message
    naming the database and the setting to look at.
    """
    code = getattr(error, "sqlite_errorcode", None)
    primary_code = code & 0xFF if isinstance(code, int) else None
    message = str(error)
    if primary_code == _SQLITE_BUSY:
        waited = "" if lock_timeout is None else f" for {lock_timeout:g} seconds"
        message = (
            f"SQLite database {db_name!r} is locked: waited{waited} "
            "(setting SQLITE_LOCK_TIMEOUT) for another connection to release "
            f"its lock ({error})"
        )
    elif primary_code == _SQLITE_LOCKED:
        message = (
            f"A table of SQLite database {db_name!r} is locked by another "
            f"connection to the same shared-cache database ({error})"
        )
    elif primary_code == _SQLITE_CANTOPEN:
        message = (
            f"Cannot open SQLite database {db_name!r} (setting SQLITE_DBNAME): "
            f"{error}; check that its folder exists and is writable"
        )
    elif primary_code == _SQLITE_NOTADB:
        message = (
            f"The file of SQLite database {db_name!r} (setting SQLITE_DBNAME) "
            f"is not a SQLite database ({error}); it was left unchanged"
        )
    if isinstance(error, sqlite3.ProgrammingError) and message.startswith(
        _CLOSED_DATABASE
    ):
        return InterfaceError(
            f"The connection to SQLite database {db_name!r} is closed ({error})"
        )
    for sqlite_class, error_class in _ERROR_CLASSES:
        if isinstance(error, sqlite_class):
            return error_class(message)
    return PersistenceError(message)


class SQLiteDatastore(Resource):
    """Connections to one SQLite database, and its transactions.

    ``db_name`` is a file path, ``":memory:"``, or a URI such as
    ``"file:name?mode=memory&cache=shared"`` (names are opened with
    ``uri=True``, as eventsourcing does). Constructing a datastore does no
    IO: connections are opened when first needed. Close it with
    :meth:`close` or ``async with``.

    ``lock_timeout`` is how many seconds a connection waits for another
    connection's lock before failing with :class:`OperationalError`
    (setting ``SQLITE_LOCK_TIMEOUT``, default 5). ``pool_size`` bounds the
    reader connections of a file database (each runs in a thread). Other
    processes writing to the same file are noticed by polling, every
    ``poll_interval`` seconds while something waits (setting
    ``SQLITE_POLL_INTERVAL``); within the process, commits wake waiters
    directly. ``originator_id_type`` ("uuid" or "text") is how stored
    originator ids are read back. When ``create_tables`` is true (setting
    ``CREATE_TABLE``), the tables of each recorder constructed on the
    datastore are created before the datastore's next transaction.

    A datastore is used by one event loop at a time.
    """

    def __init__(
        self,
        db_name: str,
        *,
        lock_timeout: float | None = None,
        pool_size: int = 4,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        originator_id_type: Literal["uuid", "text"] = "uuid",
        create_tables: bool = True,
    ) -> None:
        if not isinstance(db_name, str) or not db_name:
            msg = f"SQLite database name must be a non-empty string, not {db_name!r}"
            raise ValueError(msg)
        if lock_timeout is not None and not lock_timeout >= 0:
            msg = f"lock_timeout must be a number of seconds >= 0, not {lock_timeout!r}"
            raise ValueError(msg)
        if pool_size < 1:
            msg = f"pool_size must be at least 1, not {pool_size!r}"
            raise ValueError(msg)
        if not poll_interval > 0:
            msg = (
                f"poll_interval must be a number of seconds > 0, not {poll_interval!r}"
            )
            raise ValueError(msg)
        if originator_id_type not in ("uuid", "text"):
            msg = (
                f"originator_id_type must be 'uuid' or 'text', "
                f"not {originator_id_type!r}"
            )
            raise ValueError(msg)
        self.db_name = db_name
        self.lock_timeout = (
            DEFAULT_LOCK_TIMEOUT if lock_timeout is None else lock_timeout
        )
        self.pool_size = pool_size
        self.poll_interval = poll_interval
        self.originator_id_type: Literal["uuid", "text"] = originator_id_type
        self.create_tables_on_first_use = create_tables
        self._path, self._query = _split_db_name(db_name)
        # Detected as eventsourcing does, so both libraries agree.
        self.is_memory = ":memory:" in db_name or "mode=memory" in db_name
        self.is_shared_memory = (
            self.is_memory
            and db_name.startswith("file:")
            and "shared" in self._query.get("cache", ())
        )

        self._closed = False
        self._close_task: asyncio.Future[None] | None = None
        self._connections: set[aiosqlite.Connection] = set()
        self._broken: set[aiosqlite.Connection] = set()
        self._discarding: set[asyncio.Task[None]] = set()
        self._writer: aiosqlite.Connection | None = None
        self._writer_lock = asyncio.Lock()
        self._idle_readers: list[aiosqlite.Connection] = []
        self._reader_slots = asyncio.Semaphore(pool_size)
        self._journal_mode_checked = False
        # Connections in a transaction, each with its after-commit callbacks.
        self._after_commit: dict[aiosqlite.Connection, list[Callable[[], None]]] = {}
        # The transaction each task has open: a nested one joins it.
        self._task_transactions: dict[
            asyncio.Task[object], tuple[aiosqlite.Connection, bool]
        ] = {}
        self._table_creators: list[TableCreator] = []
        self._table_creators_lock = asyncio.Lock()
        self._notifier: SQLiteNotifier | None = None
        self._notifier_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.db_name!r})"

    @property
    def is_closed(self) -> bool:
        return self._closed

    @property
    def cross_process_poll_interval(self) -> float | None:
        """The poll interval, or None when no other process can write.

        A private in-memory database is reachable only through this
        datastore, whose commits wake everything directly.
        """
        if self.is_memory and not self.is_shared_memory:
            return None
        return self.poll_interval

    # Wake-ups.

    @property
    def notifier(self) -> SQLiteNotifier:
        """The notifier of this database, in the running event loop.

        Shared by every datastore of the process on the same database file
        (found by its real path) or shared-cache memory database; a private
        in-memory database has a notifier of its own.
        """
        self._check_open()
        loop = asyncio.get_running_loop()
        if self._notifier is None or self._notifier_loop is not loop:
            key = self._notifier_key()
            if key is None:
                notifier = SQLiteNotifier(repr(self))
            else:
                notifier = shared_notifier(key, loop)
            notifier.attach(self)
            self._notifier, self._notifier_loop = notifier, loop
        return self._notifier

    def _notifier_key(self) -> Hashable | None:
        if self.is_shared_memory:
            # SQLite shares such a database between the connections of the
            # process that open the same name.
            return ("memory", self._path)
        if self.is_memory:
            return None
        # One file may be named in many ways: relative, via links, as a URI.
        return ("file", os.path.realpath(self._path))

    def call_after_commit(
        self, connection: aiosqlite.Connection, callback: Callable[[], None]
    ) -> None:
        """Call ``callback`` once the transaction of ``connection`` commits.

        Not called if the transaction rolls back. Raises
        :class:`ProgrammingError` if ``connection`` is not in a transaction
        of this datastore.
        """
        try:
            callbacks = self._after_commit[connection]
        except KeyError:
            msg = f"The connection is not in a transaction of {self!r}"
            raise ProgrammingError(msg) from None
        callbacks.append(callback)

    # Tables.

    def add_table_creator(self, creator: TableCreator) -> None:
        """Have ``creator`` run before the next transaction (:meth:`create_tables`)."""
        if creator not in self._table_creators:
            self._table_creators.append(creator)

    async def create_tables(self) -> None:
        """Run the pending table creators, in one write transaction.

        They are pending until they have succeeded: after an error, the next
        transaction runs them again (creators are idempotent).
        """
        async with self._table_creators_lock:
            creators = list(self._table_creators)
            if not creators:
                return
            async with self._transaction(commit=True) as connection:
                for creator in creators:
                    await creator(connection)
            for creator in creators:
                self._table_creators.remove(creator)

    # Transactions.

    @asynccontextmanager
    async def transaction(
        self, *, commit: bool = False
    ) -> AsyncIterator[aiosqlite.Connection]:
        """A connection in a transaction, committed at the end if ``commit``.

        Write transactions (``commit=True``) begin with ``BEGIN IMMEDIATE``:
        they take the database's write lock at once, waiting up to the lock
        timeout for other writers. Read transactions see one snapshot and
        are rolled back. An error rolls the transaction back and is raised
        as a PEP 249 error of :mod:`asyncsourcing.persistence`, with the
        sqlite3 error as its cause.

        Inside a transaction of the same task, this joins it: it yields the
        enclosing connection, and the enclosing transaction commits or rolls
        back the whole (a projection runner batches events this way). A
        write cannot join a read transaction: that raises
        :class:`ProgrammingError`.
        """
        enclosing = self._enclosing_transaction()
        if enclosing is not None:
            connection, is_write = enclosing
            if commit and not is_write:
                msg = (
                    f"A write transaction cannot join the read transaction "
                    f"that its task has open on {self!r}"
                )
                raise ProgrammingError(msg)
            yield connection
            return
        if self._table_creators:
            await self.create_tables()
        async with self._transaction(commit=commit) as connection:
            yield connection

    @asynccontextmanager
    async def autocommit(self) -> AsyncIterator[aiosqlite.Connection]:
        """The writer connection outside any transaction.

        Each statement is a transaction of its own, which takes the write
        lock and commits when the statement ends: one statement, one trip to
        the connection's thread. Errors come out as in :meth:`transaction`.
        """
        if self._enclosing_transaction() is not None:
            msg = f"autocommit() inside a transaction of its task on {self!r}"
            raise ProgrammingError(msg)
        if self._table_creators:
            await self.create_tables()
        async with self._connection(writer=True) as connection:
            try:
                yield connection
            except BaseException as error:
                self._raise_translated(error, connection)

    def in_transaction(self) -> bool:
        """True when the current task has a transaction open on this datastore."""
        return self._enclosing_transaction() is not None

    def _enclosing_transaction(self) -> tuple[aiosqlite.Connection, bool] | None:
        task = asyncio.current_task()
        return None if task is None else self._task_transactions.get(task)

    @asynccontextmanager
    async def _transaction(
        self, *, commit: bool
    ) -> AsyncIterator[aiosqlite.Connection]:
        task = asyncio.current_task()
        callbacks: list[Callable[[], None]] = []
        async with self._connection(writer=commit) as connection:
            self._after_commit[connection] = callbacks
            if task is not None:
                self._task_transactions[task] = (connection, commit)
            try:
                await connection.execute("BEGIN IMMEDIATE" if commit else "BEGIN")
                yield connection
                if commit:
                    await connection.commit()
                else:
                    await connection.rollback()
            except BaseException as error:
                await self._abandon(connection)
                self._raise_translated(error, connection)
            finally:
                del self._after_commit[connection]
                if task is not None:
                    self._task_transactions.pop(task, None)
        if not commit:
            return  # Rolled back: nothing happened.
        for callback in callbacks:
            try:
                callback()
            except Exception:
                # The transaction has committed: raising would tell the
                # caller that it failed.
                logger.exception("After-commit callback failed on %r", self)

    async def _abandon(self, connection: aiosqlite.Connection) -> None:
        """Roll back after an error; a connection that can't is not reused."""
        try:
            await connection.rollback()
        except asyncio.CancelledError:
            self._broken.add(connection)
            raise
        except Exception:
            self._broken.add(connection)

    def _raise_translated(
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
        self, error: BaseException, connection: aiosqlite.Connection | None = None
    ) -> BaseException:
        translated = error
        if isinstance(error, sqlite3.Error):
            translated = translate_error(error, self.db_name, self.lock_timeout)
        if self._closed and isinstance(error, ValueError):
            # aiosqlite's "Connection closed": close() closed it under us.
            return self._closed_error()
        if (
            connection is not None
            and isinstance(error, Exception)  # Not a cancellation.
            and not isinstance(translated, OperationalError | InterfaceError)
            and _is_closed(connection)
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

    # Connections.

    @asynccontextmanager
    async def _connection(self, *, writer: bool) -> AsyncIterator[aiosqlite.Connection]:
        self._check_open()
        if writer or self.is_memory:
            async with self._writer_lock:
                if self._writer is None:
                    self._writer = await self._open_connection()
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
                    connection = await self._open_connection()
                try:
                    yield connection
                finally:
                    if self._is_reusable(connection):
                        self._idle_readers.append(connection)
                    else:
                        self._discard(connection)

    def _is_reusable(self, connection: aiosqlite.Connection) -> bool:
        if self._closed or connection in self._broken:
            return False
        try:
            return not connection.in_transaction
        except ValueError:  # aiosqlite: "no active connection"
            return False

    async def _open_connection(self) -> aiosqlite.Connection:
        connection = aiosqlite.connect(
            self.db_name,
            uri=True,
            timeout=self.lock_timeout,
            # Autocommit mode: transactions begin where we say, as we say.
            isolation_level=None,
        )
        # Tracked before its thread starts, so that close() finds it even
        # if the opening task is cancelled halfway.
        self._connections.add(connection)
        try:
            await connection
            if not (self.is_memory or self._journal_mode_checked):
                await self._use_wal_journal(connection)
        except BaseException as error:
            self._discard(connection)
            self._raise_translated(error)
        if self._closed:
            self._discard(connection)
            raise self._closed_error()
        return connection

    async def _use_wal_journal(self, connection: aiosqlite.Connection) -> None:
        # The journal mode is stored in the file: set once, it stays.
        # Reading it is also the first read of the file, which fails here,
        # before anything is written, if the file is not a database.
        rows = list(await connection.execute_fetchall("PRAGMA journal_mode"))
        read_only = "ro" in self._query.get("mode", ())
        if str(rows[0][0]).lower() != "wal" and not read_only:
            await connection.execute_fetchall("PRAGMA journal_mode=WAL")
        self._journal_mode_checked = True

    def _discard(self, connection: aiosqlite.Connection) -> None:
        """Close ``connection`` in the background; :meth:`close` awaits it."""
        self._connections.discard(connection)
        self._broken.discard(connection)
        task = asyncio.get_running_loop().create_task(
            _close_connection(connection), name=f"close connection to {self.db_name}"
        )
        self._discarding.add(task)
        task.add_done_callback(self._discarding.discard)

    def _check_open(self) -> None:
        if self._closed:
            raise self._closed_error()

    def _closed_error(self) -> InterfaceError:
        return InterfaceError(f"{self!r} is closed")

    # Closing.

    async def close(self) -> None:
        """Close every connection, in use or idle; idempotent.

        Subscriptions on the datastore stop, and waiters that only it
        served fail with :class:`WaitInterruptedError`. Returns once the
        connections' threads have ended; if the caller is cancelled
        meanwhile, the closing goes on regardless.
        """
        if self._close_task is None:
            self._closed = True
            self._close_task = asyncio.ensure_future(self._close())
        await asyncio.shield(self._close_task)

    async def _close(self) -> None:
        boards = []
        if self._notifier is not None:
            boards = self._notifier.detach(self)
            self._notifier = None
        connections = list(self._connections)
        self._connections.clear()
        self._idle_readers.clear()
        self._writer = None
        await asyncio.gather(
            *(board.aclose() for board in boards),
            *(_close_connection(c) for c in connections),
            *self._discarding,
            return_exceptions=True,
        )


async def _close_connection(connection: aiosqlite.Connection) -> None:
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


def _is_closed(connection: aiosqlite.Connection) -> bool:
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


def _split_db_name(db_name: str) -> tuple[str, dict[str, list[str]]]:
    """The file path (or memory database name) and the URI query of ``db_name``."""
    if not db_name.startswith("file:"):
        return db_name, {}
    rest = db_name.removeprefix("file:").partition("#")[0]
    path, _, query = rest.partition("?")
    if path.startswith("//"):
        # "file://host/path": SQLite accepts only an empty host or "localhost".
        path = "/" + path[2:].partition("/")[2]
    return unquote(path), parse_qs(query)
