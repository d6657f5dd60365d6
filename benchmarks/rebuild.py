"""``python -m benchmarks rebuild``: rebuild a projection over many events.

An application records ``--events`` events (one ``Created`` each, saved a
thousand at a time, in a process of their own); version 1 of the bulk event
counters projection is registered (it serves, having processed nothing),
then ``ProjectionVersions.rebuild()`` builds version 2 and switches to it,
in a second process, which reports its progress as the CLI's rebuild
does, and its resident set size (VmRSS) at every report. The table gives
the rate, the RSS at the start, at half way and at the end, and its peak
(``ru_maxrss``); the goal (issue 13) is a flat RSS under 150 MB for a
million events.

eventsourcing 9.5 has no rebuild: its figure for the same catch-up is the
catch-up scenario's (``python -m benchmarks --scenario catchup``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from uuid import UUID

from benchmarks import sections
from benchmarks.memory_child import rss_mib
from benchmarks.progress import log
from benchmarks.server import describe_durability, postgres_server

__all__ = ["main"]

SECTION_BEGIN = "<!-- rebuild: written by `python -m benchmarks rebuild` -->"
SECTION_END = "<!-- /rebuild -->"
RESULTS = Path(__file__).with_name("RESULTS.md")
SAVE_BATCH = 1000


def _view_class(backend: str) -> str:
    if backend == "sqlite":
        return "examples.eventcounters.sqlite:SQLiteEventCounters"
    return "examples.eventcounters.postgres:PostgresEventCounters"


# The child processes.


async def populate(env: dict[str, str], events: int) -> None:
    from asyncsourcing.application import Application
    from asyncsourcing.domain import Aggregate

    async with Application[UUID](env) as app:
        done = 0
        while done < events:
            n = min(SAVE_BATCH, events - done)
            await app.save(*[Aggregate() for _ in range(n)])
            done += n
            if done % 100_000 == 0:
                log(f"recorded {done:,} events")


async def rebuild(env: dict[str, str], backend: str) -> dict[str, Any]:
    from asyncsourcing.application import Application
    from asyncsourcing.cli.config import resolve_class
    from asyncsourcing.persistence import TrackingRecorder
    from asyncsourcing.projection import (
        ProjectionRunner,
        ProjectionVersions,
        RebuildProgress,
    )
    from examples.eventcounters.projection import BulkEventCountersProjection

    view_class = resolve_class(_view_class(backend), TrackingRecorder, "view")

    class Version2(BulkEventCountersProjection):
        name = BulkEventCountersProjection.name
        version = 2

    # Version 1 serves (it registers as the first version) with nothing done.
    async with ProjectionRunner(
        application_class=Application[UUID],
        projection_class=BulkEventCountersProjection,
        view_class=view_class,
        env=env,
    ):
        pass
    samples: list[dict[str, float]] = []
    rss_start = rss_mib()

    def report(progress: RebuildProgress) -> None:
        rss = rss_mib()
        samples.append(
            {
                "elapsed": progress.elapsed,
                "position": progress.position,
                "rate": progress.rate or 0.0,
                "rss": rss,
            }
        )
        eta = "?" if progress.eta is None else f"{progress.eta:.0f}s"
        log(
            f"rebuild: {progress.fraction:6.1%} {progress.position:,}/"
            f"{progress.head:,} events, {progress.rate or 0:,.0f} ev/s, "
            f"ETA {eta}, RSS {rss:.1f} MiB"
        )

    started = time.perf_counter()
    async with ProjectionVersions(
        application_class=Application[UUID],
        projection_class=Version2,
        view_class=view_class,
        env=env,
    ) as versions:
        versions.progress_interval = 2.0
        record = await versions.rebuild(max_lag=0, on_progress=report)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "events": samples[-1]["position"] if samples else 0,
        "rss_start": rss_start,
        "samples": samples,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "version": record.version,
        "status": str(record.status),
    }


def child(argv: Sequence[str]) -> int:
    job, config = argv[0], json.loads(argv[1])
    if job == "populate":
        asyncio.run(populate(config["env"], config["events"]))
        return 0
    result = asyncio.run(rebuild(config["env"], config["backend"]))
    print(json.dumps(result))
    return 0


# The parent.


def _run_child(job: str, config: dict[str, Any]) -> str:
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.rebuild",
            "--child",
            job,
            json.dumps(config),
        ],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    return completed.stdout


def measure(backend: str, env: dict[str, str], events: int) -> dict[str, Any]:
    log(f"{backend}: recording {events:,} events")
    started = time.perf_counter()
    _run_child("populate", {"env": env, "events": events})
    log(f"{backend}: recorded in {time.perf_counter() - started:.0f}s; rebuilding")
    result: dict[str, Any] = json.loads(
        _run_child("rebuild", {"env": env, "backend": backend}).splitlines()[-1]
    )
    return result


def rss_at(samples: list[dict[str, float]], fraction: float) -> float:
    last = samples[-1]["position"] or 1
    for sample in samples:
        if sample["position"] >= fraction * last:
            return sample["rss"]
    return samples[-1]["rss"]


def section(results: dict[str, dict[str, Any]], events: int, durability: str) -> str:
    lines = [
        SECTION_BEGIN,
        "## Rebuild (issue 13)",
        "",
        f"`python -m benchmarks rebuild --events {events}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: the bulk "
        "event counters, version 2 rebuilt beside version 1 and switched to, "
        f"over {events:,} events. PostgreSQL: {durability}.",
        "",
        "| backend | events/s | seconds | RSS at start (MiB) | at 50 % | at end "
        "| peak (MiB) | progress reports |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for backend, r in results.items():
        samples = r["samples"]
        lines.append(
            f"| {backend} | {r['events'] / r['seconds']:,.0f} | {r['seconds']:.1f} "
            f"| {r['rss_start']:.1f} | {rss_at(samples, 0.5):.1f} "
            f"| {samples[-1]['rss']:.1f} | {r['peak_rss']:.1f} | {len(samples)} |"
        )
    lines += [
        "",
        "RSS is the rebuilding process's VmRSS at each progress report (every "
        "2 s); the events are recorded by another process before. The rate "
        "counts from the start of the rebuild to the switch, connecting "
        "included.",
        SECTION_END,
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    words = list(argv) if argv is not None else sys.argv[1:]
    if words[:1] == ["--child"]:
        return child(words[1:])
    parser = argparse.ArgumentParser(prog="python -m benchmarks rebuild")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument(
        "--backend", action="append", choices=["sqlite", "postgres"], default=None
    )
    parser.add_argument("--no-results", action="store_true")
    args = parser.parse_args(words)
    backends = args.backend or ["sqlite", "postgres"]
    results: dict[str, dict[str, Any]] = {}
    durability = "not run"
    with tempfile.TemporaryDirectory() as tmp:
        if "sqlite" in backends:
            env = {
                "PERSISTENCE_MODULE": "asyncsourcing.sqlite",
                "SQLITE_DBNAME": os.path.join(tmp, "app.sqlite"),
                "BULKEVENTCOUNTERS_SQLITE_DBNAME": os.path.join(tmp, "view.sqlite"),
            }
            results["SQLite"] = measure("sqlite", env, args.events)
        if "postgres" in backends:
            with postgres_server(durable=True) as server:
                durability = describe_durability(server.durability)
                env = {"PERSISTENCE_MODULE": "asyncsourcing.postgres", **server.env()}
                results["PostgreSQL"] = measure("postgres", env, args.events)
    text = section(results, args.events, durability)
    print(text)
    if not args.no_results:
        sections.write_section(RESULTS, text, SECTION_BEGIN, SECTION_END)
        log(f"wrote the rebuild section of {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
