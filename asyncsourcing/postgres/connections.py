"""The pooled asyncpg connections of a datastore: opening, lending, closing.

:class:`PostgresConnections` creates the pool on first use and lends its
connections. A block that uses one may fail because of the server (a
conflict), because of the caller, or because the connection was lost
meanwhile: :func:`classify_error` says which error the block raises, and
:data:`BROKEN_CONNECTION_ERRORS` which connections must not be lent again.
Nothing is left open, whatever fails or is cancelled meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, NoReturn, TypeAlias, TypeVar, Union

import asyncpg
import asyncpg.pool
from eventsourcing.persistence import InterfaceError, OperationalError

from asyncsourcing.postgres.errors import translate_error, translate_errors

if TYPE_CHECKING:
    from asyncsourcing.postgres.settings import PostgresSettings

__all__ = [
    "BROKEN_CONNECTION_ERRORS",
    "PostgresConnection",
    "PostgresConnections",
    "classify_error",
    "close_pool",
    "keep_session",
    "release",
    "rollback_quietly",
    "terminate",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: What :meth:`PostgresDatastore.transaction` yields: a pooled asyncpg
#: connection (``isinstance(conn, asyncpg.Connection)`` is true for it).
PostgresConnection: TypeAlias = Union[  # forward references: no "|"
    "asyncpg.pool.PoolConnectionProxy[asyncpg.Record]",
    "asyncpg.Connection[asyncpg.Record]",
]

# What a connection may be left unusable by (the cause, for translated errors).
BROKEN_CONNECTION_ERRORS = (
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    ConnectionError,
    OSError,
    TimeoutError,
    asyncio.CancelledError,
)

_POOL_CLOSE_TIMEOUT = 5.0

# What the error of a statement on a lost connection says (asyncpg only says
# that the connection is closed, or "released back to the pool").
_LOST = (
    "The connection to PostgreSQL was lost (the server ended the session: a "
    "restart, pg_terminate_backend(), a transaction left idle longer than "
    "POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT; or the network failed)"
)


_Kept: TypeAlias = tuple[
    "asyncpg.Pool[asyncpg.Record]", "asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"
]


class PostgresConnections:
    """The connection pool of a datastore, created on first use.

    ``owner`` (the datastore) names it in errors; ``init`` is called with
    each new connection of the pool. The pool belongs to the event loop
    that created it, as asyncpg's connections do.
    """

    def __init__(
        self,
        owner: object,
        settings: PostgresSettings,
        init: Callable[[asyncpg.Connection[Any]], Coroutine[Any, Any, None]],
    ) -> None:
        self.closed = False
        """Set when the owner starts closing: from then on nothing is lent."""
        self._owner = owner
        self._settings = settings
        self._init = init
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool_lock = asyncio.Lock()
        # The connection that acquire_kept() keeps from one block to the
        # next (with its pool), and whether a block has it.
        self._kept: _Kept | None = None
        self._kept_lent = False
        # A pool of one connection keeps it free for everything else.
        self._keeps = settings.pool_size + settings.max_overflow > 1

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[PostgresConnection]:
        """A pooled connection for the block, given back however it ends.

        The block's errors come out as :func:`classify_error` says; a
        connection that may be left mid-protocol is closed, not lent again.
        """
        pool = await self._get_pool()
        if self._kept is not None and not self._kept_lent and _exhausted(pool):
            # Rather than wait, take the connection kept for lone writes.
            await self._give_back_kept()
        conn = await self._take(pool)
        try:
            yield conn
        except BaseException as error:
            _raise_classified(conn, error)
        finally:
            await release(pool, conn)

    async def run_kept(self, query: Callable[[PostgresConnection], Awaitable[T]]) -> T:
        """The result of ``query``, run on a pooled connection kept for the next.

        For the writes that run alone, one after the other (a save's
        insert): a lone writer then skips the pool's acquire and release (a
        task and a timer each in asyncpg, and a few turns of the event
        loop). The connection is one of the pool's, lent to one query at a
        time: a query that finds it lent, or a pool of one connection, runs
        on one that :meth:`acquire` gives. It is kept only while the pool has
        another to spare: :meth:`acquire` takes it back rather than wait.
        Errors come out as there; a connection that may be left
        mid-protocol, or that was lost meanwhile, is not kept. :meth:`close`
        gives it back.
        """
        if self._kept_lent or not self._keeps:
            async with self.acquire() as conn:
                return await query(conn)
        pool = await self._get_pool()
        self._kept_lent = True
        try:
            kept = self._kept
            if kept is not None and kept[0] is pool and not _is_lost(kept[1]):
                conn = kept[1]
            else:
                self._kept = None
                if kept is not None:
                    await release(*kept)  # Lost: asyncpg has it back already.
                conn = await self._take(pool)
                self._kept = (pool, conn)
            try:
                return await query(conn)
            except BaseException as error:
                broken = isinstance(error.__cause__ or error, BROKEN_CONNECTION_ERRORS)
                if broken:
                    self._kept = None
                try:
                    _raise_classified(conn, error)  # Closes a broken one.
                finally:
                    if broken:
                        await release(pool, conn)
        finally:
            self._kept_lent = False
            if self.closed:
                await self._give_back_kept()

    async def _take(
        self, pool: asyncpg.Pool[asyncpg.Record]
    ) -> asyncpg.pool.PoolConnectionProxy[asyncpg.Record]:
        """A connection of ``pool``, waiting at most the connect timeout."""
        timeout = self._settings.connect_timeout
        try:
            with translate_errors(connecting=True):
                return await pool.acquire(timeout=timeout)
        except OperationalError as error:
            if isinstance(error.__cause__, TimeoutError):
                msg = f"Timed out after {timeout}s getting a connection to PostgreSQL"
                raise OperationalError(msg) from error.__cause__
            raise

    async def _give_back_kept(self) -> None:
        """Give the kept connection back to its pool, unless a block has it
        (which gives it back as it ends, once closed)."""
        if self._kept is not None and not self._kept_lent:
            kept, self._kept = self._kept, None
            await release(*kept)

    def check_open(self) -> None:
        if self.closed:
            msg = f"{self._owner!r} has been closed"
            raise InterfaceError(msg)

    async def close(self) -> None:
        """Close the pool, waiting a while for the lent connections."""
        self.closed = True
        pool, self._pool = self._pool, None
        await self._give_back_kept()
        if pool is not None:
            await close_pool(pool)

    async def _get_pool(self) -> asyncpg.Pool[asyncpg.Record]:
        self.check_open()
        if self._pool is not None:
            if self._loop is not asyncio.get_running_loop():
                # asyncpg's connections belong to the loop that opened them.
                msg = (
                    f"{self._owner!r} was opened in another event loop: "
                    "use one datastore (and factory) per event loop"
                )
                raise InterfaceError(msg)
            return self._pool
        async with self._pool_lock:
            self.check_open()
            if self._pool is None:
                s = self._settings
                with translate_errors(connecting=True):
                    pool = await asyncpg.create_pool(
                        min_size=s.pool_size,
                        max_size=s.pool_size + s.max_overflow,
                        max_inactive_connection_lifetime=s.conn_max_age,
                        init=self._init,
                        # Skip asyncpg's reset query (a round trip per use):
                        # an open transaction is still rolled back, and our
                        # statements leave no session state (SET LOCAL and
                        # transaction-scoped advisory locks only).
                        reset=keep_session,
                        **s.connect_kwargs(),
                    )
                if self.closed:  # Closed while connecting.
                    pool.terminate()
                    self.check_open()
                self._pool = pool
                self._loop = asyncio.get_running_loop()
            return self._pool


def _exhausted(pool: asyncpg.Pool[asyncpg.Record]) -> bool:
    """Whether ``pool`` has no idle connection and may open no other."""
    return pool.get_idle_size() == 0 and pool.get_size() >= pool.get_max_size()


def _raise_classified(conn: PostgresConnection, error: BaseException) -> NoReturn:
    """Raise what a block that used ``conn`` raises for ``error`` (see
    :func:`classify_error`), closing ``conn`` if it may be left mid-protocol."""
    translated = classify_error(conn, error)
    # A server's error (a conflict, say) or the caller's own leaves the
    # connection ready for the next statement; a lost connection or an
    # interrupted exchange may leave it mid-protocol.
    if isinstance(error.__cause__ or error, BROKEN_CONNECTION_ERRORS):
        terminate(conn)
    if translated is error:
        raise error
    raise translated from error


def classify_error(conn: PostgresConnection, error: BaseException) -> BaseException:
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


def terminate(conn: PostgresConnection) -> None:
    """Close ``conn`` at once, so that the pool does not hand it out again."""
    # Already released ("connection has been released back to the pool"):
    # asyncpg has discarded the lost connection itself.
    with contextlib.suppress(asyncpg.InterfaceError):
        conn.terminate()


async def rollback_quietly(transaction: asyncpg.transaction.Transaction) -> None:
    """Roll ``transaction`` back after its block failed, raising nothing more."""
    # The original error matters, not a failure to roll back (the connection
    # may be gone, or asyncpg's protocol left in another state: the pool
    # discards it on release).
    try:
        await transaction.rollback()
    except Exception as error:
        logger.debug("Rollback failed: %r", error)


async def release(
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


async def close_pool(pool: asyncpg.Pool[asyncpg.Record]) -> None:
    """Close ``pool``, terminating what is not released in time, or at once
    if the caller is cancelled."""
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


async def keep_session(conn: asyncpg.Connection[Any]) -> None:
    """The pool's reset: nothing beyond asyncpg's rollback of an open transaction."""
