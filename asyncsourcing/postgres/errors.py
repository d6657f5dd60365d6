"""Translating asyncpg's exceptions into the PEP 249 errors of eventsourcing.

asyncpg raises its own classes: a :class:`asyncpg.PostgresError` subclass per
SQLSTATE, and client-side errors (:class:`asyncpg.InterfaceError` and friends).
Callers of the recorders catch :class:`eventsourcing.persistence.IntegrityError`
and the other PEP 249 errors, as with ``eventsourcing.postgres``; the asyncpg
exception stays attached as ``__cause__``.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterator

import asyncpg
from eventsourcing.persistence import (
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

__all__ = [
    "is_connection_lost",
    "translate_error",
    "translate_errors",
]

# The PEP 249 class of each SQLSTATE class (the first two characters of the
# code), following the mapping psycopg uses, so that both libraries raise the
# same class for the same server error.
_SQLSTATE_CLASSES: dict[str, type[PersistenceError]] = {
    "08": OperationalError,  # connection exception
    "0A": NotSupportedError,  # feature not supported
    "21": ProgrammingError,  # cardinality violation
    "22": DataError,  # data exception
    "23": IntegrityError,  # integrity constraint violation
    "24": InternalError,  # invalid cursor state
    "25": InternalError,  # invalid transaction state
    "26": ProgrammingError,  # invalid SQL statement name
    "27": OperationalError,  # triggered data change violation
    "28": OperationalError,  # invalid authorization specification
    "2B": InternalError,  # dependent privilege descriptors still exist
    "2D": InternalError,  # invalid transaction termination
    "2F": InternalError,  # SQL routine exception
    "34": ProgrammingError,  # invalid cursor name
    "38": InternalError,  # external routine exception
    "39": InternalError,  # external routine invocation exception
    "3B": InternalError,  # savepoint exception
    "3D": ProgrammingError,  # invalid catalog name
    "3F": ProgrammingError,  # invalid schema name
    "40": OperationalError,  # transaction rollback (serialization, deadlock)
    "42": ProgrammingError,  # syntax error or access rule violation
    "44": ProgrammingError,  # with check option violation
    "53": OperationalError,  # insufficient resources
    "54": OperationalError,  # program limit exceeded
    "55": OperationalError,  # object not in prerequisite state (lock timeout)
    "57": OperationalError,  # operator intervention (admin shutdown, cancel)
    "58": OperationalError,  # system error
    "F0": InternalError,  # configuration file error
    "HV": OperationalError,  # foreign data wrapper error
    "P0": InternalError,  # PL/pgSQL error
    "XX": InternalError,  # internal error
}

# SQLSTATEs whose class says something else, but which end the session: the
# server closes the connection after sending them.
_SQLSTATE_CODES: dict[str, type[PersistenceError]] = {
    "25P03": OperationalError,  # idle_in_transaction_session_timeout
    "25P04": OperationalError,  # transaction_timeout (PostgreSQL 17)
}

# The SQLSTATE classes of the errors that mean the session is gone (or never
# was): "08" connection exception; of class "57" operator intervention,
# admin_shutdown, crash_shutdown, cannot_connect_now, database_dropped and
# idle_session_timeout ("57P", not query_canceled "57014").
_SESSION_LOST_SQLSTATE_PREFIXES = ("08", "57P", "25P03", "25P04")

# How far down a chain of translated errors to look for asyncpg's.
_MAX_CAUSES = 8

# What asyncpg raises: the server's errors, and the driver's own.
_DRIVER_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
)
# What opening a connection also raises: the socket's errors.
_CONNECT_ERRORS = (*_DRIVER_ERRORS, OSError, TimeoutError)

# asyncpg's message for a statement given the wrong number of arguments: an
# InterfaceError, but the caller's mistake, not the connection's.
_WRONG_ARGUMENT_COUNT = "the server expects "


def translate_error(error: BaseException) -> PersistenceError:
    """The PEP 249 error for an asyncpg exception (or a connection failure).

    What the connection or the driver's state is to blame for comes out as
    :class:`OperationalError` (the connection or session is lost: socket
    errors, ``pg_terminate_backend``, an idle-in-transaction timeout, a
    server shutdown) or :class:`InterfaceError` (asyncpg's client-side
    state: a closed connection, a connection that asyncpg has already
    released to its pool, an operation that asyncpg refuses because its
    protocol is in another state). Projection runners reconnect or stop on
    these two, so they must never stand for the event's own error.
    """
    message = str(error) or type(error).__name__
    if isinstance(error, asyncpg.PostgresError):
        detail = getattr(error, "detail", None)
        if detail:
            message = f"{message}\nDETAIL: {detail}"
        sqlstate = getattr(error, "sqlstate", None) or ""
        cls = _SQLSTATE_CODES.get(sqlstate) or _SQLSTATE_CLASSES.get(
            sqlstate[:2], DatabaseError
        )
        return cls(message)
    if isinstance(error, asyncpg.exceptions._base.DataError):
        # Client-side: a query argument could not be encoded.
        return DataError(message)
    if isinstance(error, asyncpg.InterfaceError):
        if message.startswith(_WRONG_ARGUMENT_COUNT):
            return ProgrammingError(message)
        return InterfaceError(message)
    if isinstance(error, asyncpg.exceptions.InternalClientError):
        # asyncpg's protocol is not in the state an operation needs ("cannot
        # switch to state 12; another operation (2) is in progress"), as
        # after a connection was lost mid-exchange: the driver's state, not
        # the server's, and not the event's.
        return InterfaceError(message)
    if isinstance(error, OSError | TimeoutError | ssl.SSLError):
        return OperationalError(f"Cannot connect to PostgreSQL: {message}")
    return PersistenceError(message)


def is_connection_lost(error: BaseException) -> bool:
    """True if ``error`` (or its cause) says the connection cannot be used.

    The connection or session is gone, or asyncpg's state of the connection
    is broken: an idempotent read may then be retried on another connection.
    A translated error is judged by its asyncpg (or socket) cause, found
    down its chain of causes (a lost connection's error may wrap another
    translated error).
    """
    cause: BaseException | None = error
    for _ in range(_MAX_CAUSES):
        if not isinstance(cause, PersistenceError):
            break
        cause = cause.__cause__
    if cause is None or isinstance(cause, PersistenceError):
        return False
    if isinstance(cause, asyncpg.PostgresError):
        sqlstate = getattr(cause, "sqlstate", None) or ""
        return sqlstate.startswith(_SESSION_LOST_SQLSTATE_PREFIXES)
    if isinstance(cause, asyncpg.InterfaceError):
        return not (
            isinstance(cause, asyncpg.exceptions._base.DataError)
            or str(cause).startswith(_WRONG_ARGUMENT_COUNT)
        )
    if isinstance(cause, TimeoutError):
        # No connection in time (the pool is exhausted, or the server does
        # not answer): trying again would wait as long again.
        return False
    return isinstance(cause, asyncpg.exceptions.InternalClientError | OSError)


@contextlib.contextmanager
def translate_errors(*, connecting: bool = False) -> Iterator[None]:
    """Raise asyncpg's errors as PEP 249 errors, chained to the original.

    ``connecting``: also the socket errors (:class:`OSError`,
    :class:`TimeoutError`) of opening a connection. Only there: elsewhere a
    builtin :class:`TimeoutError` is the caller's own (``wait()`` raises
    one) and must not be turned into a database error.
    """
    caught = _CONNECT_ERRORS if connecting else _DRIVER_ERRORS
    try:
        yield
    except caught as error:
        raise translate_error(error) from error
