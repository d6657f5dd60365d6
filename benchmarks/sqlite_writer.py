"""``python -m benchmarks sqlite-writer``: what one SQLite writer's save costs,
part by part, beside eventsourcing's.

One writer saves one-event aggregates one after the other (durable: WAL,
``synchronous=FULL``, as both libraries open SQLite). eventsourcing runs the
whole save in the caller's thread; asyncsourcing runs the database's part in
aiosqlite's thread, so that the event loop never waits for the disk, and
each save pays a round trip between the two threads. This measures, in one
run, taking turns: the two libraries' saves, a bare ``INSERT ... RETURNING``
autocommit in the calling thread and through aiosqlite, and the round trip
alone (a no-op through a thread and back, woken as aiosqlite wakes the
loop). The round trip is the floor of the gap: a save that keeps the loop
free cannot cost less than eventsourcing's minus its Python work plus one
round trip.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from queue import SimpleQueue
from typing import Any
from uuid import UUID, uuid4

from benchmarks import sections
from benchmarks.progress import log

__all__ = ["main"]

SECTION_BEGIN = (
    "<!-- sqlite-writer: written by `python -m benchmarks sqlite-writer` -->"
)
SECTION_END = "<!-- /sqlite-writer -->"
RESULTS = Path(__file__).with_name("RESULTS.md")

_TABLE = (
    "CREATE TABLE IF NOT EXISTS stored_events (originator_id TEXT, "
    "originator_version INTEGER, topic TEXT, state BLOB, "
    "PRIMARY KEY (originator_id, originator_version))"
)
_INSERT = "INSERT INTO stored_events VALUES (?, ?, ?, ?) RETURNING rowid"
_STATE = b'{"timestamp": "2026-12-06T00:00:00+00:00", "originator_topic": "x"}'


def _row() -> tuple[str, int, str, bytes]:
    return (str(uuid4()), 1, "eventsourcing.domain:Aggregate.Created", _STATE)


def _connect(path: str) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute(_TABLE)
    return connection


class _Thread:
    """A thread that runs what it is sent, waking the loop as aiosqlite does."""

    def __init__(self) -> None:
        self._queue: SimpleQueue[Any] = SimpleQueue()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            future, function = item
            result = function()
            future.get_loop().call_soon_threadsafe(future.set_result, result)

    async def call(self, function: Callable[[], Any]) -> Any:
        future = asyncio.get_running_loop().create_future()
        self._queue.put((future, function))
        return await future

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join()


async def _es_saves(folder: str, n: int) -> float:
    from eventsourcing.application import Application
    from eventsourcing.domain import Aggregate

    app = Application(
        env={
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": os.path.join(folder, "es.sqlite"),
        }
    )
    app.save(Aggregate())
    started = time.perf_counter()
    for _ in range(n):
        app.save(Aggregate())
    elapsed = time.perf_counter() - started
    app.close()
    return elapsed


async def _our_saves(folder: str, n: int) -> float:
    from asyncsourcing.application import Application
    from asyncsourcing.domain import Aggregate

    env = {
        "PERSISTENCE_MODULE": "asyncsourcing.sqlite",
        "SQLITE_DBNAME": os.path.join(folder, "ours.sqlite"),
    }
    async with Application[UUID](env) as app:
        await app.save(Aggregate())
        started = time.perf_counter()
        for _ in range(n):
            await app.save(Aggregate())
        return time.perf_counter() - started


async def _inserts_here(folder: str, n: int) -> float:
    connection = _connect(os.path.join(folder, "here.sqlite"))
    started = time.perf_counter()
    for _ in range(n):
        connection.execute(_INSERT, _row()).fetchall()
    elapsed = time.perf_counter() - started
    connection.close()
    return elapsed


async def _inserts_via_aiosqlite(folder: str, n: int) -> float:
    import aiosqlite

    path = os.path.join(folder, "aiosqlite.sqlite")
    async with aiosqlite.connect(path, isolation_level=None) as connection:
        await connection.execute("PRAGMA journal_mode=WAL")
        await connection.execute(_TABLE)
        started = time.perf_counter()
        for _ in range(n):
            await connection.execute_fetchall(_INSERT, _row())
        return time.perf_counter() - started


async def _round_trips(_: str, n: int) -> float:
    thread = _Thread()
    try:
        started = time.perf_counter()
        for _ in range(n):
            await thread.call(lambda: None)
        return time.perf_counter() - started
    finally:
        thread.stop()


PARTS: dict[str, Callable[[str, int], Awaitable[float]]] = {
    "eventsourcing 9.5 save()": _es_saves,
    "asyncsourcing save()": _our_saves,
    "INSERT, in the calling thread": _inserts_here,
    "INSERT, through aiosqlite's thread": _inserts_via_aiosqlite,
    "round trip to a thread, no work": _round_trips,
}


def measure(n: int, repetitions: int) -> dict[str, list[float]]:
    """Microseconds per operation of each part, per repetition (they take turns)."""
    results: dict[str, list[float]] = {name: [] for name in PARTS}
    for repetition in range(repetitions):
        for name, part in PARTS.items():
            with tempfile.TemporaryDirectory() as folder:
                elapsed = asyncio.run(part(folder, n))
            results[name].append(elapsed / n * 1e6)
        log(f"repetition {repetition + 1} of {repetitions}")
    return results


def section(results: dict[str, list[float]], args: argparse.Namespace) -> str:
    es = statistics.median(results["eventsourcing 9.5 save()"])
    lines = [
        SECTION_BEGIN,
        "## One SQLite writer, part by part (issue 13)",
        "",
        f"`python -m benchmarks sqlite-writer --saves {args.saves} --repetitions "
        f"{args.repetitions}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
        ": one writer, one row at a time, on the machine's disk (WAL, "
        "synchronous=FULL). Medians (min..max) in microseconds per operation, "
        "and operations per second.",
        "",
        "| part | µs each | per second | vs eventsourcing's save |",
        "|---|--:|--:|--:|",
    ]
    for name, values in results.items():
        median = statistics.median(values)
        lines.append(
            f"| {name} | {median:,.0f} ({min(values):,.0f}..{max(values):,.0f}) "
            f"| {1e6 / median:,.0f} | {es / median:.2f}x |"
        )
    lines += [SECTION_END, ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks sqlite-writer")
    parser.add_argument("--saves", type=int, default=3000)
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--no-results", action="store_true")
    args = parser.parse_args(argv)
    text = section(measure(args.saves, args.repetitions), args)
    print(text)
    if not args.no_results:
        sections.write_section(RESULTS, text, SECTION_BEGIN, SECTION_END)
        log(f"wrote the sqlite-writer section of {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
