"""A connection lost inside a view's transaction is the database's error, never
the event's (issue 11, items 1 and 3).

A projection runner answers the database's errors by reconnecting (a policy
with ``reconnect``, ``retry`` by default) or by stopping with an
:class:`OperationalError`; ``skip`` and ``park`` apply only to errors of the
projection's own code or of the event's data. So whatever asyncpg (or
aiosqlite) raises when the connection goes away mid-transaction, and whatever
a projection makes of it, the event is neither skipped nor parked: the view
ends up with it exactly once, or the runner stops with it unprocessed.

The view's transaction is cut between two of its statements, as production
databases cut them: its backend is terminated (``pg_terminate_backend``, as
an administrator, a failover or a pooler would), or it is left idle longer
than ``POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT`` and the server ends the
session. Reads retry on another connection when theirs turns out to be dead.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiosqlite
import asyncpg
import pytest

from asyncsourcing.persistence import (
    DataError,
    IntegrityError,
    InterfaceError,
    InternalError,
    OperationalError,
    PersistenceError,
    ProgrammingError,
    Tracking,
)
from asyncsourcing.policies import ErrorPolicy, ErrorPolicyLike
from asyncsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
from asyncsourcing.postgres.datastore import PostgresConnection
from asyncsourcing.postgres.errors import is_connection_lost, translate_error
from asyncsourcing.projection import (
    Projection,
    ProjectionRunner,
    ProjectionStoppedError,
)
from asyncsourcing.sqlite.datastore import translate_error as translate_sqlite_error
from tests.support.faults import (
    Counter,
    Counters,
    PostgresRecordingView,
    SQLiteRecordingView,
    check_exactly_once,
)
from tests.support.postgres import admin_connection, factory_env
from tests.support.postgres import settings as postgres_settings

POLICIES_THAT_RECONNECT: dict[str, ErrorPolicyLike] = {
    "skip, reconnecting": ErrorPolicy.skip(reconnect=True),
    "park, reconnecting": ErrorPolicy.park(reconnect=True),
    "retry": "retry",
}
POLICIES_THAT_DO_NOT: dict[str, ErrorPolicyLike] = {
    "stop": "stop",
    "skip": "skip",
    "park": "park",
}

Cut = Callable[[Any], Awaitable[None]]
"""Breaks the connection of a view's transaction, given that connection."""


def terminating_the_backend(postgres_env: dict[str, str]) -> Cut:
    """A cut by ``pg_terminate_backend()`` of the transaction's backend."""

    async def cut(conn: PostgresConnection) -> None:
        async with admin_connection(postgres_env) as admin:
            # Waits (up to 5 s) until the backend has exited.
            assert await admin.fetchval(
                "SELECT pg_terminate_backend($1, 5000)", conn.get_server_pid()
            )

    return cut


async def idling_past_the_timeout(conn: PostgresConnection) -> None:
    """A cut by the server, when POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT=1."""
    await asyncio.sleep(1.5)


async def closing_the_sqlite_connection(connection: aiosqlite.Connection) -> None:
    """What a dead SQLite connection looks like to aiosqlite: closed."""
    await connection.close()


class CutOnce(Projection[Any]):
    """Records each event in a transaction of two statements, and cuts the
    first event's transaction between them.

    ``wrap_errors``: the projection catches what the second statement raises
    and raises its own error instead, as projections that add context do.
    """

    name = "recording"
    cut: Cut
    wrap_errors = False
    cuts_left = 1

    async def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        view = self.view
        async with view.datastore.transaction(commit=True) as conn:
            await self.record_processed(conn, tracking)
            if type(self).cuts_left:
                type(self).cuts_left -= 1
                await type(self).cut(conn)
            try:
                await view._insert_tracking(conn, tracking)
            except Exception as error:
                if self.wrap_errors:
                    msg = f"Cannot record notification {tracking.notification_id}"
                    raise RuntimeError(msg) from error
                raise

    async def record_processed(self, conn: Any, tracking: Tracking) -> None:
        if isinstance(self.view, PostgresRecordingView):
            await conn.execute(self.view._insert_processed, tracking.notification_id)
        else:
            await conn.execute(
                "INSERT INTO processed (notification_id) VALUES (?)",
                (tracking.notification_id,),
            )


def cutting(cut: Cut, *, wrap_errors: bool = False) -> type[CutOnce]:
    """A projection class of its own, whose first event's transaction is cut."""
    return type(
        "CutOnce",
        (CutOnce,),
        {
            "name": "recording",  # Tables recording_*, settings RECORDING_*.
            "cut": staticmethod(cut),
            "wrap_errors": wrap_errors,
            "cuts_left": 1,
        },
    )


def runner(
    env: dict[str, str],
    projection_class: type[CutOnce],
    view_class: type[Any],
    error_policy: ErrorPolicyLike,
) -> ProjectionRunner[Any, Any]:
    return ProjectionRunner(
        application_class=Counters,
        projection_class=projection_class,
        view_class=view_class,
        env=env,
        error_policy=error_policy,
    )


async def assert_processed_once_after_reconnecting(
    runner: ProjectionRunner[Any, Any], ids: list[int]
) -> None:
    await runner.wait(ids[-1], timeout=10)
    await check_exactly_once(runner.view, runner.app.name, ids)
    assert await runner.view.processed_ids() == ids
    stats = await runner.statistics()
    assert (stats.skipped, stats.parked) == (0, 0)
    assert stats.reconnections == 1
    assert await runner.view.parked(runner.app.name) == []


async def assert_stopped_with_the_event_unprocessed(
    runner: ProjectionRunner[Any, Any], first_id: int
) -> None:
    with pytest.raises(ProjectionStoppedError) as info:
        await runner.wait(first_id, timeout=10)
    # asyncsourcing's error (the same class as eventsourcing's), not asyncpg's.
    assert type(info.value.__cause__) is OperationalError
    assert not runner.is_running
    # Neither skipped (tracking without the view's update) nor parked.
    assert await runner.view.max_tracking_id(runner.app.name) is None
    assert await runner.view.processed_ids() == []
    assert await runner.view.parked(runner.app.name) == []


def postgres_cuts(
    postgres_env: dict[str, str],
) -> dict[str, tuple[Cut, dict[str, str]]]:
    """Each way to cut a Postgres transaction, with the settings it needs."""
    return {
        "terminated": (terminating_the_backend(postgres_env), {}),
        "idle too long": (
            idling_past_the_timeout,
            {"POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT": "1"},
        ),
    }


# The live path: one event per transaction.


@pytest.mark.postgres
@pytest.mark.parametrize("how", ["terminated", "idle too long"])
@pytest.mark.parametrize("policy", list(POLICIES_THAT_RECONNECT))
async def test_a_cut_transaction_is_processed_again_after_reconnecting(
    postgres_env: dict[str, str], pg_schema: str, how: str, policy: str
) -> None:
    cut, extra = postgres_cuts(postgres_env)[how]
    env = factory_env(postgres_env, pg_schema, **extra)
    async with runner(
        env, cutting(cut), PostgresRecordingView, POLICIES_THAT_RECONNECT[policy]
    ) as r:
        counter = Counter()
        ids = [rec.notification.id for rec in await r.app.save(counter)]
        counter.increment()
        ids += [rec.notification.id for rec in await r.app.save(counter)]
        await assert_processed_once_after_reconnecting(r, ids)


@pytest.mark.postgres
@pytest.mark.parametrize("how", ["terminated", "idle too long"])
@pytest.mark.parametrize("policy", list(POLICIES_THAT_DO_NOT))
async def test_a_cut_transaction_stops_a_runner_that_does_not_reconnect(
    postgres_env: dict[str, str], pg_schema: str, how: str, policy: str
) -> None:
    cut, extra = postgres_cuts(postgres_env)[how]
    env = factory_env(postgres_env, pg_schema, **extra)
    r = runner(env, cutting(cut), PostgresRecordingView, POLICIES_THAT_DO_NOT[policy])
    # Not "async with": leaving it may raise the runner's error once more.
    await r.start()
    try:
        recordings = await r.app.save(Counter())
        await assert_stopped_with_the_event_unprocessed(
            r, recordings[0].notification.id
        )
    finally:
        await r.aclose()


@pytest.mark.postgres
async def test_a_projection_that_wraps_the_lost_connections_error_is_not_skipped(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    # The projection raises a RuntimeError of its own: but its connection is
    # gone, so its transaction cannot have committed, whatever it raises.
    projection_class = cutting(terminating_the_backend(postgres_env), wrap_errors=True)
    env = factory_env(postgres_env, pg_schema)
    policy = ErrorPolicy.skip(reconnect=True)
    async with runner(env, projection_class, PostgresRecordingView, policy) as r:
        ids = [rec.notification.id for rec in await r.app.save(Counter())]
        await assert_processed_once_after_reconnecting(r, ids)


# The catch-up path: many events in one transaction.


@pytest.mark.postgres
@pytest.mark.parametrize("policy", ["skip, reconnecting", "park, reconnecting"])
async def test_a_cut_catch_up_batch_is_processed_again_after_reconnecting(
    postgres_env: dict[str, str], pg_schema: str, policy: str
) -> None:
    env = factory_env(postgres_env, pg_schema)
    r = runner(
        env,
        cutting(terminating_the_backend(postgres_env)),
        PostgresRecordingView,
        POLICIES_THAT_RECONNECT[policy],
    )
    # Recorded before the runner starts: it catches up in one batch.
    ids = [
        rec.notification.id for rec in await r.app.save(*(Counter() for _ in range(5)))
    ]
    async with r:
        await assert_processed_once_after_reconnecting(r, ids)


# Reads.


class OnceBrokenDatastore(PostgresDatastore):
    """Breaks the first connection it hands out after ``break_next()``."""

    breakage: Callable[[PostgresConnection], Awaitable[None]] | None = None

    def break_next(
        self, breakage: Callable[[PostgresConnection], Awaitable[None]]
    ) -> None:
        self.breakage = breakage

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[PostgresConnection]:
        async with super().connection() as conn:
            breakage, self.breakage = self.breakage, None
            if breakage is not None:
                await breakage(conn)
            yield conn


@pytest.mark.postgres
@pytest.mark.parametrize("how", ["killed while idle", "asyncpg confused"])
async def test_a_read_is_retried_on_another_connection(
    postgres_env: dict[str, str], pg_schema: str, how: str
) -> None:
    kill = terminating_the_backend(postgres_env)

    async def killed_while_idle(conn: PostgresConnection) -> None:
        await kill(conn)
        await asyncio.sleep(0.05)  # asyncpg notices, and takes it back.

    async def asyncpg_confused(conn: PostgresConnection) -> None:
        # What asyncpg raised under random backend kills, from a pooled
        # connection whose protocol was left mid-exchange.
        msg = "cannot switch to state 12; another operation (2) is in progress"
        raise asyncpg.exceptions.InternalClientError(msg)

    breakages = {
        "killed while idle": killed_while_idle,
        "asyncpg confused": asyncpg_confused,
    }
    async with OnceBrokenDatastore(postgres_settings(postgres_env, pg_schema)) as store:
        view = PostgresTrackingRecorder(store, tracking_table_name="view_tracking")
        await view.insert_tracking(Tracking("upstream", 7))
        store.break_next(breakages[how])
        assert await view.max_tracking_id("upstream") == 7
        assert store.breakage is None  # It was broken, and the read retried.


# What each error is taken for.


@pytest.mark.parametrize(
    ("error", "expected", "lost"),
    [
        # The connection or the session is gone.
        (asyncpg.exceptions.AdminShutdownError("terminating"), OperationalError, True),
        (
            asyncpg.exceptions.IdleInTransactionSessionTimeoutError("idle"),
            OperationalError,
            True,
        ),
        (asyncpg.exceptions.IdleSessionTimeoutError("idle"), OperationalError, True),
        (
            asyncpg.ConnectionDoesNotExistError("closed mid-operation"),
            OperationalError,
            True,
        ),
        (ConnectionResetError("reset by peer"), OperationalError, True),
        # asyncpg's own state of the connection.
        (asyncpg.InterfaceError("connection is closed"), InterfaceError, True),
        (
            asyncpg.InterfaceError(
                "cannot call Connection.fetch(): "
                "connection has been released back to the pool"
            ),
            InterfaceError,
            True,
        ),
        (
            asyncpg.exceptions.InternalClientError(
                "cannot switch to state 12; another operation (2) is in progress"
            ),
            InterfaceError,
            True,
        ),
        # The statement's or the data's: the event's own errors.
        (asyncpg.UniqueViolationError("duplicate key"), IntegrityError, False),
        (asyncpg.exceptions.DivisionByZeroError("division by zero"), DataError, False),
        (
            asyncpg.InterfaceError("the server expects 1 argument, 2 were passed"),
            ProgrammingError,
            False,
        ),
        (
            asyncpg.exceptions.InFailedSQLTransactionError("aborted"),
            InternalError,
            False,
        ),
        (
            asyncpg.exceptions.QueryCanceledError("statement timeout"),
            OperationalError,
            False,
        ),
        (TimeoutError("no connection in time"), OperationalError, False),
    ],
    ids=lambda value: f"{value!r}" if isinstance(value, Exception) else None,
)
def test_how_postgres_errors_are_translated(
    error: BaseException, expected: type[PersistenceError], lost: bool
) -> None:
    translated = translate_error(error)
    assert type(translated) is expected
    # As raised, with the original as its cause: may a read be retried?
    translated.__cause__ = error
    assert is_connection_lost(translated) is lost


def test_a_closed_sqlite_connection_is_a_connection_error() -> None:
    connection = sqlite3.connect(":memory:")
    connection.close()
    with pytest.raises(sqlite3.ProgrammingError) as info:
        connection.execute("SELECT 1")
    assert type(translate_sqlite_error(info.value, "db")) is InterfaceError
    # A misused statement, on the other hand, is the caller's.
    with (
        sqlite3.connect(":memory:") as open_connection,
        pytest.raises(sqlite3.ProgrammingError) as misuse,
    ):
        open_connection.execute("SELECT ?", (1, 2))
    assert type(translate_sqlite_error(misuse.value, "db")) is ProgrammingError


# SQLite.


@pytest.mark.parametrize("wrap_errors", [False, True], ids=["raw", "wrapped"])
async def test_a_closed_sqlite_connection_is_not_skipped(
    tmp_path: Path, wrap_errors: bool
) -> None:
    env = {
        "PERSISTENCE_MODULE": "asyncsourcing.sqlite",
        "SQLITE_DBNAME": str(tmp_path / "app.sqlite"),
        "RECORDING_SQLITE_DBNAME": str(tmp_path / "view.sqlite"),
    }
    projection_class = cutting(closing_the_sqlite_connection, wrap_errors=wrap_errors)
    policy = ErrorPolicy.skip(reconnect=True)
    async with runner(env, projection_class, SQLiteRecordingView, policy) as r:
        ids = [rec.notification.id for rec in await r.app.save(Counter())]
        await r.wait(ids[-1], timeout=10)
        await check_exactly_once(r.view, r.app.name, ids)
        stats = await r.statistics()
        assert (stats.skipped, stats.reconnections) == (0, 1)
