"""Command line: ``python -m benchmarks [--quick | --smoke] [--scenario NAME] ...``.

``python -m benchmarks takeover ...`` runs :mod:`benchmarks.takeover` instead:
replicas in processes of their own, killed one after the other, which the
scenarios' two-library trials don't fit.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks import (
    partitions,
    progress,
    rebuild,
    sections,
    soak,
    sqlite_writer,
    takeover,
    writers,
)
from benchmarks.config import BACKENDS
from benchmarks.report import (
    markdown_table,
    plot_latency,
    plot_memory,
    postgres_description,
    results_markdown,
)
from benchmarks.runner import BenchmarkError, Report, run
from benchmarks.scenarios import SCENARIOS

__all__ = ["main", "parse_args"]

HERE = Path(__file__).resolve().parent


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=(
            "Benchmark asyncsourcing against eventsourcing 9.5 and print a "
            "markdown table. A full run (no --quick/--smoke/--scenario/--backend) "
            "also writes benchmarks/RESULTS.md and the plots."
        ),
        epilog=(
            "python -m benchmarks takeover [--kills N] ...: takeover latency of "
            "a projection's replicas and the cost of fencing, on PostgreSQL "
            "(see python -m benchmarks takeover --help). "
            "python -m benchmarks rebuild [--events N]: a projection's "
            "rebuild over a million events, its rate and its memory. "
            "python -m benchmarks writers [--seconds S]: writer processes on "
            "one PostgreSQL table, with and without the table lock. "
            "python -m benchmarks partitions: a partitioned projection whose "
            "handler waits 1 ms, in 1, 2, 4 and 8 partitions. "
            "python -m benchmarks sqlite-writer: one SQLite writer's save, "
            "part by part, beside eventsourcing's."
        ),
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--quick", action="store_true", help="reduced sizes, under 3 minutes"
    )
    size.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes, in-memory and SQLite only (no server), under 20 s",
    )
    parser.add_argument(
        "--scenario",
        action="append",
        choices=list(SCENARIOS),
        metavar="NAME",
        help=f"run only this scenario (repeatable): {', '.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--backend",
        action="append",
        choices=list(BACKENDS),
        help="run only on this backend (repeatable)",
    )
    parser.add_argument(
        "--repetitions", type=int, help="override the profile's repetitions"
    )
    parser.add_argument(
        "--results",
        type=Path,
        help="write RESULTS.md and the plots to this file's folder, whatever the run",
    )
    parser.add_argument(
        "--no-results",
        action="store_true",
        help="do not write RESULTS.md and the plots, even for a full run",
    )
    parser.add_argument(
        "--strict", action="store_true", help="stop at the first failing trial"
    )
    parser.add_argument(
        "--fast",
        action="store_true",
        help=(
            "start the throwaway PostgreSQL server with fsync, synchronous_commit "
            "and full_page_writes off (faster commits; a crash loses acknowledged "
            "ones). Default: durable, as in production. The server's settings "
            "are printed above the table and written to RESULTS.md"
        ),
    )
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return parser.parse_args(argv)


def _write_results(report: Report, path: Path, command: str) -> None:
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    plots: list[str] = []
    latency = folder / "latency.png"
    if plot_latency(report, latency):
        plots.append(str(latency))
    memory = folder / "memory.png"
    if plot_memory(report, memory):
        plots.append(str(memory))
    text = results_markdown(report, command, plots)
    # Hand-written history (profiles, before/after figures) stays with the table.
    notes = Path(__file__).with_name("NOTES.md")
    if notes.exists():
        text += "\n" + notes.read_text()
    # So do the takeover and soak sections, which only their own runs write.
    if path.exists():
        old = path.read_text()
        for kept in (
            takeover.kept_section(old),
            soak.kept_section(old),
            sections.kept_section(old, rebuild.SECTION_BEGIN, rebuild.SECTION_END),
            sections.kept_section(old, writers.SECTION_BEGIN, writers.SECTION_END),
            sections.kept_section(
                old, partitions.SECTION_BEGIN, partitions.SECTION_END
            ),
            sections.kept_section(
                old, sqlite_writer.SECTION_BEGIN, sqlite_writer.SECTION_END
            ),
        ):
            if kept:
                text += "\n" + kept
    path.write_text(text)
    progress.log(f"wrote {path}" + "".join(f", {p}" for p in plots))


def main(argv: Sequence[str] | None = None) -> int:
    words = list(argv) if argv is not None else sys.argv[1:]
    if words[:1] == ["takeover"]:
        return takeover.main(words[1:])
    if words[:1] == ["soak"]:
        return soak.main(words[1:])
    if words[:1] == ["rebuild"]:
        return rebuild.main(words[1:])
    if words[:1] == ["writers"]:
        return writers.main(words[1:])
    if words[:1] == ["partitions"]:
        return partitions.main(words[1:])
    if words[:1] == ["sqlite-writer"]:
        return sqlite_writer.main(words[1:])
    args = parse_args(argv)
    progress.quiet = args.quiet
    progress.reset_clock()
    profile = "quick" if args.quick else "smoke" if args.smoke else "full"
    try:
        report = run(
            profile,
            scenarios=args.scenario,
            backends=args.backend,
            repetitions=args.repetitions,
            strict=args.strict,
            durable=not args.fast,
        )
    except BenchmarkError as error:
        print(f"benchmark failed: {error}", file=sys.stderr)
        return 1
    if report.postgres_version:
        print(postgres_description(report), end="\n\n")
    print(markdown_table(report))
    if report.errors:
        print("\nFailures:", *report.errors, sep="\n- ")
    if report.skipped:
        print("\nSkipped:", *report.skipped, sep="\n- ")
    full_run = (
        profile == "full"
        and not args.scenario
        and not args.backend
        and args.repetitions is None
    )
    if args.results is not None or (full_run and not args.no_results):
        given = list(argv) if argv is not None else sys.argv[1:]
        words = ["python", "-m", "benchmarks", *given]
        command = shlex.join(words)
        _write_results(report, args.results or HERE / "RESULTS.md", command)
    return 0 if report.ok else 1
