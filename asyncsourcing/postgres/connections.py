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
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeAlias, Union

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

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[PostgresConnection]:
        """A pooled connection for the block, given back however it ends.

        The block's errors come out as :func:`classify_error` says; a
        connection that may be left mid-protocol is closed, not lent again.
        """
        pool = await self._get_pool()
        timeout = self._settings.connect_timeout
        try:
            with translate_errors(connecting=True):
                conn = await pool.acquire(timeout=timeout)
        except OperationalError as error:
            if isinstance(error.__cause__, TimeoutError):
                msg = f"Timed out after {timeout}s getting a connection to PostgreSQL"
                raise OperationalError(msg) from error.__cause__
            raise
        try:
            yield conn
        except BaseException as error:
            translated = classify_error(conn, error)
            # A server's error (a conflict, say) or the caller's own leaves
            # the connection ready for the next statement; a lost connection
            # or an interrupted exchange may leave it mid-protocol.
            if isinstance(error.__cause__ or error, BROKEN_CONNECTION_ERRORS):
                terminate(conn)
            if translated is error:
                raise
            raise translated from error
        finally:
            await release(pool, conn)

    def check_open(self) -> None:
        if self.closed:
            msg = f"{self._owner!r} has been closed"
            raise InterfaceError(msg)

    async def close(self) -> None:
        """Close the pool, waiting a while for the lent connections."""
        self.closed = True
        pool, self._pool = self._pool, None
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
