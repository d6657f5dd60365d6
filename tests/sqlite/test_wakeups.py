"""Waking subscriptions and waiters, across instances and across processes.

In the process, every recorder on the same database file is woken by the
commit itself: the tests set a long poll interval to show no poll is
involved. Other processes' commits are found by polling.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from asyncsourcing.persistence import (
    ApplicationRecorder,
    Notification,
    StoredEvent,
    Tracking,
)
from asyncsourcing.sqlite import SQLiteFactory, SQLiteTrackingRecorder
from tests.support.paths import ROOT

NO_POLL = "600"  # Seconds: far longer than any test waits.

# Writes ``count`` events in a process of its own, each with tracking of
# "upstream" at successive positions from ``first``.
WRITER_SCRIPT = """
import asyncio, sys, uuid
from asyncsourcing.persistence import StoredEvent, Tracking
from asyncsourcing.sqlite import SQLiteFactory

async def main(db_name, first, count):
    async with SQLiteFactory({"SQLITE_DBNAME": db_name}) as factory:
        recorder = await factory.process_recorder()
        originator_id = uuid.uuid4()
        for n in range(count):
            await recorder.insert_events(
                [StoredEvent(originator_id, n + 1, "tests:Topic", b"{}")],
                tracking=Tracking("upstream", first + n),
            )

asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
"""


async def run_writer(db_name: str, first: int, count: int) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        WRITER_SCRIPT,
        db_name,
        str(first),
        str(count),
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()


def stored(originator_id: Any = None, version: int = 1) -> StoredEvent:
    return StoredEvent(originator_id or uuid4(), version, "tests:Topic", b"{}")


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "db.sqlite"


@pytest.fixture
async def factories(db_path: Path) -> AsyncIterator[list[SQLiteFactory]]:
    """Two factories on the same file, named in two ways."""
    link = db_path.parent / "link.sqlite"
    link.symlink_to(db_path)
    names = [str(db_path), f"file:{link}?mode=rwc"]
    factories = [
        SQLiteFactory({"SQLITE_DBNAME": name, "SQLITE_POLL_INTERVAL": NO_POLL})
        for name in names
    ]
    try:
        yield factories
    finally:
        for factory in factories:
            await factory.close()


async def test_waiter_is_woken_by_another_instance_within_milliseconds(
    factories: list[SQLiteFactory],
) -> None:
    waiting_recorder = await factories[0].tracking_recorder()
    writing_recorder = await factories[1].tracking_recorder()
    await writing_recorder.insert_tracking(Tracking("upstream", 1))
    await waiting_recorder.wait("upstream", 1)
    latencies = []
    for position in range(2, 12):
        woken_at: list[float] = []

        async def waiter(
            position: int = position, woken_at: list[float] = woken_at
        ) -> None:
            await waiting_recorder.wait("upstream", position, timeout=5)
            woken_at.append(time.perf_counter())

        task = asyncio.create_task(waiter())
        await asyncio.sleep(0.01)
        assert not task.done()
        await writing_recorder.insert_tracking(Tracking("upstream", position))
        committed_at = time.perf_counter()
        await task
        latencies.append(woken_at[0] - committed_at)
    assert max(latencies) < 0.005, latencies


async def test_waiters_on_instances_share_one_board_and_one_read(
    factories: list[SQLiteFactory], monkeypatch: pytest.MonkeyPatch
) -> None:
    recorders = [await factory.tracking_recorder() for factory in factories]
    reads = 0
    max_tracking_id = SQLiteTrackingRecorder.max_tracking_id

    async def counted(
        self: SQLiteTrackingRecorder, application_name: str
    ) -> int | None:
        nonlocal reads
        reads += 1
        return await max_tracking_id(self, application_name)

    monkeypatch.setattr(SQLiteTrackingRecorder, "max_tracking_id", counted)
    assert recorders[0].position_board is recorders[1].position_board
    waiters = [
        asyncio.create_task(recorders[n % 2].wait("upstream", 1 + n % 3, timeout=5))
        for n in range(200)
    ]
    await asyncio.sleep(0.05)
    assert not any(waiter.done() for waiter in waiters)
    await recorders[1].insert_tracking(Tracking("upstream", 3))
    await asyncio.wait_for(asyncio.gather(*waiters), 2)
    assert reads == 1


async def test_subscription_is_woken_by_another_instance(
    factories: list[SQLiteFactory],
) -> None:
    reader = await factories[0].application_recorder()
    writer = await factories[1].application_recorder()
    async with reader.subscribe() as subscription:
        for expected_id in (1, 2, 3):
            reading = asyncio.create_task(anext(subscription))
            await asyncio.sleep(0.01)
            assert not reading.done()
            await writer.insert_events([stored()])
            notification = await asyncio.wait_for(reading, 0.5)
            assert notification.id == expected_id


async def test_other_events_tables_do_not_wake_a_subscription(
    factories: list[SQLiteFactory],
) -> None:
    reader = await factories[0].application_recorder()
    snapshots = await factories[1].aggregate_recorder("snapshots")
    async with reader.subscribe() as subscription:
        reading = asyncio.create_task(anext(subscription))
        await asyncio.sleep(0.01)
        await snapshots.insert_events([stored()])
        await asyncio.sleep(0.05)
        assert not reading.done()
        reading.cancel()


async def take_ids(subscription: Any, n: int) -> list[int]:
    ids: list[int] = []
    async for notification in subscription:
        assert isinstance(notification, Notification)
        ids.append(notification.id)
        if len(ids) == n:
            break
    return ids


async def test_other_processes_commits_are_found_by_polling(db_path: Path) -> None:
    env = {"SQLITE_DBNAME": str(db_path), "SQLITE_POLL_INTERVAL": "0.05"}
    async with SQLiteFactory(env) as factory:
        recorder = await factory.process_recorder()
        async with recorder.subscribe() as subscription:
            reading = asyncio.create_task(take_ids(subscription, 3))
            waiting = asyncio.create_task(recorder.wait("upstream", 3, timeout=30))
            await asyncio.sleep(0.1)
            await run_writer(str(db_path), first=1, count=3)
            exited_at = time.perf_counter()
            assert await asyncio.wait_for(reading, 2) == [1, 2, 3]
            await asyncio.wait_for(waiting, 2)
            # Within a poll's backoff of the commit: 8 x 0.05 s at most.
            assert time.perf_counter() - exited_at < 1


async def test_concurrent_writers_get_strictly_increasing_ids(db_path: Path) -> None:
    writers, per_writer, by_process = 4, 25, 40
    db_name = str(db_path)
    factories = [
        SQLiteFactory({"SQLITE_DBNAME": db_name, "SQLITE_POLL_INTERVAL": "0.02"})
        for _ in range(writers)
    ]
    try:
        recorders = [await factory.process_recorder() for factory in factories]
        total = writers * per_writer + by_process

        async def write(recorder: ApplicationRecorder) -> list[int]:
            originator_id, ids = uuid4(), list[int]()
            for version in range(1, per_writer + 1):
                new_ids = await recorder.insert_events([stored(originator_id, version)])
                assert new_ids is not None
                ids.extend(new_ids)
            return ids

        async with recorders[0].subscribe() as subscription:
            reading = asyncio.create_task(take_ids(subscription, total))
            # Another process writes at the same time, to the same file.
            results = await asyncio.gather(
                *(write(recorder) for recorder in recorders),
                run_writer(db_name, first=1, count=by_process),
            )
            seen = await asyncio.wait_for(reading, 20)

        returned = [ids for ids in results if ids is not None]  # The process: None.
        for ids in returned:
            assert ids == sorted(set(ids))
        assert len({i for ids in returned for i in ids}) == writers * per_writer
        # The subscriber saw every id once, in order, with no gap.
        assert seen == list(range(1, total + 1))
    finally:
        for factory in factories:
            await factory.close()
