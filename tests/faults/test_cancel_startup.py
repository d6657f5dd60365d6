"""Cancelling the task that enters a projection runner, at any moment of its
start, leaves nothing behind (SPEC invariant 5; issue 11, item 5).

``async with ProjectionRunner(...)`` opens, before its block begins, the
application's and the view's pools, their LISTEN connections (and tasks),
creates tables, reads the view's position and subscribes. A task cancelled
meanwhile (a web server shutting down during startup, a ``timeout()`` around
it) must close whatever was opened so far: no connection left open on the
server, no task left running, no ``ResourceWarning: unclosed connection``.

The task is cancelled at offsets spread over the whole start, a few
milliseconds apart, so that every stage of it is hit.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from asyncsourcing.projection import ProjectionRunner
from tests.support.faults import (
    Counters,
    PostgresRecordingView,
    RecordingProjection,
    SQLiteRecordingView,
)
from tests.support.postgres import factory_env, our_connections

STEP = 0.002  # Seconds between two offsets of cancellation.
MIN_SPAN = 0.06  # Seconds of start covered at least.


def runner(env: dict[str, str], view_class: type[Any]) -> ProjectionRunner[Any, Any]:
    return ProjectionRunner(
        application_class=Counters,
        projection_class=RecordingProjection,
        view_class=view_class,
        env=env,
    )


async def time_a_start(env: dict[str, str], view_class: type[Any]) -> float:
    """Seconds that entering a runner takes (the tables exist afterwards)."""
    started = time.monotonic()
    async with runner(env, view_class):
        elapsed = time.monotonic() - started
    return elapsed


async def enter_and_cancel_after(
    delay: float, env: dict[str, str], view_class: type[Any]
) -> None:
    async def enter() -> None:
        async with runner(env, view_class):
            await asyncio.sleep(60)

    task = asyncio.create_task(enter())
    await asyncio.sleep(delay)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@contextlib.contextmanager
def no_resource_warnings() -> Iterator[None]:
    """Fail on a ResourceWarning: an unclosed connection, socket or transport."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        yield
        gc.collect()  # asyncpg and aiosqlite warn when an open one is collected.
    unclosed = [str(w.message) for w in caught if w.category is ResourceWarning]
    assert unclosed == []


def offsets(span: float) -> list[float]:
    """Offsets a few milliseconds apart, from 0 to a bit past ``span``."""
    count = int(max(MIN_SPAN, span * 1.2) / STEP) + 1
    return [i * STEP for i in range(count)]


@pytest.mark.postgres
async def test_postgres_runner_cancelled_while_starting_leaves_nothing_behind(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    env = factory_env(postgres_env, pg_schema)
    # A first start creates the tables; later ones open connections, listen,
    # read and subscribe. Both kinds are cancelled.
    first_start = await time_a_start(env, PostgresRecordingView)
    span = max(first_start, await time_a_start(env, PostgresRecordingView))
    tasks_before = asyncio.all_tasks()
    with no_resource_warnings():
        for delay in offsets(span):
            await enter_and_cancel_after(delay, env, PostgresRecordingView)
            assert await tasks_left(tasks_before) == set(), f"at {delay}s"
            assert await connections_left(postgres_env, pg_schema) == [], f"at {delay}s"


async def test_sqlite_runner_cancelled_while_starting_leaves_nothing_behind(
    tmp_path: Path,
) -> None:
    env = {
        "PERSISTENCE_MODULE": "asyncsourcing.sqlite",
        "SQLITE_DBNAME": str(tmp_path / "app.sqlite"),
        "RECORDING_SQLITE_DBNAME": str(tmp_path / "view.sqlite"),
    }
    span = await time_a_start(env, SQLiteRecordingView)
    tasks_before = asyncio.all_tasks()
    threads_before = threading.active_count()
    with no_resource_warnings():
        for delay in offsets(span):
            await enter_and_cancel_after(delay, env, SQLiteRecordingView)
            assert await tasks_left(tasks_before) == set(), f"at {delay}s"
            # aiosqlite runs each connection in a thread of its own.
            assert threading.active_count() == threads_before, f"at {delay}s"


async def tasks_left(before: set[asyncio.Task[Any]]) -> set[asyncio.Task[Any]]:
    """Tasks started since ``before`` and still running, once cancelled ones end.

    asyncpg's ``Pool.terminate()`` cancels the pool's maintenance task
    without awaiting it (it cannot: it is not a coroutine): the task ends a
    few turns of the loop later.
    """
    left = asyncio.all_tasks() - before
    for _ in range(50):
        if not left:
            break
        await asyncio.sleep(0.01)
        left = asyncio.all_tasks() - before
    return left


async def connections_left(env: dict[str, str], schema: str) -> list[str]:
    """Our connections still open, once the server has seen closed ones go."""
    left = await our_connections(env, schema)
    for _ in range(20):
        if not left:
            break
        await asyncio.sleep(0.01)
        left = await our_connections(env, schema)
    return left
