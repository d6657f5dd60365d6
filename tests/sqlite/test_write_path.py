"""SQLite's write path leaves the event loop free: statements run in the
writer connection's thread, however large the save. A save cancelled while
its statement runs there still wakes the subscribers once it has run."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from uuid import UUID, uuid4

import pytest

from asyncsourcing.application import Application
from asyncsourcing.domain import Aggregate
from asyncsourcing.persistence import StoredEvent
from asyncsourcing.sqlite import SQLiteFactory

TICK = 0.002


async def test_the_event_loop_ticks_on_during_large_saves(tmp_path: Path) -> None:
    env = {
        "PERSISTENCE_MODULE": "asyncsourcing.sqlite",
        "SQLITE_DBNAME": str(tmp_path / "db.sqlite"),
    }
    async with Application[UUID](env) as app:
        await app.save(Aggregate())
        ticks: list[float] = []

        async def ticker() -> None:
            while True:
                ticks.append(time.perf_counter())
                await asyncio.sleep(TICK)

        ticking = asyncio.create_task(ticker())
        try:
            await asyncio.sleep(TICK * 5)
            # One statement (8,000 events), and a transaction of several.
            for events in (8000, 30000):
                originator_id = uuid4()
                stored = [
                    StoredEvent(originator_id, version, "tests:Topic", b"{}" * 100)
                    for version in range(1, events + 1)
                ]
                ticks.clear()
                started = time.perf_counter()
                ids = await app.recorder.insert_events(stored)
                took = time.perf_counter() - started
                assert ids is not None and len(ids) == events
                during = [t for t in ticks if t >= started]
                # The loop ran the ticker while the statements ran in the
                # connection's thread (a save run in the loop lets it tick
                # at most once, after). Counted, not timed: the machine may
                # be loaded.
                assert len(during) >= 3, (took, len(during))
        finally:
            ticking.cancel()


async def test_a_save_cancelled_in_the_thread_still_wakes_subscribers() -> None:
    # A private in-memory database: nothing polls, commits wake subscribers.
    async with SQLiteFactory({"SQLITE_DBNAME": ":memory:"}) as factory:
        recorder = await factory.application_recorder()
        await recorder.insert_events([StoredEvent(uuid4(), 1, "tests:Topic", b"{}")])
        async with recorder.subscribe(gt=1) as subscription:
            reading = asyncio.create_task(anext(subscription))
            await asyncio.sleep(0.05)
            stored = StoredEvent(uuid4(), 1, "tests:Topic", b"{}")
            saving = asyncio.create_task(recorder.insert_events([stored]))
            await asyncio.sleep(0)  # Sent to the connection's thread.
            saving.cancel()
            with pytest.raises(asyncio.CancelledError):
                await saving
            # It ran to its end there, committed, and woke the subscription.
            notification = await asyncio.wait_for(reading, 2)
            assert notification.originator_id == stored.originator_id
