"""``python -m benchmarks writers``: writers in many processes, with and
without the table lock (issue 14).

    python -m benchmarks writers [--seconds S] [--repetitions N]
                                 [--processes P ...] [--no-results]

``P`` processes of one writer each save one-event aggregates
(``await app.save(Aggregate())``, one after the other) for ``--seconds``,
all starting together, on one PostgreSQL events table:

* asyncsourcing in table-lock mode (the default: eventsourcing's EXCLUSIVE
  table lock, taken by every save);
* asyncsourcing in concurrent write mode (``POSTGRES_CONCURRENT_WRITES=true``:
  a shared advisory lock, readers keep to a visibility horizon);
* eventsourcing 9.5's writers (table lock), at the largest ``P``, for
  reference.

Each configuration runs ``--repetitions`` times, interleaved, on a new table
each time, on a durable throwaway server (:func:`benchmarks.server.postgres_server`).
The table gives the median events per second (minimum and maximum in
brackets), the writers' CPU (% of a core, summed over the processes), and
where their server sessions were, sampled from ``pg_stat_activity`` every
20 ms: ``ClientRead`` (waiting for the client: the writers' own work),
``Lock`` (the table lock, or another), ``IO`` (the WAL flush), ``CPU`` (no
wait event: running). A run with the default sizes also writes its section
into ``benchmarks/RESULTS.md`` (between :data:`SECTION_BEGIN` and
:data:`SECTION_END`, kept by the main harness).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

from benchmarks import sections
from benchmarks.progress import log
from benchmarks.server import PostgresServer, describe_durability, postgres_server

__all__ = ["main"]

SECTION_BEGIN = "<!-- writers: written by `python -m benchmarks writers` -->"
SECTION_END = "<!-- /writers -->"
RESULTS = Path(__file__).with_name("RESULTS.md")

DEFAULT_SECONDS = 5.0
DEFAULT_REPETITIONS = 3
DEFAULT_PROCESSES = (1, 8)

TABLE_LOCK = "asyncsourcing, table lock"
CONCURRENT = "asyncsourcing, concurrent writes"
EVENTSOURCING = "eventsourcing 9.5, table lock"

# The application name of the writers' sessions, sampled in pg_stat_activity.
SESSION_NAME = "benchmark-writer"
SAMPLE_INTERVAL = 0.02
_TICKS = os.sysconf("SC_CLK_TCK")


# The child processes.


def _wait_for_go() -> None:
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        raise SystemExit("no go")


async def _asyncsourcing_writer(env: dict[str, str], seconds: float) -> dict[str, Any]:
    from asyncsourcing.application import Application
    from asyncsourcing.domain import Aggregate

    async with Application[UUID](env) as app:
        await app.save(Aggregate())  # Connected, tables checked.
        await asyncio.get_running_loop().run_in_executor(None, _wait_for_go)
        return await _save_for(seconds, lambda: app.save(Aggregate()))


async def _save_for(seconds: float, save: Any) -> dict[str, Any]:
    events = 0
    cpu = time.process_time()
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        await save()
        events += 1
    elapsed = time.perf_counter() - started
    return {
        "events": events,
        "seconds": elapsed,
        "cpu": time.process_time() - cpu,
    }


def _eventsourcing_writer(env: dict[str, str], seconds: float) -> dict[str, Any]:
    from eventsourcing.application import Application
    from eventsourcing.domain import Aggregate

    # libpq's variable: eventsourcing has no setting for it.
    os.environ["PGAPPNAME"] = SESSION_NAME
    app = Application[UUID](env)
    app.save(Aggregate())
    _wait_for_go()
    events = 0
    cpu = time.process_time()
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        app.save(Aggregate())
        events += 1
    elapsed = time.perf_counter() - started
    app.close()
    return {"events": events, "seconds": elapsed, "cpu": time.process_time() - cpu}


def child(argv: Sequence[str]) -> int:
    library, config = argv[0], json.loads(argv[1])
    if library == "eventsourcing":
        result = _eventsourcing_writer(config["env"], config["seconds"])
    else:
        result = asyncio.run(_asyncsourcing_writer(config["env"], config["seconds"]))
    print(json.dumps(result), flush=True)
    return 0


# The parent.


@dataclass
class Trial:
    """One run of ``processes`` writers of one configuration."""

    events_per_second: float
    cpu_percent: float
    #: The machine's CPU in use meanwhile (% of a core, all processes).
    machine_cpu_percent: float
    #: The server's processes' CPU (% of a core), sampled.
    server_cpu_percent: float
    #: Samples of the writers' sessions: state -> count.
    waits: collections.Counter[str] = field(default_factory=collections.Counter)


def _env(server: PostgresServer, config: str) -> dict[str, str]:
    env = {**server.env(), "POSTGRES_APPLICATION_NAME": SESSION_NAME}
    if config == EVENTSOURCING:
        return {"PERSISTENCE_MODULE": "eventsourcing.postgres", **env}
    env["PERSISTENCE_MODULE"] = "asyncsourcing.postgres"
    env["POSTGRES_CONCURRENT_WRITES"] = "true" if config == CONCURRENT else "false"
    return env


def _create_tables(env: dict[str, str], config: str) -> None:
    """Make the table before the writers start (eventsourcing's creation of
    one table from many processes at once can fail)."""
    if config == EVENTSOURCING:
        from eventsourcing.application import Application as ESApplication

        ESApplication[UUID](env).close()
        return

    async def create() -> None:
        from asyncsourcing.application import Application

        async with Application[UUID](env) as app:
            await app.recorder.max_notification_id()

    asyncio.run(create())


class _Sampler(threading.Thread):
    """Samples where the writers' server sessions are, in a thread of its own."""

    def __init__(self, server: PostgresServer) -> None:
        super().__init__(daemon=True)
        self.conn = server.connect()
        self.waits: collections.Counter[str] = collections.Counter()
        self.stopping = threading.Event()
        # CPU ticks of each server process seen: first and last reading.
        self.ticks: dict[int, list[int]] = {}

    def run(self) -> None:
        while not self.stopping.wait(SAMPLE_INTERVAL):
            rows = self.conn.execute(
                "SELECT state, wait_event_type, wait_event FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name = %s",
                (SESSION_NAME,),
            ).fetchall()
            self._read_ticks()
            for state, wait_type, wait_event in rows:
                if state != "active":
                    # Idle between statements, or in a transaction: the
                    # session waits for its client.
                    self.waits["client"] += 1
                elif wait_type is None:
                    self.waits["CPU"] += 1
                else:
                    self.waits[f"{wait_type}:{wait_event}"] += 1

    def _read_ticks(self) -> None:
        """The CPU ticks of every server process but the sampler's session
        (all of them: backends, the WAL writer, ...), when the server runs
        on this machine."""
        pids = self.conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
        ).fetchall()
        for (pid,) in pids:
            assert isinstance(pid, int)
            try:
                with open(f"/proc/{pid}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue  # Ended, or not on this machine.
            ticks = int(fields[11]) + int(fields[12])  # utime, stime
            self.ticks.setdefault(pid, [ticks, ticks])[1] = ticks

    def server_cpu_seconds(self) -> float:
        return sum(last - first for first, last in self.ticks.values()) / _TICKS

    def stop(self) -> collections.Counter[str]:
        self.stopping.set()
        self.join()
        self.conn.close()
        return self.waits


def trial(server: PostgresServer, config: str, processes: int, seconds: float) -> Trial:
    server.drop_tables()
    env = _env(server, config)
    _create_tables(env, config)
    library = "eventsourcing" if config == EVENTSOURCING else "asyncsourcing"
    # Made above: eventsourcing's processes would make them all at once.
    payload = json.dumps({"env": {**env, "CREATE_TABLE": "false"}, "seconds": seconds})
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "benchmarks.writers", "--child", library, payload],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    try:
        for process in children:
            assert process.stdout is not None
            if process.stdout.readline().strip() != "ready":
                raise RuntimeError(f"a writer of {config!r} did not start")
        sampler = _Sampler(server)
        sampler.start()
        busy, total = _machine_cpu()
        for process in children:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        results = []
        for process in children:
            out, _ = process.communicate(timeout=seconds + 60)
            if process.returncode != 0:
                raise RuntimeError(f"a writer of {config!r} failed")
            results.append(json.loads(out.strip().splitlines()[-1]))
        busy_after, total_after = _machine_cpu()
        waits = sampler.stop()
    finally:
        for process in children:
            if process.poll() is None:
                process.kill()
                process.wait()
    events = sum(r["events"] for r in results)
    elapsed = max(r["seconds"] for r in results)
    cpu = sum(r["cpu"] for r in results)
    cores = os.cpu_count() or 1
    machine = 100 * cores * (busy_after - busy) / max(total_after - total, 1)
    server_cpu = 100 * sampler.server_cpu_seconds() / elapsed
    return Trial(events / elapsed, 100 * cpu / elapsed, machine, server_cpu, waits)


def _machine_cpu() -> tuple[int, int]:
    """Busy and total jiffies of the machine so far (``/proc/stat``)."""
    with open("/proc/stat") as stat:
        fields = [int(f) for f in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return sum(fields) - idle, sum(fields)


def _median_and_range(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}..{max(values):,.0f})"


def _waits_summary(waits: collections.Counter[str]) -> str:
    total = sum(waits.values()) or 1
    return ", ".join(
        f"{name} {100 * count / total:.0f} %" for name, count in waits.most_common(4)
    )


def table(results: dict[tuple[str, int], list[Trial]]) -> str:
    lines = [
        "| writers | processes | events/s | vs table lock | CPU (% of a core): "
        "writers, server, machine | server sessions (sampled) |",
        "|---|--:|--:|--:|--:|---|",
    ]
    for (config, processes), trials in results.items():
        rates = [t.events_per_second for t in trials]
        median = statistics.median(rates)
        same_p = results.get((TABLE_LOCK, processes))
        ratio = "-"
        if same_p is not None and config != TABLE_LOCK:
            table_lock = statistics.median(t.events_per_second for t in same_p)
            ratio = f"{median / table_lock:.2f}x"
        waits: collections.Counter[str] = collections.Counter()
        for t in trials:
            waits.update(t.waits)
        cpu = statistics.median(t.cpu_percent for t in trials)
        machine = statistics.median(t.machine_cpu_percent for t in trials)
        server = statistics.median(t.server_cpu_percent for t in trials)
        lines.append(
            f"| {config} | {processes} | {_median_and_range(rates)} | {ratio} "
            f"| {cpu:.0f}, {server:.0f}, {machine:.0f} | {_waits_summary(waits)} |"
        )
    return "\n".join(lines)


def section(text: str, command: str, durability: str, cores: int) -> str:
    return "\n".join(
        [
            SECTION_BEGIN,
            "## Writers in many processes (issue 14)",
            "",
            f"`{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
            f"{cores} cores: each process saves one-event aggregates, one "
            f"after the other, for {DEFAULT_SECONDS:g} s; medians over "
            f"{DEFAULT_REPETITIONS} repetitions (min..max). PostgreSQL: "
            f"{durability}.",
            "",
            text,
            "",
            "Server sessions: where the writers' sessions were, sampled every "
            "20 ms in `pg_stat_activity` (`client`: waiting for the writer "
            "process, `CPU`: running, `Lock:*` and `IO:*`/`LWLock:*`: waiting "
            "for a lock, for the WAL).",
            SECTION_END,
            "",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    words = list(argv) if argv is not None else sys.argv[1:]
    if words[:1] == ["--child"]:
        return child(words[1:])
    parser = argparse.ArgumentParser(prog="python -m benchmarks writers")
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS)
    parser.add_argument("--repetitions", type=int, default=DEFAULT_REPETITIONS)
    parser.add_argument(
        "--processes", type=int, nargs="+", default=list(DEFAULT_PROCESSES)
    )
    parser.add_argument("--no-results", action="store_true")
    args = parser.parse_args(words)
    processes = sorted(set(args.processes))
    configs = [(c, p) for p in processes for c in (TABLE_LOCK, CONCURRENT)]
    configs.append((EVENTSOURCING, processes[-1]))
    results: dict[tuple[str, int], list[Trial]] = {c: [] for c in configs}
    with postgres_server(durable=True) as server:
        durability = describe_durability(server.durability)
        for repetition in range(args.repetitions):
            # Interleaved: a drift of the shared machine spreads over all.
            for config, p in configs:
                result = trial(server, config, p, args.seconds)
                results[config, p].append(result)
                log(
                    f"{repetition + 1}/{args.repetitions} {config}, {p} processes: "
                    f"{result.events_per_second:,.0f} events/s, CPU writers "
                    f"{result.cpu_percent:.0f} %, server "
                    f"{result.server_cpu_percent:.0f} %, machine "
                    f"{result.machine_cpu_percent:.0f} %, "
                    f"{_waits_summary(result.waits)}"
                )
    text = table(results)
    print(text)
    defaults = (
        args.seconds == DEFAULT_SECONDS
        and args.repetitions == DEFAULT_REPETITIONS
        and tuple(processes) == DEFAULT_PROCESSES
    )
    if defaults and not args.no_results:
        command = "python -m benchmarks writers"
        cores = os.cpu_count() or 0
        sections.write_section(
            RESULTS,
            section(text, command, durability, cores),
            SECTION_BEGIN,
            SECTION_END,
        )
        log(f"wrote the writers section of {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
