"""Writing many rows at once in a view's transaction on PostgreSQL.

A projection that processes a catch-up batch at once
(:meth:`~asyncsourcing.projection.Projection.process_events`), all the more
one whose view is being rebuilt from an application's first event, has many
rows to write in one view transaction. Two helpers write them with the
connection of that transaction, so the rows commit with the batch's tracking
or roll back with it (when the batch fails, and the runner splits it to find
the failing event, say):

* :func:`copy_rows` adds rows with ``COPY ... FROM STDIN`` in asyncpg's
  binary format (:meth:`asyncpg.connection.Connection.copy_records_to_table`):
  the fastest way to add them, whatever the columns' types (arrays, json,
  uuid), but it only adds: a row that conflicts with one already in the
  table fails the whole COPY, with :class:`~eventsourcing.persistence.IntegrityError`.
* :func:`insert_rows` sends an ``INSERT`` of each row, all in one pipeline
  (asyncpg's :meth:`~asyncpg.connection.Connection.executemany`), with an
  ``ON CONFLICT`` clause of the caller's: upserts, which COPY cannot do.

For rows of scalar columns, one ``INSERT ... SELECT * FROM unnest($1::text[],
$2::bigint[]) ON CONFLICT ...`` statement, the columns passed as arrays, is
as fast as COPY and upserts too (the event counters view of the examples adds
to its counters so); it cannot take array columns.

In a view (a :class:`~asyncsourcing.postgres.PostgresTrackingRecorder`)::

    async def add_dogs(self, rows: list[tuple[UUID, str, list[str]]],
                       tracking: Tracking) -> None:
        async with self.datastore.transaction(commit=True) as conn:
            await self.record_tracking(conn, tracking)
            await copy_rows(conn, "dogs", ("id", "name", "tricks"), rows,
                            schema=self.datastore.schema)

Inside a runner's batch transaction, ``self.datastore.transaction()`` joins
it: ``conn`` is the batch's connection. The names are quoted here (they may
hold any character but NUL); ``on_conflict`` is SQL text, the caller's own,
never data.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence, Sized
from typing import TYPE_CHECKING

from eventsourcing.persistence import DataError

from asyncsourcing.postgres.errors import translate_errors
from asyncsourcing.postgres.identifiers import (
    check_identifier,
    qualified,
    quote_identifier,
)

if TYPE_CHECKING:
    from asyncsourcing.postgres.connections import PostgresConnection

__all__ = ["copy_rows", "insert_rows"]


async def copy_rows(
    conn: PostgresConnection,
    table: str,
    columns: Sequence[str],
    rows: Iterable[Sequence[object]],
    *,
    schema: str,
    timeout: float | None = None,
) -> int:
    """Add ``rows`` to ``schema.table`` with COPY, in the transaction of
    ``conn``; the number of rows added.

    Each row has a value for each of ``columns``, in their order; columns
    left out take their defaults. ``schema`` is the view's (its datastore's
    ``schema``): the connection has no search path of its own. Nothing is
    sent for an empty sequence of rows. asyncpg's errors come out as PEP 249
    errors (:class:`~eventsourcing.persistence.IntegrityError` for a
    conflict, :class:`~eventsourcing.persistence.ProgrammingError` for an
    unknown table or column, :class:`~eventsourcing.persistence.DataError`
    for a value that cannot be sent as its column's type).
    """
    _check_names(table, columns, schema)
    if isinstance(rows, Sized) and not rows:
        return 0
    try:
        with translate_errors():
            # asyncpg quotes the names itself.
            status = await conn.copy_records_to_table(
                table,
                records=rows,
                columns=list(columns),
                schema_name=schema,
                timeout=timeout,
            )
    except (ValueError, TypeError) as error:
        # A value that asyncpg cannot encode for its column: as for the
        # arguments of a statement (asyncpg ends the COPY with the server).
        msg = f"Cannot copy a row into {qualified(schema, table)}: {error}"
        raise DataError(msg) from error
    # The command tag: "COPY <count>".
    return int(status.rsplit(" ", 1)[-1])


async def insert_rows(
    conn: PostgresConnection,
    table: str,
    columns: Sequence[str],
    rows: Iterable[Sequence[object]],
    *,
    schema: str,
    on_conflict: str = "",
    timeout: float | None = None,
) -> None:
    """Insert each of ``rows`` into ``schema.table``, in the transaction of
    ``conn``, with one ``INSERT`` statement run for every row in a pipeline.

    ``on_conflict`` is appended to the statement, e.g.
    ``"ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name"``. Rows,
    columns, schema and errors are as for :func:`copy_rows`.
    """
    _check_names(table, columns, schema)
    if isinstance(rows, Sized) and not rows:
        return
    names = ", ".join(quote_identifier(column) for column in columns)
    values = ", ".join(f"${n}" for n in range(1, len(columns) + 1))
    statement = f"INSERT INTO {qualified(schema, table)} ({names}) VALUES ({values})"
    if on_conflict:
        statement += f" {on_conflict}"
    with translate_errors():
        await conn.executemany(statement, rows, timeout=timeout)


def _check_names(table: str, columns: Sequence[str], schema: str) -> None:
    """Raise :class:`ValueError` for a name that cannot be used as it is."""
    if isinstance(columns, str) or not columns:
        msg = f"columns must be a non-empty sequence of names, not {columns!r}"
        raise ValueError(msg)
    for name in (schema, table, *columns):
        check_identifier(name)
