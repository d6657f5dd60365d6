"""The datastore protocol: what the SQL recorders ask of a backend's datastore.

A datastore owns the connections to one database (a pool on PostgreSQL,
a writer and readers on SQLite), hands them out in transactions, and owns
the position boards through which the waiters of a tracking table are
woken. ``Conn`` is the backend's connection type: recorders pass it back to
the backend's dialect and never look inside it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol, TypeAlias, TypeVar

from asyncsourcing.waiting import FetchMax, PositionBoard

__all__ = ["Conn", "SQLDatastore", "TableCreator"]

Conn = TypeVar("Conn")
T = TypeVar("T")

TableCreator: TypeAlias = Callable[[Conn], Awaitable[None]]
"""Creates tables with the given connection (in ``creating_tables()``)."""


class SQLDatastore(Protocol[Conn]):
    """Transactions that a task's nested transactions join, and wake-ups."""

    @property
    def is_closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        ...

    def transaction(self, *, commit: bool = False) -> AbstractAsyncContextManager[Conn]:
        """A connection in a transaction, committed at the end if ``commit``.

        Rolled back on error (raised as a PEP 249 error of
        :mod:`asyncsourcing.persistence`) or when ``commit`` is false.
        Inside a transaction of the same task, this joins it: the
        enclosing transaction commits or rolls back the whole. A write
        cannot join a read transaction (:class:`ProgrammingError`).
        """
        ...

    def in_transaction(self) -> bool:
        """True when the current task has a transaction open on the datastore."""
        ...

    async def read(self, query: Callable[[Conn], Awaitable[T]]) -> T:
        """The result of ``query``, read-only, on a reader connection.

        Inside a transaction of the task, on that transaction's connection,
        so that it sees the transaction's writes. Where the backend can
        tell that the connection was lost, the query is run again on a
        fresh one: reads are idempotent.
        """
        ...

    def creating_tables(self) -> AbstractAsyncContextManager[Conn]:
        """A write transaction for creating tables, serialised with other
        processes creating tables in the same database."""
        ...

    def create_tables_on_first_use(self, creator: TableCreator[Conn]) -> None:
        """Run ``creator`` (in :meth:`creating_tables`) before the datastore
        next hands out a connection, unless tables are made elsewhere
        (``CREATE_TABLE=false``); pending until it succeeds."""
        ...

    def tables_created(self, creator: TableCreator[Conn]) -> None:
        """``creator`` has run: it is pending no more."""
        ...

    def call_after_commit(self, conn: Conn, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the work done on ``conn`` has committed;
        never if it rolls back."""
        ...

    def position_board(self, tracking_table: str, fetch_max: FetchMax) -> PositionBoard:
        """The board of ``tracking_table``, shared by every recorder of the
        table that this datastore (and, where the backend can, every other
        in the process) serves; ``fetch_max`` reads a recorded position."""
        ...

    def advance_position_board(
        self, tracking_table: str, application_name: str, position: int
    ) -> None:
        """Tell the board of ``tracking_table`` that ``application_name`` has
        recorded ``position``: what a commit of tracking calls (with
        :meth:`call_after_commit`), so that the process's waiters are woken
        without a query. Where no board exists yet, the backend may make
        one (SQLite) or not (PostgreSQL: a later board reads the position)."""
        ...

    async def close(self) -> None:
        """Close every connection and board; idempotent."""
        ...
