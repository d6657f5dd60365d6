"""SQLite's SQL, what is not about one table: names, and creating tables."""

from __future__ import annotations

import re
from uuid import UUID

import aiosqlite

from asyncsourcing.persistence import ProgrammingError

__all__ = ["SQLITE", "SQLiteDialect", "originator_id_param", "quote", "table_exists"]

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def quote(identifier: str) -> str:
    """``identifier`` as a quoted SQL identifier."""
    return '"' + identifier.replace('"', '""') + '"'


def originator_id_param(originator_id: UUID | str) -> str:
    """How eventsourcing stores an originator id: a UUID as 32 hex digits,
    without dashes."""
    return originator_id.hex if isinstance(originator_id, UUID) else originator_id


async def table_exists(connection: aiosqlite.Connection, name: str) -> bool:
    """Whether the table ``name`` exists."""
    rows = await connection.execute_fetchall(
        "SELECT 1 FROM sqlite_master WHERE type = ? AND name = ?", ("table", name)
    )
    return bool(list(rows))


class SQLiteDialect:
    """SQLite's rule for table names, and how it runs a create statement."""

    def check_identifier(self, name: str) -> None:
        """Raise :class:`ProgrammingError` unless ``name`` can name a table.

        SQLite sets no length limit on names: this checks what can go wrong
        instead. Names are plain identifiers (letters, digits and
        underscores, not starting with a digit), as eventsourcing writes
        them unquoted, and do not start with ``sqlite_``, which SQLite
        reserves.
        """
        if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
            msg = (
                f"Invalid SQLite table name {name!r}: use letters, digits and "
                "underscores, not starting with a digit"
            )
            raise ProgrammingError(msg)
        if name.lower().startswith("sqlite_"):
            msg = f"Invalid SQLite table name {name!r}: 'sqlite_' names are reserved"
            raise ProgrammingError(msg)

    async def execute_create(self, conn: aiosqlite.Connection, statement: str) -> None:
        await conn.execute(statement)


SQLITE = SQLiteDialect()
"""The dialect of every SQLite recorder."""
