"""The Postgres datastore: a lazily created asyncpg pool, one LISTEN connection,
the position boards of its tracking tables, and the creation of tables.

Everything the recorders of one factory share lives here:

* the connection pool, created on first use (constructing does no IO);
* the :class:`~asyncsourcing.postgres.listener.PostgresListener`, the one
  LISTEN connection of every subscription and waiter of this datastore;
* one :class:`~asyncsourcing.waiting.PositionBoard` per tracking table, so
  every recorder instance on that table shares its waiters' reads and is woken
  by the same announcements;
* the recorders whose tables are still to be created: the first connection
  handed out creates them, so a recorder constructed without IO (an
  application's) creates its tables on its first use.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any, Self, TypeAlias, Union

import asyncpg
import asyncpg.pool
from eventsourcing.persistence import InterfaceError, OperationalError, ProgrammingError
from eventsourcing.utils import Environment

from asyncsourcing.postgres.errors import (
    translate_connect_errors,
    translate_error,
    translate_errors,
)
from asyncsourcing.postgres.listener import PostgresListener
from asyncsourcing.postgres.settings import PostgresSettings
from asyncsourcing.resources import Resource
from asyncsourcing.waiting import PositionBoard

if TYPE_CHECKING:
    from asyncsourcing.persistence import Recorder

__all__ = ["PostgresConnection", "PostgresDatastore"]

logger = logging.getLogger(__name__)

#: What :meth:`PostgresDatastore.transaction` yields: a pooled asyncpg
#: connection (``isinstance(conn, asyncpg.Connection)`` is true for it).
PostgresConnection: TypeAlias = Union[  # forward references: no "|"
    "asyncpg.pool.PoolConnectionProxy[asyncpg.Record]",
    "asyncpg.Connection[asyncpg.Record]",
]

# Serialises table creation across processes (two concurrent "CREATE TABLE IF
# NOT EXISTS" of one table can fail on the catalog's unique index). Our own
# constant key: "asyncsrc" as a big-endian bigint.
_CREATE_TABLES_LOCK_KEY = int.from_bytes(b"asyncsrc", "big")

# Set while this task creates pending tables, so that a recorder's
# create_table() that asks the datastore for a connection does not wait for
# the creation it is part of.
_creating_tables: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "asyncsourcing_postgres_creating_tables", default=False
)

_POOL_CLOSE_TIMEOUT = 5.0

# What the error of a statement on a lost connection says (asyncpg only says
# that the connection is closed, or "released back to the pool").
_LOST = (
    "The connection to PostgreSQL was lost (the server ended the session: a "
    "restart, pg_terminate_backend(), a transaction left idle longer than "
    "POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT; or the network failed)"
)


class PostgresDatastore(Resource):
    """Connections to one PostgreSQL database and schema.

    Construct it with :class:`~asyncsourcing.postgres.settings.PostgresSettings`
    or :meth:`from_env`; nothing connects until the first awaited use.
    :meth:`transaction` and :meth:`connection` hand out pooled connections,
    translating asyncpg's errors into the PEP 249 errors of
    :mod:`eventsourcing.persistence`. :meth:`close` (or ``async with``)
    closes the pool and the LISTEN connection.
    """

    def __init__(self, settings: PostgresSettings) -> None:
        self.settings = settings
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool_lock = asyncio.Lock()
        self._closed = False
        self.listener = PostgresListener(
            self._connect_listener, poll_interval=settings.poll_interval
        )
        self._boards: dict[str, PositionBoard] = {}
        self._pending_tables: deque[Recorder] = deque()
        self._create_lock = asyncio.Lock()
        self._after_commit: dict[object, list[Callable[[], None]]] = {}
        # The transaction each task has open (connection, is it a write):
        # the task's nested transactions join it.
        self._task_transactions: dict[
            asyncio.Task[Any], tuple[PostgresConnection, bool]
        ] = {}

    @classmethod
    def from_env(cls, env: Environment | Mapping[str, str]) -> Self:
        """A datastore configured by ``POSTGRES_*`` environment variables."""
        return cls(PostgresSettings.from_env(env))

    def __repr__(self) -> str:
        s = self.settings
        return (
            f"{type(self).__name__}(host={s.host!r}, port={s.port!r}, "
            f"dbname={s.dbname!r}, user={s.user!r}, schema={s.schema!r})"
        )

    @property
    def schema(self) -> str:
        """The schema of the tables (``POSTGRES_SCHEMA``, default "public")."""
        return self.settings.schema

    @property
    def originator_id_type(self) -> str:
        """The type of the ``originator_id`` column: "uuid" or "text"."""
        return self.settings.originator_id_type

    @property
    def lock_timeout(self) -> int:
        """Seconds allowed to wait for an events table's lock (0: no limit)."""
        return self.settings.lock_timeout

    @property
    def is_closed(self) -> bool:
        return self._closed

    # Connections.

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[PostgresConnection]:
        """A pooled connection, outside any transaction (each statement commits).

        Creates the tables of recorders that are waiting for it first. Inside
        a :meth:`transaction` of the same task, it is that transaction's
        connection, so reads see the transaction's own writes (and a task
        never holds two pooled connections).
        """
        enclosing = self._enclosing_transaction()
        if enclosing is not None:
            with translate_errors():
                yield enclosing[0]
            return
        if not _creating_tables.get():
            await self._create_pending_tables()
        async with self._acquire() as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def transaction(
        self, *, commit: bool = False
    ) -> AsyncIterator[PostgresConnection]:
        """A pooled connection inside a transaction.

        The transaction commits when the block ends, if ``commit`` is true,
        and is rolled back otherwise, or when the block raises. asyncpg's
        errors raised in the block come out as PEP 249 errors; whatever the
        block raises once its connection is lost (terminated, timed out by
        the server) comes out as :class:`OperationalError`, or as
        :class:`InterfaceError` for asyncpg's own state: errors of the
        database, not of the caller's work.

        Inside a transaction of the same task, this joins it: it yields the
        enclosing connection, and the enclosing transaction commits or rolls
        back the whole (a projection runner batches events this way). A write
        cannot join a read transaction: that raises :class:`ProgrammingError`.
        """
        enclosing = self._enclosing_transaction()
        if enclosing is not None:
            conn, is_write = enclosing
            if commit and not is_write:
                msg = (
                    "A write transaction cannot join the read transaction that "
                    f"its task has open on {self!r}"
                )
                raise ProgrammingError(msg)
            with translate_errors():
                yield conn
            return
        task = asyncio.current_task()
        callbacks: list[Callable[[], None]] = []
        async with self.connection() as conn:
            transaction = conn.transaction()
            await transaction.start()
            self._after_commit[conn] = callbacks
            if task is not None:
                self._task_transactions[task] = (conn, commit)
            try:
                yield conn
            except BaseException:
                await _rollback_quietly(transaction)
                raise
            else:
                if commit:
                    await transaction.commit()
                else:
                    await transaction.rollback()
            finally:
                self._after_commit.pop(conn, None)
                if task is not None:
                    self._task_transactions.pop(task, None)
        if commit:
            for callback in callbacks:
                _call(callback)

    def in_transaction(self) -> bool:
        """True when the current task has a transaction open on this datastore."""
        return self._enclosing_transaction() is not None

    def _enclosing_transaction(self) -> tuple[PostgresConnection, bool] | None:
        task = asyncio.current_task()
        return None if task is None else self._task_transactions.get(task)

    def call_after_commit(
        self, conn: PostgresConnection, callback: Callable[[], None]
    ) -> None:
        """Call ``callback`` once the work done on ``conn`` is committed.

        In a :meth:`transaction` block, after its commit (never after a
        rollback); on a connection outside any transaction, at once, because
        its statements have already committed; in a transaction that this
        datastore did not start, never.
        """
        callbacks = self._after_commit.get(conn)
        if callbacks is not None:
            callbacks.append(callback)
        elif not conn.is_in_transaction():
            _call(callback)

    @contextlib.asynccontextmanager
    async def _acquire(self) -> AsyncIterator[PostgresConnection]:
        pool = await self._get_pool()
        timeout = self.settings.connect_timeout
        try:
            with translate_connect_errors():
                conn = await pool.acquire(timeout=timeout)
        except OperationalError as error:
            if isinstance(error.__cause__, TimeoutError):
                msg = f"Timed out after {timeout}s getting a connection to PostgreSQL"
                raise OperationalError(msg) from error.__cause__
            raise
        try:
            yield conn
        except BaseException as error:
            translated = _classify(conn, error)
            # A server's error (a conflict, say) or the caller's own leaves
            # the connection ready for the next statement; a lost connection
            # or an interrupted exchange may leave it mid-protocol, so it is
            # not handed out again.
            if isinstance(error.__cause__ or error, _BROKEN_CONNECTION_ERRORS):
                _terminate(conn)
            if translated is error:
                raise
            raise translated from error
        finally:
            await _release(pool, conn)

    async def _get_pool(self) -> asyncpg.Pool[asyncpg.Record]:
        if self._pool is not None:
            if self._loop is not asyncio.get_running_loop():
                # asyncpg's connections belong to the loop that opened them.
                msg = (
                    f"{self!r} was opened in another event loop: "
                    "use one datastore (and factory) per event loop"
                )
                raise InterfaceError(msg)
            return self._pool
        async with self._pool_lock:
            self._check_open()
            if self._pool is None:
                s = self.settings
                with translate_connect_errors():
                    pool = await asyncpg.create_pool(
                        min_size=s.pool_size,
                        max_size=s.pool_size + s.max_overflow,
                        max_inactive_connection_lifetime=s.conn_max_age,
                        init=self._init_connection,
                        # Skip asyncpg's reset query (a round trip per use):
                        # an open transaction is still rolled back, and our
                        # statements leave no session state (SET LOCAL and
                        # transaction-scoped advisory locks only).
                        reset=_keep_session,
                        **s.connect_kwargs(),
                    )
                if self._closed:  # Closed while connecting.
                    pool.terminate()
                    self._check_open()
                self._pool = pool
                self._loop = asyncio.get_running_loop()
            return self._pool

    async def _init_connection(self, conn: asyncpg.Connection[Any]) -> None:
        """Called for each new pooled connection; subclasses may add to it."""

    async def _connect_listener(self) -> asyncpg.Connection[Any]:
        self._check_open()
        return await asyncpg.connect(**self.settings.connect_kwargs(listen=True))

    def _check_open(self) -> None:
        if self._closed:
            msg = f"{self!r} has been closed"
            raise InterfaceError(msg)

    # Tables.

    def register_table_creation(self, recorder: Recorder) -> None:
        """Create ``recorder``'s tables before the next connection is handed out.

        Does nothing when the settings say tables are created elsewhere
        (``CREATE_TABLE=false``).
        """
        if self.settings.create_tables and recorder not in self._pending_tables:
            self._pending_tables.append(recorder)

    def table_creation_done(self, recorder: Recorder) -> None:
        """``recorder``'s tables exist: don't create them on first use."""
        with contextlib.suppress(ValueError):
            self._pending_tables.remove(recorder)

    @contextlib.asynccontextmanager
    async def creating_tables(self) -> AsyncIterator[PostgresConnection]:
        """A transaction for creating tables, serialised across processes."""
        async with self._acquire() as conn, conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock($1)", _CREATE_TABLES_LOCK_KEY
            )
            yield conn

    async def _create_pending_tables(self) -> None:
        if not self._pending_tables:
            return
        async with self._create_lock:
            token = _creating_tables.set(True)
            try:
                while self._pending_tables:
                    # Left in the queue until its tables exist, so that other
                    # tasks wait on the lock meanwhile, and after a failure
                    # the next use tries again.
                    recorder = self._pending_tables[0]
                    await recorder.create_table()
                    self.table_creation_done(recorder)
            finally:
                _creating_tables.reset(token)

    # Position boards.

    def position_board(
        self,
        tracking_table_name: str,
        fetch_max: Callable[[str], Awaitable[int | None]],
        channel: str,
    ) -> PositionBoard:
        """The board of ``tracking_table_name``, shared by all its recorders.

        Waiters are woken by this process's commits (see
        :meth:`call_after_commit`) and by notifications on ``channel``, whose
        payload names the schema, table, application and position: no query
        is needed to wake them. Before its first read the board makes sure the
        channel is listened to. The listener's poll ticks re-read what tasks
        wait for, as a safety net.
        """
        board = self._boards.get(tracking_table_name)
        if board is None:
            self._check_open()
            board = PositionBoard(
                fetch_max,
                before_fetch=partial(self.listener.listening, channel),
                # The listener's task ticks for every board: no task per board.
                poll_interval=None,
            )
            self.listener.register(
                channel,
                on_notify=partial(
                    self._on_tracking_notified, tracking_table_name, board
                ),
                on_resync=partial(_resync_board, board),
            )
            self._boards[tracking_table_name] = board
        return board

    def existing_position_board(self, tracking_table_name: str) -> PositionBoard | None:
        """The board of ``tracking_table_name`` if someone has waited on it."""
        return self._boards.get(tracking_table_name)

    def _on_tracking_notified(
        self, tracking_table_name: str, board: PositionBoard, payload: str
    ) -> None:
        if not payload:
            return  # Not ours (an events channel of another schema, say).
        try:
            message = json.loads(payload)
            schema = message["schema"]
            table = message["table"]
            application_name = message["application_name"]
            position = int(message["notification_id"])
        except (ValueError, KeyError, TypeError):
            logger.warning("Unexpected tracking notification payload: %r", payload)
            board.refresh()
            return
        # The channel is named after the table only: another schema's table
        # of the same name announces on it too.
        if schema == self.schema and table == tracking_table_name:
            board.advance(application_name, position)

    # Closing.

    async def close(self) -> None:
        """Close the LISTEN connection, the boards and the pool; idempotent.

        Subscriptions of this datastore stop; waiters get
        :class:`~eventsourcing.persistence.WaitInterruptedError`.
        """
        if self._closed:
            return
        self._closed = True
        pool, self._pool = self._pool, None
        try:
            await self.listener.close()
            boards = list(self._boards.values())
            self._boards.clear()
            for board in boards:
                await board.aclose()
        finally:
            if pool is not None:
                await _close_pool(pool)


def _resync_board(board: PositionBoard, missed: bool) -> None:
    if missed:
        # Announcements may have been lost: what the board knows may be stale.
        board.forget()
    board.refresh()


def _call(callback: Callable[[], None]) -> None:
    try:
        callback()
    except Exception:
        logger.exception("Error in an after-commit callback")


async def _rollback_quietly(transaction: asyncpg.transaction.Transaction) -> None:
    # The original error matters, not a failure to roll back (the connection
    # may be gone, or asyncpg's protocol left in another state: the pool
    # discards it on release).
    try:
        await transaction.rollback()
    except Exception as error:
        logger.debug("Rollback failed: %r", error)


def _classify(conn: PostgresConnection, error: BaseException) -> BaseException:
    """What a block that used ``conn`` raises for ``error``.

    asyncpg's errors come out as PEP 249 errors, the caller's own errors as
    they are, except when ``conn`` has been lost meanwhile: then the block's
    work cannot have committed, whatever the error says (asyncpg's "released
    back to the pool", or a projection's own error wrapping asyncpg's), so
    it comes out as an :class:`OperationalError`, which projection runners
    answer by reconnecting or stopping, never by skipping the event.
    """
    translated = error
    if isinstance(
        error,
        asyncpg.PostgresError
        | asyncpg.InterfaceError
        | asyncpg.exceptions.InternalClientError,
    ):
        translated = translate_error(error)
    if (
        isinstance(error, Exception)  # Not a cancellation.
        and not isinstance(translated, OperationalError)
        and _is_lost(conn)
    ):
        return OperationalError(f"{_LOST}: {type(error).__name__}: {error}")
    return translated


def _is_lost(conn: PostgresConnection) -> bool:
    """True if ``conn`` is closed, or asyncpg has taken it back from us."""
    try:
        return conn.is_closed()
    except asyncpg.InterfaceError:
        # "connection has been released back to the pool": asyncpg detaches
        # a pooled connection from its proxy when the connection is lost.
        return True


def _terminate(conn: PostgresConnection) -> None:
    # Already released ("connection has been released back to the pool"):
    # asyncpg has discarded the lost connection itself.
    with contextlib.suppress(asyncpg.InterfaceError):
        conn.terminate()


async def _release(
    pool: asyncpg.Pool[asyncpg.Record],
    conn: asyncpg.pool.PoolConnectionProxy[asyncpg.Record],
) -> None:
    """Give ``conn`` back to ``pool``, which discards it if it is broken.

    The block's outcome is settled by now (committed, rolled back or
    raised): a failure to reset the connection, or a pool terminated
    meanwhile, must not replace it. asyncpg terminates a connection whose
    reset fails, so nothing is left open.
    """
    try:
        # asyncpg shields the release, and discards a terminated connection.
        await pool.release(conn)
    except Exception as error:
        logger.debug("Releasing a Postgres connection failed: %r", error)


async def _close_pool(pool: asyncpg.Pool[asyncpg.Record]) -> None:
    try:
        await asyncio.wait_for(pool.close(), _POOL_CLOSE_TIMEOUT)
    except TimeoutError:
        # A connection was not released in time: close them all now rather
        # than leave any behind.
        logger.warning("Postgres pool did not close in time; terminating it")
        pool.terminate()
    except BaseException:
        # Our caller is cancelled: still leave no connection behind.
        pool.terminate()
        raise


async def _keep_session(conn: asyncpg.Connection[Any]) -> None:
    """The pool's reset: nothing beyond asyncpg's rollback of an open transaction."""


# What a connection may be left unusable by (the cause, for translated errors).
_BROKEN_CONNECTION_ERRORS = (
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    ConnectionError,
    OSError,
    TimeoutError,
    asyncio.CancelledError,
)
