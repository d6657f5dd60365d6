"""Translating sqlite3's exceptions into the PEP 249 errors of eventsourcing.

sqlite3 raises its own classes, whose names are PEP 249's: callers of the
recorders catch :class:`eventsourcing.persistence.IntegrityError` and the
other PEP 249 errors, as with ``eventsourcing.sqlite``; the sqlite3
exception stays attached as ``__cause__``.
"""

from __future__ import annotations

import sqlite3

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

__all__ = ["translate_error"]

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
