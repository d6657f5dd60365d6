"""The bookkeeping that both SQL datastores share around their transactions.

A datastore hands out transactions in its backend's way (``BEGIN
IMMEDIATE`` on SQLite, an asyncpg transaction on PostgreSQL), but keeps the
same book of them:

* :class:`TaskTransactions`: the transaction each task has open, which the
  task's nested transactions join (a projection runner batches a view's
  writes this way; a write cannot join a read), and the callbacks that run
  once a transaction has committed, never after a rollback;
* :class:`PendingTableCreators`: the table creators still to run, in one
  transaction, before the datastore next hands out a connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from typing import Any, Generic

from asyncsourcing.persistence import ProgrammingError
from asyncsourcing.sql.datastore import Conn, TableCreator

__all__ = ["PendingTableCreators", "TaskTransactions"]


class TaskTransactions(Generic[Conn]):
    """The transactions that tasks have open on one datastore.

    ``owner`` (the datastore) names the datastore in error messages and in
    the log records of failed callbacks, which go to ``logger``.
    Connections must be hashable by identity, as asyncpg's and aiosqlite's
    are.
    """

    def __init__(self, owner: object, logger: logging.Logger) -> None:
        self._owner = owner
        self._logger = logger
        # The transaction each task has open, and whether it is a write.
        self._by_task: dict[asyncio.Task[Any], tuple[Conn, bool]] = {}
        # The connections in a transaction, each with its after-commit callbacks.
        self._after_commit: dict[Conn, list[Callable[[], None]]] = {}

    def enclosing(self) -> tuple[Conn, bool] | None:
        """The connection of the current task's transaction, and whether it
        is a write; None when the task has none open (or is no task)."""
        task = asyncio.current_task()
        return None if task is None else self._by_task.get(task)

    def join(self, *, commit: bool) -> Conn | None:
        """The connection that a new transaction of the current task joins.

        None when the task has no transaction open: the caller begins one.
        Raises :class:`ProgrammingError` when a write (``commit``) would join
        a read transaction, whose rollback would silently drop its writes.
        """
        enclosing = self.enclosing()
        if enclosing is None:
            return None
        conn, is_write = enclosing
        if commit and not is_write:
            msg = (
                "A write transaction cannot join the read transaction that its "
                f"task has open on {self._owner!r}"
            )
            raise ProgrammingError(msg)
        return conn

    @contextmanager
    def opened(self, conn: Conn, *, commit: bool) -> Iterator[list[Callable[[], None]]]:
        """Book the transaction open on ``conn`` as the current task's.

        Yields the list that :meth:`call_after_commit` fills for ``conn``:
        the caller passes it to :meth:`run_after_commit` once the
        transaction has committed, and drops it otherwise. The booking ends
        with the block, however it ends.
        """
        task = asyncio.current_task()
        callbacks: list[Callable[[], None]] = []
        self._after_commit[conn] = callbacks
        if task is not None:
            self._by_task[task] = (conn, commit)
        try:
            yield callbacks
        finally:
            self._after_commit.pop(conn, None)
            if task is not None:
                self._by_task.pop(task, None)

    def call_after_commit(self, conn: Conn, callback: Callable[[], None]) -> bool:
        """Queue ``callback`` for the commit of the transaction on ``conn``.

        False, and nothing queued, when no transaction booked here is open
        on ``conn``: each backend answers that case in its own way.
        """
        callbacks = self._after_commit.get(conn)
        if callbacks is None:
            return False
        callbacks.append(callback)
        return True

    def run_after_commit(self, callbacks: list[Callable[[], None]]) -> None:
        """Call ``callbacks`` in order, logging rather than raising their errors.

        The transaction has committed: raising would tell its caller that it
        failed, and would deprive the later callbacks of their call.
        """
        for callback in callbacks:
            try:
                callback()
            except Exception:
                self._logger.exception(
                    "After-commit callback failed on %r", self._owner
                )


class PendingTableCreators(Generic[Conn]):
    """Table creators to run before a datastore next hands out a connection.

    A creator is pending until it has succeeded: after an error, the next
    :meth:`run` runs it again (creators are idempotent, ``CREATE ... IF NOT
    EXISTS``). Creators are told apart by equality, so a recorder's bound
    method is added once however often it is added.
    """

    def __init__(self) -> None:
        self._pending: list[TableCreator[Conn]] = []
        self._lock = asyncio.Lock()

    def __bool__(self) -> bool:
        """Whether any creator is pending."""
        return bool(self._pending)

    def add(self, creator: TableCreator[Conn]) -> None:
        """Make ``creator`` pending, unless it already is."""
        if creator not in self._pending:
            self._pending.append(creator)

    def discard(self, creator: TableCreator[Conn]) -> None:
        """``creator`` has run elsewhere: it is pending no more."""
        if creator in self._pending:
            self._pending.remove(creator)

    async def run(
        self, transaction: Callable[[], AbstractAsyncContextManager[Conn]]
    ) -> None:
        """Run the pending creators in order, in one ``transaction()``.

        Tasks that call this meanwhile wait for the run under way, so that
        none of them uses a connection before the tables exist; the
        creators added during the run wait for the next one.
        """
        async with self._lock:
            creators = list(self._pending)
            if not creators:
                return
            async with transaction() as conn:
                for creator in creators:
                    await creator(conn)
            for creator in creators:
                self.discard(creator)
