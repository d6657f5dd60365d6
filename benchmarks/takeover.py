"""Takeover: how long a projection stands still when its leader dies, and
what the leadership's fencing costs while it runs.

    python -m benchmarks takeover [--kills N] [--replicas N] [--expiry-ttl S]
                                  [--events N] [--repetitions N] [--fast]

PostgreSQL only (leases coordinate runners of one database), on the
harness's server (:func:`benchmarks.server.postgres_server`: a throwaway
durable one unless ``POSTGRES_HOST`` is set; every table of schema
``public`` is dropped between measurements).

1. Takeover latency, for two configurations of the lease: the fast path
   (``LEASE_FAST_TAKEOVER=true``, default ``LEASE_TTL`` of 10 s) and lease
   expiry alone (``LEASE_FAST_TAKEOVER=false``, ``LEASE_TTL=--expiry-ttl``).
   ``--replicas`` real processes run ``asyncsourcing run`` with the example
   event counters projection, as ``tests/replicas/test_replicas.py`` does. ``--kills``
   times: once the leader has processed an event and every other replica
   stands by, SIGKILL the leader, save one event from this process at once,
   and time from the SIGKILL until ``view.wait()`` (this process's own view,
   woken by the commit) returns for that event's position; then start a
   replacement, so that there are always standbys.
2. Fencing cost: one in-process ``ProjectionRunner`` catches up ``--events``
   recorded events with ``LEADERSHIP=true`` and with ``LEADERSHIP=false``,
   and eventsourcing 9.5's ``ProjectionRunner`` catches up the same events,
   the three alternating, ``--repetitions`` times; medians, and the cost of
   fencing as the relative loss of throughput.

Prints the tables on stdout (progress on stderr). A run with the default
sizes also writes its section into ``benchmarks/RESULTS.md`` (``--results``:
into any file, whatever the sizes; ``--no-results``: nowhere). The section
sits between :data:`SECTION_BEGIN` and :data:`SECTION_END`: it replaces the
previous one, and the main harness keeps it when it rewrites the file.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import progress, sections
from benchmarks.fencing import (
    EVENTSOURCING,
    WITH_LEADERSHIP,
    WITHOUT_LEADERSHIP,
    measure_fencing,
)
from benchmarks.progress import log
from benchmarks.projecting import CatchUp
from benchmarks.replicas import Configuration, Takeovers, measure_takeovers
from benchmarks.report import describe_postgres, machine_lines
from benchmarks.results import percentile, summarise
from benchmarks.server import postgres_server

__all__ = ["SECTION_BEGIN", "SECTION_END", "kept_section", "main", "write_section"]

RESULTS = Path(__file__).with_name("RESULTS.md")

#: The markers around this scenario's section of RESULTS.md.
SECTION_BEGIN = "<!-- takeover: written by `python -m benchmarks takeover` -->"
SECTION_END = "<!-- /takeover -->"

#: Defaults: a run with these sizes records its results.
DEFAULT_KILLS = 20
DEFAULT_REPLICAS = 2
DEFAULT_EXPIRY_TTL = 2.0
DEFAULT_EVENTS = 20_000
#: Even, so that each variant of a pair runs first as often as second.
DEFAULT_REPETITIONS = 6


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f}"


def takeover_table(results: Sequence[Takeovers]) -> str:
    lines = [
        "| configuration | LEASE_FAST_TAKEOVER | LEASE_TTL | kills "
        "| p50 (ms) | p99 (ms) | max (ms) | goal | met? | lease taken, p50 (ms) |",
        "|---|---|---:|---:|---:|---:|---:|---|---|---:|",
    ]
    for result in results:
        c, values = result.configuration, result.latencies
        p99 = percentile(values, 99)
        met = "yes" if p99 <= c.goal else "no"
        lines.append(
            f"| {c.label} | {str(c.fast_takeover).lower()} | {c.ttl:g} s "
            f"| {len(values)} | {_ms(percentile(values, 50))} | {_ms(p99)} "
            f"| {_ms(max(values))} | {c.goal_text} | {met} "
            f"| {_ms(percentile(result.until_lease, 50))} |"
        )
    return "\n".join(lines)


def _rate_cell(rates: Sequence[float]) -> str:
    summary = summarise(rates)
    if summary is None:
        return "-"
    if summary.count == 1:
        return f"{summary.median:,.0f}"
    return f"{summary.median:,.0f} ({summary.minimum:,.0f}..{summary.maximum:,.0f})"


def _cost(with_: float, without: float) -> float:
    """The loss of throughput with leadership, in percent."""
    return (1 - with_ / without) * 100


def fencing_table(results: dict[str, list[CatchUp]], events: int) -> str:
    """Rates per variant, median (min..max), and the cost of fencing: of the
    medians, and the median (min..max) of each repetition's pair."""
    has_es = bool(results.get(EVENTSOURCING))
    lines = [
        f"| catch-up of {events:,} events (events/s) | LEADERSHIP=false "
        "| LEADERSHIP=true | fencing cost, of the medians "
        "| fencing cost, paired: median (min..max) |"
        + (" eventsourcing 9.5 runner |" if has_es else ""),
        "|---|---:|---:|---:|---:|" + ("---:|" if has_es else ""),
    ]
    measures: list[tuple[str, Callable[[CatchUp], float]]] = [
        ("until wait() returns", lambda c: c.until_wait),
        ("until last event processed", lambda c: c.until_processed),
    ]
    for label, seconds in measures:
        rates = {
            name: [events / seconds(c) for c in catch_ups]
            for name, catch_ups in results.items()
        }
        with_, without = rates[WITH_LEADERSHIP], rates[WITHOUT_LEADERSHIP]
        of_medians = _cost(statistics.median(with_), statistics.median(without))
        paired = summarise([_cost(w, wo) for w, wo in zip(with_, without, strict=True)])
        assert paired is not None
        line = (
            f"| {label} | {_rate_cell(without)} | {_rate_cell(with_)} "
            f"| {of_medians:+.1f} % | {paired.median:+.1f} % "
            f"({paired.minimum:+.1f}..{paired.maximum:+.1f}) |"
        )
        if has_es:
            line += f" {_rate_cell(rates[EVENTSOURCING])} |"
        lines.append(line)
    # Time, not rate: a fixed cost at the start (the lease table, the lock's
    # session, taking the lease) stays the same whatever the number of
    # events; a cost per batch grows with it.
    added = summarise(
        [
            (w.until_wait - wo.until_wait) * 1000
            for w, wo in zip(
                results[WITH_LEADERSHIP], results[WITHOUT_LEADERSHIP], strict=True
            )
        ]
    )
    assert added is not None
    lines += [
        "",
        f"Time added by leadership until wait() returns, per pair: median "
        f"{added.median:,.0f} ms ({added.minimum:,.0f}..{added.maximum:,.0f}).",
    ]
    return "\n".join(lines)


def _source() -> str:
    """The commit measured, and whether the library's working tree differs."""

    def git(*words: str) -> str:
        done = subprocess.run(
            ["git", *words],
            cwd=RESULTS.parent,
            capture_output=True,
            text=True,
            check=False,
        )
        return done.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    changed = git("status", "--porcelain", "--", "../asyncsourcing")
    if changed:
        # Shared checkouts: others' edits in progress are what was measured.
        count = len(changed.splitlines())
        return f"{commit}, with {count} uncommitted files changed under asyncsourcing/"
    return commit


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f} (1 min), {five:.1f} (5 min)"


@dataclass
class Run:
    """What a run measured, and the circumstances, for its section."""

    args: argparse.Namespace
    command: str
    postgres: str
    started_at: datetime
    load_before: str
    source: str
    takeovers: list[Takeovers] = field(default_factory=list)
    fencing: dict[str, list[CatchUp]] = field(default_factory=dict)
    elapsed: float = 0.0
    load_after: str = ""


def section(run: Run) -> str:
    """This scenario's section of RESULTS.md, between its markers."""
    args = run.args
    fast_ttl = configurations(args)[0].ttl
    lines = [
        SECTION_BEGIN,
        "## Takeover and fencing (PostgreSQL)",
        "",
        f"Run on {run.started_at:%Y-%m-%d %H:%M} UTC with `{run.command}` "
        f"({args.kills} kills per configuration, {args.replicas} replicas; "
        f"{args.events:,} events, {args.repetitions} repetitions; "
        f"{run.elapsed / 60:.1f} min). asyncsourcing only: eventsourcing 9.5 "
        "has no leases, standbys or fencing, so there is no takeover to "
        "compare; its runner's catch-up of the same events is shown beside "
        "the fencing cost.",
        "",
        "### Machine",
        "",
        *machine_lines(),
        f"- {run.postgres}",
        f"- asyncsourcing source: commit {run.source}",
        f"- load average at the start {run.load_before}, at the end "
        f"{run.load_after}: the machine's 2 cores are shared, and other "
        "engineers' test runs may run at the same time (noisy; quote medians)",
        "",
    ]
    if run.takeovers:
        notes = [
            f"- {r.configuration.label}: {note}"
            for r in run.takeovers
            for note in r.log_notes
        ]
        lines += [
            "### Takeover latency",
            "",
            takeover_table(run.takeovers),
            "",
            "Replicas' logs, WARNING and above (numbers replaced by N): "
            + ("none." if not notes else ""),
            *notes,
            "",
        ]
    if run.fencing:
        lines += ["### Fencing cost", "", fencing_table(run.fencing, args.events), ""]
    lines += [
        "### How it is measured",
        "",
        f"- Takeover: {args.replicas} processes run `python -m asyncsourcing "
        "run` with the example event counters projection "
        "(`examples.eventcounters`, `PostgresEventCounters`), as "
        "`tests/replicas/test_replicas.py` does; one leads, the others stand by. Each "
        "kill: once the leader has processed an event saved by the harness and "
        "every other replica stands by (seen in `pg_stat_activity`: on the "
        "fast path its lock session waits for the advisory lock, otherwise "
        "its pool has connected), and after a random pause of up to "
        "min(TTL/3, 1 s) (a third of the TTL is the renewal interval, so the "
        "lease's remaining time at the kill is spread as it would be), the "
        "harness sends SIGKILL to the leader, saves one `Aggregate()` at once "
        "with its own `Application`, and times from just before the SIGKILL "
        "until its own view's `wait(app, position)` returns (woken by the "
        "commit through LISTEN/NOTIFY, about 1 ms on this machine per the "
        "live latency scenario). The lease is then read to check that "
        "another replica took it at a higher epoch, and a replacement process "
        "is started, so that there are always standbys; its start-up is "
        "outside the timing. At the end the view's count is checked against "
        "the events saved (each counted once).",
        f"- Configurations: fast path `LEASE_FAST_TAKEOVER=true` with the "
        f"default `LEASE_TTL` ({fast_ttl:g} s): a standby takes over when it "
        "gets the dead leader's session advisory lock. Expiry "
        f"`LEASE_FAST_TAKEOVER=false`, `LEASE_TTL={args.expiry_ttl:g}` (short, "
        "so that the kills take minutes): a standby takes the lease once it "
        "has expired, trying every min(TTL/3, 0.5 s). p99 of "
        f"{args.kills} samples is interpolated between the two highest.",
        "- Fencing: one in-process `ProjectionRunner` (as in the catch-up "
        f"scenario: batches of up to 500) catches up {args.events:,} events "
        "recorded beforehand (aggregates of one `Created` and four "
        "`Aggregate.Event`, `insert_events()` in batches of 5,000) into the "
        "tutorial's counters view; with `LEADERSHIP=true` (the default: it "
        "takes the lease and its advisory lock, renews it, and every view "
        "transaction locks the lease row and checks its epoch) and with "
        "`LEADERSHIP=false` (none of that). eventsourcing 9.5's "
        "`ProjectionRunner` catches up the same events into its version of "
        "the view (one transaction per event), for scale. The variants never "
        "run at the same time and each starts on empty tables; in each "
        "repetition the two asyncsourcing variants run back to back "
        "(whichever first in turn) and eventsourcing after or before them; "
        "the server writes its dirty pages (`CHECKPOINT`) after the events "
        "are recorded and before each catch-up is timed, which the second "
        "of a pair otherwise pays for. "
        "Fencing cost is 1 - (rate with leadership) / (rate without): of the "
        "medians, and the median of each repetition's pair (which saw the "
        "same machine). The issue's goal is at most 5 %. The time added per "
        "pair tells a fixed cost at the start (the lease table, the lock's "
        "session, taking the lease) from a cost per batch.",
        SECTION_END,
        "",
    ]
    return "\n".join(lines)


def kept_section(text: str) -> str:
    """The takeover section of a RESULTS.md's ``text`` (markers included), or ""."""
    return sections.kept_section(text, SECTION_BEGIN, SECTION_END)


def write_section(path: Path, text: str) -> None:
    """Put ``text`` in place of the takeover section of ``path``, or at its end."""
    sections.write_section(path, text, SECTION_BEGIN, SECTION_END)
    log(f"wrote the takeover section of {path}")


# The command line.


def configurations(args: argparse.Namespace) -> list[Configuration]:
    """The fast path with the default TTL, then lease expiry with ``--expiry-ttl``."""
    return [
        Configuration("fast path", fast_takeover=True, ttl=10.0),
        Configuration("lease expiry", fast_takeover=False, ttl=args.expiry_ttl),
    ]


def _positive(kind: type[int] | type[float]) -> Callable[[str], Any]:
    def parse(text: str) -> int | float:
        value = kind(text)
        if not value > 0:
            msg = f"expected a number > 0, not {text!r}"
            raise argparse.ArgumentTypeError(msg)
        return value

    return parse


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks takeover",
        description=(
            "Takeover latency of a projection's replicas after SIGKILL of the "
            "leader (fast path and lease expiry), and the cost of fencing "
            "(catch-up with LEADERSHIP=true against false), on PostgreSQL. "
            "With the default sizes it also writes its section of "
            "benchmarks/RESULTS.md."
        ),
    )
    parser.add_argument(
        "--kills",
        type=_positive(int),
        default=DEFAULT_KILLS,
        help=f"leaders killed per configuration (default {DEFAULT_KILLS})",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        choices=(2, 3),
        default=DEFAULT_REPLICAS,
        help=f"replica processes (default {DEFAULT_REPLICAS})",
    )
    parser.add_argument(
        "--expiry-ttl",
        type=_positive(float),
        default=DEFAULT_EXPIRY_TTL,
        metavar="SECONDS",
        help=(
            "LEASE_TTL without the fast path (default "
            f"{DEFAULT_EXPIRY_TTL:g}; the fast path keeps the default TTL, 10)"
        ),
    )
    parser.add_argument(
        "--events",
        type=_positive(int),
        default=DEFAULT_EVENTS,
        help=f"events caught up to measure fencing (default {DEFAULT_EVENTS:,})",
    )
    parser.add_argument(
        "--repetitions",
        type=_positive(int),
        default=DEFAULT_REPETITIONS,
        help=f"catch-ups per variant (default {DEFAULT_REPETITIONS})",
    )
    parser.add_argument(
        "--no-eventsourcing",
        dest="eventsourcing",
        action="store_false",
        help="leave out eventsourcing's runner from the fencing comparison",
    )
    parser.add_argument(
        "--skip",
        choices=("takeover", "fencing"),
        action="append",
        default=[],
        help="leave out one part (repeatable)",
    )
    parser.add_argument(
        "--results",
        type=Path,
        help="write the section into this file, whatever the sizes",
    )
    parser.add_argument(
        "--no-results", action="store_true", help="write no results, whatever the sizes"
    )
    parser.add_argument(
        "--fast",
        action="store_true",
        help=(
            "start the throwaway server with fsync, synchronous_commit and "
            "full_page_writes off (default: durable, as in production)"
        ),
    )
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return parser.parse_args(argv)


def _is_default_run(args: argparse.Namespace) -> bool:
    return (
        args.kills == DEFAULT_KILLS
        and args.replicas == DEFAULT_REPLICAS
        and args.expiry_ttl == DEFAULT_EXPIRY_TTL
        and args.events == DEFAULT_EVENTS
        and args.repetitions == DEFAULT_REPETITIONS
        and args.eventsourcing
        and not args.skip
    )


@contextlib.contextmanager
def _terminated_by_sigterm() -> Iterator[None]:
    # SIGTERM (e.g. from "timeout") stops the replicas and the server too,
    # through the finally clauses.
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    progress.quiet = args.quiet
    progress.reset_clock()
    given = list(argv) if argv is not None else sys.argv[1:]
    started = time.perf_counter()
    with _terminated_by_sigterm(), postgres_server(durable=not args.fast) as server:
        run = Run(
            args=args,
            command=shlex.join(["python", "-m", "benchmarks", "takeover", *given]),
            postgres=describe_postgres(
                server.version, server.started_here, server.durability
            ),
            started_at=datetime.now(UTC),
            load_before=_load(),
            source=_source(),
        )
        if "takeover" not in args.skip:
            run.takeovers = measure_takeovers(
                server, configurations(args), args.kills, args.replicas
            )
        if "fencing" not in args.skip:
            run.fencing = measure_fencing(
                server, args.events, args.repetitions, eventsourcing=args.eventsourcing
            )
        server.drop_tables()
    run.elapsed = time.perf_counter() - started
    run.load_after = _load()
    print(run.postgres, end="\n\n")
    if run.takeovers:
        print(takeover_table(run.takeovers), end="\n\n")
        for result in run.takeovers:
            for note in result.log_notes:
                print(f"replica log, {result.configuration.label}: {note}")
    if run.fencing:
        print(fencing_table(run.fencing, args.events))
    if args.results is not None or (_is_default_run(args) and not args.no_results):
        write_section(args.results or RESULTS, section(run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
