"""The Postgres datastore: a lazily created asyncpg pool, one LISTEN connection,
the position boards of its tracking tables, and the creation of tables.

The datastore implements :class:`~asyncsourcing.sql.datastore.SQLDatastore`.
Everything the recorders of one factory share lives here:

* the connection pool, created on first use (constructing does no IO), whose
  connections :mod:`asyncsourcing.postgres.connections` gives back;
* the :class:`~asyncsourcing.postgres.listener.PostgresListener`, the one
  LISTEN connection of every subscription and waiter of this datastore;
* one :class:`~asyncsourcing.waiting.PositionBoard` per tracking table, so
  every recorder instance on that table shares its waiters' reads and is woken
  by the same announcements;
* the table creators still to run: the first connection handed out runs
  them, so a recorder constructed without IO (an application's) creates its
  tables on its first use.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any, Self, TypeVar

import asyncpg
from eventsourcing.persistence import InterfaceError, OperationalError
from eventsourcing.utils import Environment

from asyncsourcing.partitions import partition_key
from asyncsourcing.postgres.concurrent import ChannelNotifier
from asyncsourcing.postgres.connections import (
    PostgresConnection,
    PostgresConnections,
    rollback_quietly,
)
from asyncsourcing.postgres.errors import is_connection_lost, translate_errors
from asyncsourcing.postgres.listener import PostgresListener
from asyncsourcing.postgres.settings import PostgresSettings
from asyncsourcing.resources import Resource
from asyncsourcing.sql import datastore as sql
from asyncsourcing.sql.transactions import PendingTableCreators, TaskTransactions
from asyncsourcing.waiting import FetchMax, PositionBoard

__all__ = ["PostgresConnection", "PostgresDatastore", "tracking_channel_name"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

TableCreator = sql.TableCreator[PostgresConnection]

# Serialises table creation across processes (two concurrent "CREATE TABLE IF
# NOT EXISTS" of one table can fail on the catalog's unique index). Our own
# constant key: "asyncsrc" as a big-endian bigint.
_CREATE_TABLES_LOCK_KEY = int.from_bytes(b"asyncsrc", "big")

# Set while this task creates pending tables, so that a recorder's
# create_table() that asks the datastore for a connection does not wait for
# the creation it is part of.
_creating_tables: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "asyncsourcing_postgres_creating_tables", default=False
)

# Reads are idempotent: one that fails because its connection was lost (a
# terminated backend, a restart) is run again on a fresh connection.
_READ_ATTEMPTS = 3
_READ_RETRY_DELAY = 0.05

# How long close() waits for the notifications of the last commits.
_NOTIFY_ON_CLOSE_TIMEOUT = 2.0


class PostgresDatastore(Resource):
    """Connections to one PostgreSQL database and schema.

    Construct it with :class:`~asyncsourcing.postgres.settings.PostgresSettings`
    or :meth:`from_env`; nothing connects until the first awaited use.
    :meth:`transaction` and :meth:`connection` hand out pooled connections,
    translating asyncpg's errors into the PEP 249 errors of
    :mod:`eventsourcing.persistence`. :meth:`close` (or ``async with``)
    closes the pool and the LISTEN connection.
    """

    def __init__(self, settings: PostgresSettings) -> None:
        self.settings = settings
        self._connections = PostgresConnections(self, settings, self._init_connection)
        self.listener = PostgresListener(
            self._connect_listener, poll_interval=settings.poll_interval
        )
        self._boards: dict[str, PositionBoard] = {}
        self._table_creators = PendingTableCreators[PostgresConnection]()
        self._create_lock = asyncio.Lock()
        self._transactions = TaskTransactions[PostgresConnection](self, logger)
        # A pooled connection, without the table creators (tables exist).
        self._notifier = ChannelNotifier(self._connections.acquire)

    @classmethod
    def from_env(cls, env: Environment | Mapping[str, str]) -> Self:
        """A datastore configured by ``POSTGRES_*`` environment variables."""
        return cls(PostgresSettings.from_env(env))

    def __repr__(self) -> str:
        s = self.settings
        return (
            f"{type(self).__name__}(host={s.host!r}, port={s.port!r}, "
            f"dbname={s.dbname!r}, user={s.user!r}, schema={s.schema!r})"
        )

    @property
    def schema(self) -> str:
        """The schema of the tables (``POSTGRES_SCHEMA``, default "public")."""
        return self.settings.schema

    @property
    def originator_id_type(self) -> str:
        """The type of the ``originator_id`` column: "uuid" or "text"."""
        return self.settings.originator_id_type

    @property
    def lock_timeout(self) -> int:
        """Seconds allowed to wait for an events table's lock (0: no limit)."""
        return self.settings.lock_timeout

    @property
    def is_closed(self) -> bool:
        return self._connections.closed

    # Connections and transactions.

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[PostgresConnection]:
        """A pooled connection, outside any transaction (each statement commits).

        Runs the pending table creators first. Inside a :meth:`transaction`
        of the same task, it is that transaction's connection, so reads see
        the transaction's own writes (and a task never holds two pooled
        connections).
        """
        enclosing = self._transactions.enclosing()
        if enclosing is not None:
            with translate_errors():
                yield enclosing[0]
            return
        if not _creating_tables.get():
            await self._create_pending_tables()
        async with self._connections.acquire() as conn:
            yield conn

    async def write(self, query: Callable[[PostgresConnection], Awaitable[T]]) -> T:
        """The result of ``query``, a write that runs alone (a save's insert).

        Run as :meth:`connection` runs it, but on a connection that the
        datastore keeps from one such write to the next, while no other
        write has it (see :meth:`PostgresConnections.run_kept
        <asyncsourcing.postgres.connections.PostgresConnections.run_kept>`),
        so that a lone writer skips the pool's acquire and release. Not
        retried: a write may have committed before its connection was lost.
        """
        enclosing = self._transactions.enclosing()
        if enclosing is not None:
            with translate_errors():
                return await query(enclosing[0])
        if self._table_creators and not _creating_tables.get():
            await self._create_pending_tables()
        return await self._connections.run_kept(query)

    @contextlib.asynccontextmanager
    async def transaction(
        self, *, commit: bool = False
    ) -> AsyncIterator[PostgresConnection]:
        """A pooled connection inside a transaction.

        The transaction commits when the block ends, if ``commit`` is true,
        and is rolled back otherwise, or when the block raises. asyncpg's
        errors raised in the block come out as PEP 249 errors; whatever the
        block raises once its connection is lost (terminated, timed out by
        the server) comes out as :class:`OperationalError`, or as
        :class:`InterfaceError` for asyncpg's own state: errors of the
        database, not of the caller's work.

        Inside a transaction of the same task, this joins it: it yields the
        enclosing connection, and the enclosing transaction commits or rolls
        back the whole (a projection runner batches events this way). A write
        cannot join a read transaction: that raises :class:`ProgrammingError`.
        """
        joined = self._transactions.join(commit=commit)
        if joined is not None:
            with translate_errors():
                yield joined
            return
        async with self.connection() as conn:
            transaction = conn.transaction()
            await transaction.start()
            with self._transactions.opened(conn, commit=commit) as callbacks:
                try:
                    yield conn
                except BaseException:
                    await rollback_quietly(transaction)
                    raise
                if commit:
                    await transaction.commit()
                else:
                    await transaction.rollback()
        if commit:
            self._transactions.run_after_commit(callbacks)

    def in_transaction(self) -> bool:
        """True when the current task has a transaction open on this datastore."""
        return self._transactions.enclosing() is not None

    async def read(self, query: Callable[[PostgresConnection], Awaitable[T]]) -> T:
        """The result of ``query``, run on a pooled connection (see :meth:`connection`).

        A query that fails because its connection was lost (a terminated
        backend, a restart: :func:`~asyncsourcing.postgres.errors.is_connection_lost`)
        is run again on a fresh connection, up to three times in all, unless
        it ran in a transaction of the task, which is lost with it.
        """
        for attempt in itertools.count(1):
            try:
                async with self.connection() as conn:
                    return await query(conn)
            except (OperationalError, InterfaceError) as error:
                if (
                    attempt >= _READ_ATTEMPTS
                    or not is_connection_lost(error)
                    or self.in_transaction()
                ):
                    raise
            await asyncio.sleep(_READ_RETRY_DELAY * attempt)
        raise AssertionError  # pragma: no cover (the loop returns or raises)

    def call_after_commit(
        self, conn: PostgresConnection, callback: Callable[[], None]
    ) -> None:
        """Call ``callback`` once the work done on ``conn`` is committed.

        In a :meth:`transaction` block, after its commit (never after a
        rollback); on a connection outside any transaction, at once, because
        its statements have already committed; in a transaction that this
        datastore did not start, never.
        """
        if self._transactions.call_after_commit(conn, callback):
            return
        if not conn.is_in_transaction():
            self._transactions.run_after_commit([callback])

    def notify(self, channel: str) -> None:
        """NOTIFY ``channel`` soon, from a transaction of its own (concurrent
        write mode, after a commit: see
        :class:`~asyncsourcing.postgres.concurrent.ChannelNotifier`)."""
        self._notifier.notify(channel)

    async def _init_connection(self, conn: asyncpg.Connection[Any]) -> None:
        """Called for each new pooled connection; subclasses may add to it."""

    async def _connect_listener(self) -> asyncpg.Connection[Any]:
        self._connections.check_open()
        return await asyncpg.connect(**self.settings.connect_kwargs(listen=True))

    # Tables.

    @contextlib.asynccontextmanager
    async def creating_tables(self) -> AsyncIterator[PostgresConnection]:
        """A transaction for creating tables, serialised across processes.

        A connection of its own, even inside a transaction of the task, and
        without waiting for the pending creators, which it may be running.
        """
        async with self._connections.acquire() as conn, conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock($1)", _CREATE_TABLES_LOCK_KEY
            )
            yield conn

    def create_tables_on_first_use(self, creator: TableCreator) -> None:
        """Run ``creator`` (in :meth:`creating_tables`) before the next
        connection is handed out, unless ``CREATE_TABLE`` is false."""
        if self.settings.create_tables:
            self._table_creators.add(creator)

    def tables_created(self, creator: TableCreator) -> None:
        """``creator`` has run: it is pending no more."""
        self._table_creators.discard(creator)

    async def _create_pending_tables(self) -> None:
        if not self._table_creators:
            return
        async with self._create_lock:
            token = _creating_tables.set(True)
            try:
                await self._table_creators.run(self.creating_tables)
            finally:
                _creating_tables.reset(token)

    # Position boards.

    def position_board(self, tracking_table: str, fetch_max: FetchMax) -> PositionBoard:
        """The board of ``tracking_table``, shared by all its recorders.

        Waiters are woken by this process's commits (see
        :meth:`advance_position_board`) and by the notifications on the
        table's channel (:func:`tracking_channel_name`), whose payload names
        the schema, table, application and position (and the partition, for
        the positions of a partitioned projection, kept beside the table):
        no query is needed to wake them. Before its first read the board
        makes sure the channel is listened to. The listener's poll ticks
        re-read what tasks wait for, as a safety net.
        """
        board = self._boards.get(tracking_table)
        if board is None:
            self._connections.check_open()
            channel = tracking_channel_name(tracking_table)
            board = PositionBoard(
                fetch_max,
                before_fetch=partial(self.listener.listening, channel),
                # The listener's task ticks for every board: no task per board.
                poll_interval=None,
            )
            self.listener.register(
                channel,
                on_notify=partial(self._on_tracking_notified, tracking_table, board),
                on_resync=partial(_resync_board, board),
            )
            self._boards[tracking_table] = board
        return board

    def advance_position_board(
        self, tracking_table: str, application_name: str, position: int
    ) -> None:
        """Advance the board of ``tracking_table``, if anyone has waited on it."""
        board = self._boards.get(tracking_table)
        if board is not None:
            board.advance(application_name, position)

    def _on_tracking_notified(
        self, tracking_table_name: str, board: PositionBoard, payload: str
    ) -> None:
        if not payload:
            return  # Not ours (an events channel of another schema, say).
        try:
            message = json.loads(payload)
            schema = message["schema"]
            table = message["table"]
            key = message["application_name"]
            position = int(message["notification_id"])
            partition = message.get("partition")
            if partition is not None:
                key = partition_key(key, int(partition))
        except (ValueError, KeyError, TypeError):
            logger.warning("Unexpected tracking notification payload: %r", payload)
            board.refresh()
            return
        # The channel is named after the table only: another schema's table
        # of the same name announces on it too.
        if schema == self.schema and table == tracking_table_name:
            board.advance(key, position)

    # Closing.

    async def close(self) -> None:
        """Close the LISTEN connection, the boards and the pool; idempotent.

        Subscriptions of this datastore stop; waiters get
        :class:`~eventsourcing.persistence.WaitInterruptedError`.
        """
        if self._connections.closed:
            return
        # Commits made, announced: before the pool stops lending.
        await self._notifier.aclose(timeout=_NOTIFY_ON_CLOSE_TIMEOUT)
        # From now on nothing is lent, even before the pool closes.
        self._connections.closed = True
        try:
            await self.listener.close()
            boards = list(self._boards.values())
            self._boards.clear()
            for board in boards:
                await board.aclose()
        finally:
            await self._connections.close()


def tracking_channel_name(tracking_table: str) -> str:
    """The channel on which commits to ``tracking_table`` are announced.

    A channel name is an identifier, so the ``.`` of a qualified table name
    is replaced; the payload of each announcement names the schema and table.
    """
    return tracking_table.replace(".", "_")


def _resync_board(board: PositionBoard, missed: bool) -> None:
    if missed:
        # Announcements may have been lost: what the board knows may be stale.
        board.forget()
    board.refresh()


if TYPE_CHECKING:

    def _implements_the_protocol(
        datastore: PostgresDatastore,
    ) -> sql.SQLDatastore[PostgresConnection]:
        return datastore
