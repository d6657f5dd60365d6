"""Event-driven waiting: woken by commits, sharing reads, never polling."""

from __future__ import annotations

import asyncio
import statistics
import time

import pytest

from asyncsourcing.persistence import Tracking
from asyncsourcing.popo import POPOTrackingRecorder
from asyncsourcing.waiting import PositionBoard


class CountingRecorder(POPOTrackingRecorder):
    """Counts the reads that waiters cause."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    async def max_tracking_id(self, application_name: str) -> int | None:
        self.reads += 1
        await asyncio.sleep(0.01)  # A read takes time, so waiters overlap it.
        return await super().max_tracking_id(application_name)


async def test_a_thousand_waiters_share_one_read() -> None:
    recorder = CountingRecorder()
    waiters = [
        asyncio.create_task(recorder.wait("upstream", 1, timeout=5))
        for _ in range(1000)
    ]
    await asyncio.sleep(0.05)
    assert recorder.reads == 1
    await recorder.insert_tracking(Tracking("upstream", 1))
    await asyncio.wait_for(asyncio.gather(*waiters), 1)
    # Later waiters for recorded positions need no read at all.
    await recorder.wait("upstream", 1)
    assert recorder.reads == 1


async def test_waiters_for_other_applications_read_separately() -> None:
    recorder = CountingRecorder()
    await recorder.insert_tracking(Tracking("a", 1))
    await recorder.insert_tracking(Tracking("b", 1))
    await asyncio.gather(recorder.wait("a", 1), recorder.wait("b", 1))
    assert recorder.reads == 0  # Both were advanced by the inserts themselves.
    other = CountingRecorder()
    other._max_tracking_ids["c"] = 2  # Recorded before this process started.
    await other.wait("c", 2)
    assert other.reads == 1


async def test_waiter_wakes_within_milliseconds() -> None:
    recorder = POPOTrackingRecorder()
    latencies = []
    for position in range(1, 51):
        task = asyncio.create_task(recorder.wait("upstream", position, timeout=5))
        await asyncio.sleep(0.002)
        started = time.perf_counter()
        await recorder.insert_tracking(Tracking("upstream", position))
        await task
        latencies.append(time.perf_counter() - started)
    # Generous bound for a loaded machine; the median is tens of microseconds.
    assert statistics.median(latencies) < 0.005


async def test_failed_read_reaches_the_waiters_and_is_retried() -> None:
    failures = [RuntimeError("database unavailable")]

    async def fetch(application_name: str) -> int | None:
        if failures:
            raise failures.pop()
        return 7

    board = PositionBoard(fetch)
    with pytest.raises(RuntimeError, match="unavailable"):
        await board.wait("upstream", 1, timeout=1)
    await board.wait("upstream", 7, timeout=1)
    assert board.known("upstream") == 7


async def test_poll_interval_picks_up_what_no_one_announced() -> None:
    recorded: dict[str, int] = {}

    async def fetch(application_name: str) -> int | None:
        return recorded.get(application_name)

    board = PositionBoard(fetch, poll_interval=0.02)
    task = asyncio.create_task(board.wait("upstream", 1, timeout=2))
    await asyncio.sleep(0.05)
    recorded["upstream"] = 1  # Recorded by "another process", not announced.
    await asyncio.wait_for(task, 1)
    await board.aclose()


async def test_close_interrupts_waiters_and_cancels_reads() -> None:
    async def fetch(application_name: str) -> int | None:
        return None

    board = PositionBoard(fetch, poll_interval=0.01)
    task = asyncio.create_task(board.wait("upstream", 1, timeout=5))
    await asyncio.sleep(0.03)
    await board.aclose()
    with pytest.raises(Exception, match="closed"):
        await task


async def test_timed_out_waiters_do_not_accumulate() -> None:
    recorder = POPOTrackingRecorder()
    for _ in range(3):
        waiters = [recorder.wait("upstream", 1, timeout=0.01) for _ in range(500)]
        results = await asyncio.gather(*waiters, return_exceptions=True)
        assert all(isinstance(r, TimeoutError) for r in results)
    board = recorder.position_board
    assert board._count_waiters() < 500  # Compacted, not 1,500 dead entries.
    task = asyncio.create_task(recorder.wait("upstream", 1, timeout=1))
    await recorder.insert_tracking(Tracking("upstream", 1))
    await task
