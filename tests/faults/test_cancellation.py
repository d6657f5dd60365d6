"""Cancellation is clean (SPEC invariant 5) and atomic, on Postgres.

Cancelling the task that runs ``run_forever()``, a task inside
``view.wait()`` and a task inside ``app.save()``, at many different
moments, leaves no task and no connection behind (``pg_stat_activity``),
and no half-written state: a cancelled save is recorded fully or not at
all, and saves running beside it are unaffected.
(tests/projection/test_projection.py covers cancellation on the in-memory backend, and
tests/postgres/test_listen.py cancelling recorder-level waits and queries.)
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import pytest

from asyncsourcing.persistence import IntegrityError
from asyncsourcing.projection import ProjectionRunner
from tests.support.faults import (
    Counter,
    Counters,
    PostgresRecordingView,
    RecordingProjection,
    check_exactly_once,
)
from tests.support.postgres import admin_connection, factory_env, our_connections, quote

pytestmark = pytest.mark.postgres

ROUNDS = 100


async def no_connections_left(env: dict[str, str], schema: str) -> list[str]:
    left: list[str] = []
    for _ in range(40):
        left = await our_connections(env, schema)
        if not left:
            break
        await asyncio.sleep(0.05)
    return left


async def new_tasks(before: set[asyncio.Task[Any]]) -> set[asyncio.Task[Any]]:
    await asyncio.sleep(0)
    return {t for t in asyncio.all_tasks() - before if not t.done()}


async def events_per_originator(
    conn: Any, schema: str, ids: Sequence[UUID]
) -> dict[UUID, list[int]]:
    table = f"{quote(schema)}.{quote('counters_events')}"
    rows = await conn.fetch(
        f"SELECT originator_id, originator_version FROM {table} "
        "WHERE originator_id = ANY($1) ORDER BY originator_id, originator_version",
        list(ids),
    )
    versions: dict[UUID, list[int]] = {i: [] for i in ids}
    for row in rows:
        versions[row[0]].append(row[1])
    return versions


def runner(env: dict[str, str]) -> ProjectionRunner[Any, Any]:
    return ProjectionRunner(
        application_class=Counters,
        projection_class=RecordingProjection,
        view_class=PostgresRecordingView,
        env=env,
    )


async def test_cancelling_run_forever_at_any_moment_leaves_nothing_behind(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    env = factory_env(postgres_env, pg_schema)
    async with Counters(env) as app:
        for _ in range(10):
            await app.save(*(Counter() for _ in range(200)))
        last = await app.recorder.max_notification_id()
    assert last is not None
    ids = list(range(1, last + 1))
    before = asyncio.all_tasks()
    rng = random.Random()
    async with asyncio.timeout(60):
        # At once (while connecting), while catching up, and while idle.
        for delay in [0.0, 0.001, 0.01, *(rng.uniform(0.0, 0.3) for _ in range(8))]:
            task = asyncio.create_task(runner(env).run_forever())
            await asyncio.sleep(delay)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await no_connections_left(postgres_env, pg_schema) == []
            assert await new_tasks(before) == set()
        # Whatever was processed was processed once; a last run finishes.
        async with runner(env) as r:
            await r.wait(last, timeout=30)
            await check_exactly_once(r.projection.view, "Counters", ids)
    assert await no_connections_left(postgres_env, pg_schema) == []
    assert await new_tasks(before) == set()


async def test_cancelling_view_wait_leaves_other_waiters_and_nothing_behind(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    env = factory_env(postgres_env, pg_schema)
    before = asyncio.all_tasks()
    async with asyncio.timeout(30):
        async with runner(env) as r:
            view = r.projection.view
            # Two waiters for the same position, one cancelled while the
            # shared read may be in flight, one after it.
            first = asyncio.create_task(view.wait("Counters", 1, timeout=20))
            second = asyncio.create_task(view.wait("Counters", 1, timeout=20))
            third = asyncio.create_task(r.wait(1, timeout=20))
            await asyncio.sleep(0)
            first.cancel()
            await asyncio.sleep(0.2)
            third.cancel()
            for task in (first, third):
                with pytest.raises(asyncio.CancelledError):
                    await task
            assert not second.done()
            recordings = await r.app.save(Counter())
            assert recordings[-1].notification.id == 1
            await asyncio.wait_for(second, 10)
            # Many cancelled waits don't break later ones.
            cancelled = [
                asyncio.create_task(view.wait("Counters", 1000, timeout=20))
                for _ in range(200)
            ]
            await asyncio.sleep(0.05)
            for task in cancelled:
                task.cancel()
            await asyncio.gather(*cancelled, return_exceptions=True)
            recordings = await r.app.save(Counter())
            await view.wait("Counters", recordings[-1].notification.id, timeout=10)
    assert await no_connections_left(postgres_env, pg_schema) == []
    assert await new_tasks(before) == set()


async def test_cancelled_save_is_recorded_fully_or_not_at_all(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    env = factory_env(postgres_env, pg_schema)
    rng = random.Random()
    before = asyncio.all_tasks()
    outcomes = {"recorded": 0, "not recorded": 0, "done before cancel": 0}
    async with asyncio.timeout(60):
        async with Counters(env) as app, admin_connection(postgres_env) as admin:
            await app.recorder.max_notification_id()  # Tables exist.
            for i in range(ROUNDS):
                # Four concurrent saves of five new aggregates each (they
                # share a transaction), one of them cancelled.
                groups = [[Counter() for _ in range(5)] for _ in range(4)]
                tasks = [asyncio.create_task(app.save(*g)) for g in groups]
                victim = rng.randrange(4)
                await asyncio.sleep(rng.uniform(0, 0.004) if i % 4 else 0)
                tasks[victim].cancel()
                results = await asyncio.gather(*tasks, return_exceptions=True)
                for n, (group, result) in enumerate(zip(groups, results, strict=True)):
                    stored = await events_per_originator(
                        admin, pg_schema, [a.id for a in group]
                    )
                    counts = {len(v) for v in stored.values()}
                    if isinstance(result, BaseException):
                        if n != victim or not isinstance(
                            result, asyncio.CancelledError
                        ):
                            # Saves beside a cancelled one are not failed by it.
                            raise AssertionError(f"save {n} failed") from result
                        assert counts in ({0}, {1}), f"half-written: {stored}"
                        outcomes["recorded" if counts == {1} else "not recorded"] += 1
                    else:
                        outcomes["done before cancel"] += n == victim
                        assert counts == {1}, f"save {n} returned but: {stored}"
                        assert [r.notification.id for r in result] == sorted(
                            r.notification.id for r in result
                        )
            # The application still works, and nothing is recorded twice.
            again = Counter()
            await app.save(again)
            again.increment()
            await app.save(again)
            assert (await app.repository.get(again.id)).count == 1
            # A stale copy cannot record version 2 again.
            stale = await app.repository.get(again.id, version=1)
            stale.increment()
            with pytest.raises(IntegrityError):
                await app.save(stale)
            assert (await app.repository.get(again.id)).version == 2
    assert sum(outcomes.values()) == ROUNDS
    # Cancelled before it started every 4th time (and at random otherwise).
    assert outcomes["recorded"] + outcomes["not recorded"] >= ROUNDS // 4
    assert await no_connections_left(postgres_env, pg_schema) == []
    assert await new_tasks(before) == set()
