"""A projection runner killed with SIGKILL while catching up loses nothing and
repeats nothing (SPEC invariant 1: a processed event's tracking and the view's
update commit together or not at all).

A child process runs a ProjectionRunner (batches of 50 events, 1 ms of work
per event) over 6,000 recorded events into a view that records every
processed notification id with its tracking; it is killed with SIGKILL at
random moments, 10 times, each time while it is catching up. After each
kill the view holds exactly the events up to its tracking position, each
once; the next child resumes from there; the last one finishes the job.
Run on Postgres and on SQLite files.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from asyncsourcing.persistence import InfrastructureFactory
from asyncsourcing.utils import Environment
from tests.support.faults import (
    Counter,
    Counters,
    PostgresRecordingView,
    SQLiteRecordingView,
    check_exactly_once,
)
from tests.support.paths import ROOT
from tests.support.postgres import factory_env

N_EVENTS = 6000
KILLS = 10


async def record_events(env: dict[str, str]) -> list[int]:
    ids: list[int] = []
    async with Counters(env) as app:
        for _ in range(N_EVENTS // 200):
            recordings = await app.save(*(Counter() for _ in range(200)))
            ids.extend(r.notification.id for r in recordings)
    return ids


async def start_runner(env: dict[str, str], backend: str, delay: float) -> Any:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.faults",
        "runner",
        backend,
        str(delay),
        cwd=ROOT,
        env={**os.environ, **env, "FAULTS_MAX_BATCH_SIZE": "50"},
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None
    line = await asyncio.wait_for(child.stdout.readline(), 30)
    assert line.strip() == b"ready", line
    return child


async def kill_and_restart(
    env: dict[str, str], backend: str, view_class: type[Any], ids: list[int]
) -> None:
    rng = random.Random()
    # The view as the runner's projection "recording" configures it.
    factory: InfrastructureFactory[Any] = InfrastructureFactory.construct(
        Environment("recording", env)
    )
    view = factory.construct_tracking_recorder(view_class)
    positions: list[int | None] = []
    try:
        for _ in range(KILLS):
            child = await start_runner(env, backend, delay=0.001)
            try:
                await asyncio.sleep(rng.uniform(0.05, 0.5))
                assert child.returncode is None, "the runner stopped by itself"
            finally:
                child.send_signal(signal.SIGKILL)
                await child.wait()
            assert child.returncode == -signal.SIGKILL
            position, _ = await check_exactly_once(view, "Counters", ids)
            # Killed while catching up, not after.
            assert position is None or position < max(ids)
            positions.append(position)
        # Progress was made across the kills (batches were committed).
        assert positions[-1] is not None and positions[-1] > min(ids)

        # The last runner finishes the job: every event exactly once.
        child = await start_runner(env, backend, delay=0.0)
        try:
            for _ in range(600):
                if await view.max_tracking_id("Counters") == max(ids):
                    break
                await asyncio.sleep(0.05)
        finally:
            child.send_signal(signal.SIGTERM)
            await child.wait()
        position, processed = await check_exactly_once(view, "Counters", ids)
        assert position == max(ids)
        assert processed == sorted(ids)
    finally:
        await factory.close()


@pytest.fixture
def sqlite_env(tmp_path: Path) -> dict[str, str]:
    return {
        "PERSISTENCE_MODULE": "asyncsourcing.sqlite",
        "SQLITE_DBNAME": str(tmp_path / "app.sqlite"),
        "RECORDING_SQLITE_DBNAME": str(tmp_path / "view.sqlite"),
    }


async def test_sigkilled_runner_resumes_exactly_once_on_sqlite(
    sqlite_env: dict[str, str],
) -> None:
    async with asyncio.timeout(120):
        ids = await record_events(sqlite_env)
        await kill_and_restart(sqlite_env, "sqlite", SQLiteRecordingView, ids)


@pytest.mark.postgres
async def test_sigkilled_runner_resumes_exactly_once_on_postgres(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    env = factory_env(postgres_env, pg_schema)
    async with asyncio.timeout(120):
        ids = await record_events(env)
        await kill_and_restart(env, "postgres", PostgresRecordingView, ids)
