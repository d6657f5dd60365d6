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
    "translate_connect_errors",
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

# Errors that mean the connection to the server is gone, so that an
# idempotent read may be retried on another connection.
_CONNECTION_LOST = (
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.PostgresConnectionError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError,
    ConnectionError,
)


def translate_error(error: BaseException) -> PersistenceError:
    """The PEP 249 error for an asyncpg exception (or a connection failure)."""
    message = str(error) or type(error).__name__
    if isinstance(error, asyncpg.PostgresError):
        detail = getattr(error, "detail", None)
        if detail:
            message = f"{message}\nDETAIL: {detail}"
        sqlstate = getattr(error, "sqlstate", None) or ""
        cls = _SQLSTATE_CLASSES.get(sqlstate[:2], DatabaseError)
        return cls(message)
    if isinstance(error, asyncpg.exceptions.DataError):
        # Client-side: a query argument could not be encoded.
        return DataError(message)
    if isinstance(error, asyncpg.ConnectionDoesNotExistError):
        return OperationalError(message)
    if isinstance(error, asyncpg.InterfaceError):
        return InterfaceError(message)
    if isinstance(error, OSError | TimeoutError | ssl.SSLError):
        return OperationalError(f"Cannot connect to PostgreSQL: {message}")
    if isinstance(error, asyncpg.exceptions.InternalClientError):
        return InternalError(message)
    return PersistenceError(message)


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Raise asyncpg's errors as PEP 249 errors, chained to the original."""
    try:
        yield
    except (
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        asyncpg.exceptions.InternalClientError,
    ) as error:
        raise translate_error(error) from error


@contextlib.contextmanager
def translate_connect_errors() -> Iterator[None]:
    """Like :func:`translate_errors`, also for the socket errors of connecting.

    Only around connecting: elsewhere a builtin :class:`TimeoutError` is the
    caller's own (``wait()`` raises one) and must not be turned into a
    database error.
    """
    try:
        yield
    except (
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        asyncpg.exceptions.InternalClientError,
        OSError,
        TimeoutError,
    ) as error:
        raise translate_error(error) from error


def is_connection_lost(error: BaseException) -> bool:
    """True if ``error`` (or its cause) says the connection was lost."""
    cause = error if isinstance(error, _CONNECTION_LOST) else error.__cause__
    return isinstance(cause, _CONNECTION_LOST)
