"""PostgreSQL's SQL, what is not about one table: names, and creating tables.

Identifiers are validated and double-quoted into the SQL text
(:mod:`asyncsourcing.postgres.identifiers`); values are always query
parameters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import asyncpg
from eventsourcing.persistence import ProgrammingError

from asyncsourcing.postgres.identifiers import MAX_IDENTIFIER_LEN, check_identifier

if TYPE_CHECKING:
    from asyncsourcing.postgres.datastore import PostgresConnection

__all__ = ["POSTGRES", "TABLE_OPTIONS", "PostgresDialect", "truncate_identifier"]

TABLE_OPTIONS = (
    "WITH ("
    "    autovacuum_enabled = true,"
    "    autovacuum_vacuum_threshold = 100000000,"
    "    autovacuum_vacuum_scale_factor = 0.5,"
    "    autovacuum_analyze_threshold = 1000,"
    "    autovacuum_analyze_scale_factor = 0.01"
    ")"
)
"""eventsourcing's storage parameters of its tables, kept for identical tables."""


def truncate_identifier(name: str) -> str:
    """``name`` cut to the 63 bytes PostgreSQL keeps, as PostgreSQL would."""
    return name.encode()[:MAX_IDENTIFIER_LEN].decode(errors="ignore")


class PostgresDialect:
    """PostgreSQL's rule for names, and how it runs a create statement."""

    def check_identifier(self, name: str) -> None:
        """Raise :class:`ProgrammingError` unless ``name`` is a usable identifier.

        Longer names than 63 bytes would be truncated by PostgreSQL, and
        could then collide.
        """
        try:
            check_identifier(name)
        except ValueError as error:
            raise ProgrammingError(str(error)) from None

    async def execute_create(self, conn: PostgresConnection, statement: str) -> None:
        if "CREATE TYPE" in statement:
            # There is no "CREATE TYPE IF NOT EXISTS": a savepoint keeps the
            # error for an existing type from aborting the transaction.
            try:
                async with conn.transaction():
                    await conn.execute(statement)
            except asyncpg.DuplicateObjectError:
                pass
        else:
            await conn.execute(statement)


POSTGRES = PostgresDialect()
"""The dialect of every PostgreSQL recorder."""
