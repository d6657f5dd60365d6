"""Concurrent writers in two processes, projected live: the view counts exactly
what was written (SPEC invariant 3: a subscriber never passes over an event
that commits later with a lower notification id, and never yields one twice).

8 writer tasks, 4 in this process and 4 in a child process, save 2,000
events each, one event per save, while a ProjectionRunner projects them into
a view that records every processed notification id with its tracking.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

import pytest

from asyncsourcing.projection import ProjectionRunner
from tests.support.faults import (
    Counters,
    PostgresRecordingView,
    RecordingProjection,
    check_exactly_once,
    write_events,
)
from tests.support.paths import ROOT
from tests.support.postgres import admin_connection, factory_env, quote

pytestmark = pytest.mark.postgres

TASKS_PER_PROCESS = 4
EVENTS_PER_TASK = 2000


async def test_concurrent_writers_in_two_processes_are_projected_exactly_once(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    env = factory_env(postgres_env, pg_schema, POSTGRES_POOL_SIZE="4")
    total = 2 * TASKS_PER_PROCESS * EVENTS_PER_TASK
    async with asyncio.timeout(90):
        async with ProjectionRunner(
            application_class=Counters,
            projection_class=RecordingProjection,
            view_class=PostgresRecordingView,
            env=env,
        ) as runner:
            # Tables exist before the child starts writing.
            await runner.app.recorder.max_notification_id()
            child = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.support.faults",
                "writer",
                str(TASKS_PER_PROCESS),
                str(EVENTS_PER_TASK),
                cwd=ROOT,
                env={**os.environ, **env},
                stdout=asyncio.subprocess.PIPE,
            )
            try:
                assert child.stdout is not None
                assert (await child.stdout.readline()).strip() == b"ready"
                ours = await asyncio.gather(
                    *(
                        write_events(runner.app, EVENTS_PER_TASK)
                        for _ in range(TASKS_PER_PROCESS)
                    )
                )
                out, _ = await child.communicate()
            finally:
                if child.returncode is None:
                    child.kill()
                    await child.wait()
            assert child.returncode == 0
            theirs = json.loads(out)
            written = [i for ids in ours for i in ids] + theirs
            assert len(written) == len(set(written)) == total

            # The live projection catches up with everything written.
            await runner.wait(max(written), timeout=60)
            view = runner.projection.view
            position, processed = await check_exactly_once(
                view, runner.app.name, written
            )
            assert position == max(written)
            assert len(processed) == total

        # What the database holds is what the writers were told.
        async with admin_connection(postgres_env) as conn:
            table = f"{quote(pg_schema)}.{quote('counters_events')}"
            rows = await conn.fetch(
                f"SELECT notification_id FROM {table} ORDER BY notification_id"
            )
        assert [row[0] for row in rows] == sorted(written)
