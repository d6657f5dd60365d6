"""Settings of an SQLite datastore, and their parsing.

The environment variables keep eventsourcing's names (``SQLITE_DBNAME``,
``SQLITE_LOCK_TIMEOUT``, ``ORIGINATOR_ID_TYPE``, ``SINGLE_ROW_TRACKING``,
``CREATE_TABLE``), each of which may be prefixed with the environment's
name; ``SQLITE_POLL_INTERVAL`` and ``SQLITE_TRACKING_TABLE`` are new. Values
are read as in every backend (:mod:`asyncsourcing.settings`).

Unlike Postgres's, the first missing or malformed setting raises, alone:
its :class:`SQLiteSettingsError` names every variable that may hold it
(``APP_SQLITE_LOCK_TIMEOUT or SQLITE_LOCK_TIMEOUT``), as ``eventsourcing.sqlite``
does for the database name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Self

from eventsourcing.persistence import InfrastructureFactoryError

from asyncsourcing.persistence import ProgrammingError
from asyncsourcing.settings import EnvReader, parse_bool, parse_choice, parse_number
from asyncsourcing.sqlite.datastore import (
    DEFAULT_LOCK_TIMEOUT,
    DEFAULT_POLL_INTERVAL,
    SQLiteDatastore,
)
from asyncsourcing.sqlite.recorders import SQLiteRecorder

if TYPE_CHECKING:
    from collections.abc import Mapping

    from eventsourcing.utils import Environment

__all__ = ["SQLiteSettings", "SQLiteSettingsError"]

SQLITE_DBNAME = "SQLITE_DBNAME"
SQLITE_LOCK_TIMEOUT = "SQLITE_LOCK_TIMEOUT"
SQLITE_POLL_INTERVAL = "SQLITE_POLL_INTERVAL"
SQLITE_TRACKING_TABLE = "SQLITE_TRACKING_TABLE"
SINGLE_ROW_TRACKING = "SINGLE_ROW_TRACKING"
ORIGINATOR_ID_TYPE = "ORIGINATOR_ID_TYPE"
CREATE_TABLE = "CREATE_TABLE"

_ORIGINATOR_ID_TYPES: tuple[Literal["uuid", "text"], ...] = ("uuid", "text")


class SQLiteSettingsError(InfrastructureFactoryError, OSError):
    """An SQLite setting is missing or malformed; the message names it.

    An :class:`~eventsourcing.persistence.InfrastructureFactoryError`, like
    the other errors of constructing a factory, and an :class:`OSError`,
    which is what ``eventsourcing.sqlite`` raises for the same mistakes.
    """


@dataclass(frozen=True, kw_only=True)
class SQLiteSettings:
    """What an :class:`~asyncsourcing.sqlite.SQLiteFactory` needs.

    Validated on construction (:class:`SQLiteSettingsError` names every bad
    field). Durations are in seconds.
    """

    #: A file path, ``:memory:`` or a ``file:`` URI.
    db_name: str
    #: Time a connection waits for another connection's lock (0: no wait).
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    #: Time between reads that look for other processes' commits while
    #: something waits; commits in this process wake waiters directly.
    poll_interval: float = DEFAULT_POLL_INTERVAL
    originator_id_type: Literal["uuid", "text"] = "uuid"
    #: Whether recorders create their tables on first use.
    create_tables: bool = True
    #: The tracking table of the factory's views; None: named after the
    #: environment's name (see
    #: :meth:`~asyncsourcing.sqlite.SQLiteFactory.tracking_table_name`).
    tracking_table: str | None = None

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not self.db_name:
            problems.append("'db_name': must not be empty")
        if not (self.lock_timeout >= 0 and math.isfinite(self.lock_timeout)):
            problems.append(
                f"'lock_timeout': must not be negative, got {self.lock_timeout!r}"
            )
        if not (self.poll_interval > 0 and math.isfinite(self.poll_interval)):
            problems.append(
                "'poll_interval': must be a positive number, "
                f"got {self.poll_interval!r}"
            )
        if self.originator_id_type not in _ORIGINATOR_ID_TYPES:
            problems.append("'originator_id_type': must be 'uuid' or 'text'")
        if self.tracking_table is not None:
            try:
                SQLiteRecorder.check_identifier_length(self.tracking_table)
            except ProgrammingError as error:
                problems.append(f"'tracking_table': {error}")
        if problems:
            msg = "\n".join(f"Invalid SQLite setting {p}" for p in problems)
            raise SQLiteSettingsError(msg)

    @classmethod
    def from_env(cls, env: Environment | Mapping[str, str]) -> Self:
        """Settings from environment variables (``eventsourcing``'s names).

        With an :class:`~eventsourcing.utils.Environment` that has a name,
        ``NAME_SQLITE_DBNAME`` wins over ``SQLITE_DBNAME``, and so on.

        :raises SQLiteSettingsError: for the first setting found missing or
            malformed, naming the variables that may hold it.
        """
        reader = EnvReader(env)
        # As eventsourcing: the name is used as given, spaces and all.
        db_name = reader.env.get(SQLITE_DBNAME)
        if not db_name:
            msg = (
                "SQLite database name not found in environment with keys: "
                f"{', '.join(reader.keys(SQLITE_DBNAME))}"
            )
            raise SQLiteSettingsError(msg)
        if not _boolean(reader, SINGLE_ROW_TRACKING, default=True):
            msg = (
                f"{_either(reader, SINGLE_ROW_TRACKING)} is false, but only "
                "single-row tracking (eventsourcing 9.5's layout) is supported"
            )
            raise SQLiteSettingsError(msg)
        # Unstripped, as eventsourcing reads it.
        id_type = reader.env.get(ORIGINATOR_ID_TYPE) or "uuid"
        try:
            originator_id_type = parse_choice(id_type, _ORIGINATOR_ID_TYPES)
        except ValueError:
            msg = (
                f"Invalid {_either(reader, ORIGINATOR_ID_TYPE)} "
                f"{id_type.lower()!r}: expected 'uuid' or 'text'"
            )
            raise SQLiteSettingsError(msg) from None
        tracking_table = reader.get(SQLITE_TRACKING_TABLE) or None
        if tracking_table is not None:
            try:
                SQLiteRecorder.check_identifier_length(tracking_table)
            except ProgrammingError as error:
                msg = f"Invalid {_either(reader, SQLITE_TRACKING_TABLE)}: {error}"
                raise SQLiteSettingsError(msg) from None
        lock_timeout = _seconds(reader, SQLITE_LOCK_TIMEOUT, allow_zero=True)
        poll_interval = _seconds(reader, SQLITE_POLL_INTERVAL, allow_zero=False)
        return cls(
            db_name=db_name,
            lock_timeout=DEFAULT_LOCK_TIMEOUT if lock_timeout is None else lock_timeout,
            poll_interval=poll_interval or DEFAULT_POLL_INTERVAL,
            originator_id_type=originator_id_type,
            create_tables=_boolean(reader, CREATE_TABLE, default=True),
            tracking_table=tracking_table,
        )

    def create_datastore(self) -> SQLiteDatastore:
        """A new :class:`~asyncsourcing.sqlite.SQLiteDatastore` with these settings."""
        return SQLiteDatastore(
            self.db_name,
            lock_timeout=self.lock_timeout,
            poll_interval=self.poll_interval,
            originator_id_type=self.originator_id_type,
            create_tables=self.create_tables,
        )


def _either(reader: EnvReader, key: str) -> str:
    """The variables that may hold ``key``, for errors: ``APP_KEY or KEY``."""
    return " or ".join(reader.keys(key))


def _boolean(reader: EnvReader, key: str, *, default: bool) -> bool:
    value = reader.get(key)
    if not value:
        return default
    try:
        return parse_bool(value)
    except ValueError:
        msg = f"Invalid {_either(reader, key)} {value!r}: expected true or false"
        raise SQLiteSettingsError(msg) from None


def _seconds(reader: EnvReader, key: str, *, allow_zero: bool) -> float | None:
    """A finite number of seconds, or None if unset."""
    value = reader.get(key)
    if not value:
        return None
    try:
        return parse_number(value, float, minimum=0, exclusive=not allow_zero)
    except ValueError:
        msg = (
            f"Invalid {_either(reader, key)} {value!r}: expected a number of "
            f"seconds {'>= 0' if allow_zero else '> 0'}"
        )
        raise SQLiteSettingsError(msg) from None
