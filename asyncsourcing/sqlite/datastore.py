"""The SQLite datastore: transactions on aiosqlite connections, and wake-ups.

The datastore implements :class:`~asyncsourcing.sql.datastore.SQLDatastore`
on the connections of :mod:`asyncsourcing.sqlite.connections`. Write
transactions begin with ``BEGIN IMMEDIATE``, so that writers, in this
process and in others, serialise at the start of their transactions and
commit notification ids in the order they were given; read transactions see
one snapshot and are rolled back. Commits wake the waiters and
subscriptions of the process through the database's
:class:`~asyncsourcing.sqlite.notifier.SQLiteNotifier`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Literal, TypeVar

import aiosqlite

from asyncsourcing.persistence import ProgrammingError
from asyncsourcing.resources import Resource
from asyncsourcing.sql import datastore as sql
from asyncsourcing.sql.transactions import PendingTableCreators, TaskTransactions
from asyncsourcing.sqlite.connections import SQLiteConnections, split_db_name
from asyncsourcing.sqlite.errors import translate_error
from asyncsourcing.sqlite.notifier import SQLiteNotifier, shared_notifier
from asyncsourcing.waiting import FetchMax, PositionBoard

__all__ = [
    "DEFAULT_LOCK_TIMEOUT",
    "DEFAULT_POLL_INTERVAL",
    "SQLiteDatastore",
    "TableCreator",
    "translate_error",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

TableCreator = sql.TableCreator[aiosqlite.Connection]
"""Creates tables with the given connection, inside a write transaction."""

DEFAULT_LOCK_TIMEOUT = 5.0
"""Seconds, as in eventsourcing: how long to wait for another connection's lock."""

DEFAULT_POLL_INTERVAL = 0.1
"""Seconds between reads that look for other processes' commits."""


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
        self._path, query = split_db_name(db_name)
        # Detected as eventsourcing does, so both libraries agree.
        self.is_memory = ":memory:" in db_name or "mode=memory" in db_name
        self.is_shared_memory = (
            self.is_memory
            and db_name.startswith("file:")
            and "shared" in query.get("cache", ())
        )
        self._connections = SQLiteConnections(
            self,
            db_name,
            lock_timeout=self.lock_timeout,
            pool_size=pool_size,
            is_memory=self.is_memory,
            read_only="ro" in query.get("mode", ()),
        )
        self._close_task: asyncio.Future[None] | None = None
        self._transactions = TaskTransactions[aiosqlite.Connection](self, logger)
        self._table_creators = PendingTableCreators[aiosqlite.Connection]()
        self._create_tables_on_first_use = create_tables
        self._notifier: SQLiteNotifier | None = None
        self._notifier_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.db_name!r})"

    @property
    def is_closed(self) -> bool:
        return self._connections.closed

    @property
    def cross_process_poll_interval(self) -> float | None:
        """The poll interval, or None when no other process can write.

        A private in-memory database is reachable only through this
        datastore, whose commits wake everything directly.
        """
        if self.is_memory and not self.is_shared_memory:
            return None
        return self.poll_interval

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
        joined = self._transactions.join(commit=commit)
        if joined is not None:
            yield joined
            return
        if self._table_creators:
            await self.create_tables()
        async with self._transaction(commit=commit) as connection:
            yield connection

    def in_transaction(self) -> bool:
        """True when the current task has a transaction open on this datastore."""
        return self._transactions.enclosing() is not None

    async def read(self, query: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
        """The result of ``query``, in a read transaction (see :meth:`transaction`).

        Inside a transaction of the task, on its connection, so that the
        query sees the transaction's writes. Not retried: a connection of
        a file database cannot be lost without the datastore closing it.
        """
        async with self.transaction() as connection:
            return await query(connection)

    @asynccontextmanager
    async def autocommit(self) -> AsyncIterator[aiosqlite.Connection]:
        """The writer connection outside any transaction.

        Each statement is a transaction of its own, which takes the write
        lock and commits when the statement ends: one statement, one trip to
        the connection's thread. Errors come out as in :meth:`transaction`.
        """
        if self.in_transaction():
            msg = f"autocommit() inside a transaction of its task on {self!r}"
            raise ProgrammingError(msg)
        if self._table_creators:
            await self.create_tables()
        async with self._connections.connection(writer=True) as connection:
            try:
                yield connection
            except BaseException as error:
                self._connections.raise_translated(error, connection)

    async def write(self, query: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
        """The result of ``query``, run on the writer connection outside any
        transaction: :meth:`autocommit` for one query, without its context
        managers (a save's insert runs it: one statement, one trip to the
        connection's thread). Raises :class:`ProgrammingError` inside a
        transaction of the task."""
        if self._transactions.enclosing() is not None:
            msg = f"write() inside a transaction of its task on {self!r}"
            raise ProgrammingError(msg)
        if self._table_creators:
            await self.create_tables()
        return await self._connections.run_writer(query)

    def call_after_commit(
        self, conn: aiosqlite.Connection, callback: Callable[[], None]
    ) -> None:
        """Call ``callback`` once the transaction of ``conn`` commits.

        Not called if the transaction rolls back. Raises
        :class:`ProgrammingError` if ``conn`` is not in a transaction of
        this datastore: a statement outside one has committed already, and
        one of another's would never call back.
        """
        if not self._transactions.call_after_commit(conn, callback):
            msg = f"The connection is not in a transaction of {self!r}"
            raise ProgrammingError(msg)

    @asynccontextmanager
    async def _transaction(
        self, *, commit: bool
    ) -> AsyncIterator[aiosqlite.Connection]:
        async with self._connections.connection(writer=commit) as connection:
            with self._transactions.opened(connection, commit=commit) as callbacks:
                try:
                    await connection.execute("BEGIN IMMEDIATE" if commit else "BEGIN")
                    yield connection
                    if commit:
                        await connection.commit()
                    else:
                        await connection.rollback()
                except BaseException as error:
                    await self._connections.abandon(connection)
                    self._connections.raise_translated(error, connection)
        if commit:
            self._transactions.run_after_commit(callbacks)

    # Tables.

    @asynccontextmanager
    async def creating_tables(self) -> AsyncIterator[aiosqlite.Connection]:
        """A write transaction for creating tables.

        ``BEGIN IMMEDIATE`` serialises it with every other writer of the
        database, in this process and in others. Inside a transaction of the
        task, it joins it as :meth:`transaction` does; it does not wait for
        the pending creators, which it may be running.
        """
        joined = self._transactions.join(commit=True)
        if joined is not None:
            yield joined
            return
        async with self._transaction(commit=True) as connection:
            yield connection

    def create_tables_on_first_use(self, creator: TableCreator) -> None:
        """Run ``creator`` (in :meth:`creating_tables`) before the next
        transaction, unless the ``create_tables`` setting is false."""
        if self._create_tables_on_first_use:
            self._table_creators.add(creator)

    def tables_created(self, creator: TableCreator) -> None:
        """``creator`` has run: it is pending no more."""
        self._table_creators.discard(creator)

    async def create_tables(self) -> None:
        """Run the pending table creators, in one write transaction.

        They are pending until they have succeeded: after an error, the next
        transaction runs them again (creators are idempotent).
        """
        await self._table_creators.run(partial(self._transaction, commit=True))

    # Wake-ups.

    @property
    def notifier(self) -> SQLiteNotifier:
        """The notifier of this database, in the running event loop.

        Shared by every datastore of the process on the same database file
        (found by its real path) or shared-cache memory database; a private
        in-memory database has a notifier of its own.
        """
        self._connections.check_open()
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

    def position_board(self, tracking_table: str, fetch_max: FetchMax) -> PositionBoard:
        """The notifier's board of ``tracking_table``, shared by the recorders
        of every datastore of the process on this database.

        Any of them committing tracking advances it; ``fetch_max`` reads
        positions for this datastore's waiters. While tasks wait, it
        re-reads their positions every :attr:`cross_process_poll_interval`
        seconds, to notice other processes' commits.
        """
        return self.notifier.position_board(
            self,
            tracking_table,
            fetch_max,
            poll_interval=self.cross_process_poll_interval,
        )

    def advance_position_board(
        self, tracking_table: str, application_name: str, position: int
    ) -> None:
        """Advance the notifier's board of ``tracking_table``, made if need be.

        Through the notifier, so that the waiters of every datastore of the
        process on this database are woken, whether or not this one has
        waiters of its own.
        """
        if self.is_closed:
            return  # Its waiters have been failed already.
        self.notifier.advance_position_board(
            tracking_table,
            application_name,
            position,
            poll_interval=self.cross_process_poll_interval,
        )

    # Closing.

    async def close(self) -> None:
        """Close every connection, in use or idle; idempotent.

        Subscriptions on the datastore stop, and waiters that only it
        served fail with :class:`WaitInterruptedError`. Returns once the
        connections' threads have ended; if the caller is cancelled
        meanwhile, the closing goes on regardless.
        """
        if self._close_task is None:
            # From now on nothing is handed out, even before _close() runs.
            self._connections.closed = True
            self._close_task = asyncio.ensure_future(self._close())
        await asyncio.shield(self._close_task)

    async def _close(self) -> None:
        boards = []
        if self._notifier is not None:
            boards = self._notifier.detach(self)
            self._notifier = None
        await asyncio.gather(
            *(board.aclose() for board in boards),
            self._connections.close(),
            return_exceptions=True,
        )


if TYPE_CHECKING:

    def _implements_the_protocol(
        datastore: SQLiteDatastore,
    ) -> sql.SQLDatastore[aiosqlite.Connection]:
        return datastore
