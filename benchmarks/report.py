"""The markdown table, RESULTS.md, and the plots."""

from __future__ import annotations

import os
import platform
import sqlite3
import subprocess
import sys
from collections import defaultdict
from importlib import metadata
from pathlib import Path

from benchmarks.results import Metric, Row, Summary
from benchmarks.runner import Report
from benchmarks.server import describe_durability

__all__ = [
    "describe_postgres",
    "machine_description",
    "machine_lines",
    "markdown_table",
    "plot_latency",
    "plot_memory",
    "postgres_description",
    "results_markdown",
]

BACKEND_NAMES = {"popo": "in-memory", "sqlite": "SQLite", "postgres": "PostgreSQL"}
LIBRARY_COLOURS = {"eventsourcing": "tab:orange", "asyncsourcing": "tab:blue"}


def _number(value: float, decimals: int) -> str:
    if abs(value) >= 100 and decimals:
        decimals = max(0, decimals - 1) if abs(value) < 1000 else 0
    return f"{value:,.{decimals}f}"


def _cell(summary: Summary, metric: Metric, repetitions: int) -> str:
    median = _number(summary.median, metric.decimals)
    if summary.count == 1:
        text = median
    else:
        low = _number(summary.minimum, metric.decimals)
        high = _number(summary.maximum, metric.decimals)
        text = f"{median} ({low}..{high})"
    if summary.count < repetitions:
        text += f" n={summary.count}"
    return text


def _ratio(row: Row) -> str:
    ratio = row.ratio()
    if ratio is None:
        return "-"
    better = ratio > 1 if row.metric.higher_is_better else ratio < 1
    mark = "~same" if abs(ratio - 1) < 0.05 else "better" if better else "worse"
    if ratio >= 100:
        text = f"{ratio:,.0f}x"
    elif ratio >= 10:
        text = f"{ratio:.1f}x"
    else:
        text = f"{ratio:.3g}x"
    if 0 < ratio < 0.5:
        mark += f", 1/{1 / ratio:,.3g}"
    return f"{text} ({mark})"


def markdown_table(report: Report) -> str:
    """scenario | backend | metric | eventsourcing | asyncsourcing | ratio.

    Cells are "median (min..max)" over the repetitions; ratio is
    asyncsourcing's median over eventsourcing's.
    """
    footnotes: dict[str, int] = {}

    def footnote(text: str) -> str:
        number = footnotes.setdefault(text, len(footnotes) + 1)
        return f" [{number}]"

    lines = [
        "| scenario | backend | metric | eventsourcing 9.5 | asyncsourcing | ratio |",
        "|---|---|---|---:|---:|---|",
    ]
    titles = {s.name: s.title for s in report.scenarios}
    repetitions = report.profile.repetitions
    for row in report.rows:
        cells: list[str] = []
        for library in ("eventsourcing", "asyncsourcing"):
            summary = row.summary(library)
            if summary is None:
                cell = f"n/a: {row.missing.get(library, 'not measured')}"
            else:
                cell = _cell(summary, row.metric, repetitions)
            for note in row.notes.get(library, []):
                cell += footnote(note)
            cells.append(cell)
        lines.append(
            f"| {titles.get(row.scenario, row.scenario)} "
            f"| {BACKEND_NAMES.get(row.backend, row.backend)} "
            f"| {row.metric.label} | {cells[0]} | {cells[1]} | {_ratio(row)} |"
        )
    if footnotes:
        lines.append("")
        lines.extend(f"[{n}] {text}" for text, n in footnotes.items())
    return "\n".join(lines)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_total() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_lines() -> list[str]:
    """The machine, Python and the libraries, as RESULTS.md's bullet points."""
    uname = subprocess.run(
        ["uname", "-a"], capture_output=True, text=True, check=False
    ).stdout.strip()
    libraries = ", ".join(
        f"{name} {_version(name)}"
        for name in (
            "asyncsourcing",
            "eventsourcing",
            "asyncpg",
            "psycopg",
            "aiosqlite",
        )
    )
    return [
        f"- `uname -a`: `{uname}`",
        f"- CPU: {_cpu_model()}, {os.cpu_count()} cores (shared machine)",
        f"- memory: {_memory_total()}",
        f"- Python {platform.python_version()} ({sys.executable})",
        f"- libraries: {libraries}; SQLite {sqlite3.sqlite_version}",
    ]


def machine_description(report: Report) -> list[str]:
    lines = machine_lines()
    if report.postgres_version:
        lines.append(f"- {postgres_description(report)}")
    return lines


def postgres_description(report: Report) -> str:
    """Which PostgreSQL server the run used, and how durable it was.

    The durability is what the server said (``SHOW fsync`` and so on), not
    what was asked of it.
    """
    return describe_postgres(
        report.postgres_version,
        report.postgres_started_here,
        report.postgres_durability,
    )


def describe_postgres(
    version: str, started_here: bool, durability: dict[str, str]
) -> str:
    """:func:`postgres_description` from a server's version and durability."""
    where = (
        "a throwaway server started by the harness "
        "(`asyncsourcing.testing.pgserver.TemporaryPostgres`, shared_buffers=128MB, "
        "pg_stat_statements preloaded), on the same machine"
        if started_here
        else "the server named by POSTGRES_HOST"
    )
    return f"PostgreSQL {version}: {where}; {describe_durability(durability)}"


def results_markdown(report: Report, command: str, plots: list[str]) -> str:
    duration = f"{report.elapsed / 60:.1f} min"
    lines = [
        "# Benchmarks: asyncsourcing against eventsourcing 9.5",
        "",
        f"Run on {report.started_at:%Y-%m-%d %H:%M} UTC with `{command}` "
        f"(profile `{report.profile.name}`, {report.profile.repetitions} "
        f"repetitions, {duration}).",
        "",
        "## Machine",
        "",
        *machine_description(report),
        "",
        "## Results",
        "",
        "Each cell is the median over the repetitions, with the minimum and "
        "maximum in brackets. Ratio is asyncsourcing's median divided by "
        'eventsourcing\'s; "better"/"worse" reads the ratio in the metric\'s '
        'direction ("~same" within 5 %). The machine is shared and has 2 cores: '
        "quote medians, and expect a few percent of noise between runs.",
        "",
        markdown_table(report),
        "",
    ]
    if report.errors:
        lines += ["### Failures", "", *[f"- {e}" for e in report.errors], ""]
    if report.skipped:
        lines += ["### Skipped", "", *[f"- {s}" for s in report.skipped], ""]
    if plots:
        lines += ["## Plots", ""]
        lines += [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
        lines.append("")
    lines += [
        "## How it is measured",
        "",
        "- Both libraries run on the same machine, against the same PostgreSQL "
        "server and the same disk, in the same run. eventsourcing's code is "
        "blocking: it is called from the main thread while no event loop exists "
        "(its runners, subscriptions and the benchmark's writer and waiter "
        "threads are its own threads). asyncsourcing's trials each run in a "
        "fresh `asyncio.run()`. The two never run at the same time, and their "
        "order alternates between repetitions.",
        "- Every trial starts on empty storage: the tables of schema `public` "
        "are dropped, and each SQLite trial gets a new database file in a "
        "temporary directory on the machine's disk (both libraries use WAL "
        "journal mode there).",
        "- The event counters view is the projections tutorial's: "
        "`examples/eventcounters` for asyncsourcing, `benchmarks/es_views.py` "
        "for eventsourcing (the tutorial's code; psycopg `SQL`/`Identifier` "
        "on Postgres, and a SQLite version written the same way).",
    ]
    if report.query_counter_method == "pg_stat_statements":
        lines.append(
            "- Database queries (fan-out) are counted with `pg_stat_statements`: "
            "the sum of `calls` over the benchmark database's statements, read "
            "before and after the window, leaving out transaction control "
            "(`BEGIN`/`COMMIT`/`ROLLBACK`) and the harness's own reads. A "
            "`LISTEN` counts as one."
        )
    elif report.query_counter_method:
        lines.append(
            "- Database queries (fan-out) are counted as the delta of "
            "`xact_commit + xact_rollback` in `pg_stat_database` for the "
            "benchmark database (pg_stat_statements is not loaded on this "
            "server): transactions, not statements, and the statistics are "
            "flushed at most once a second, so the harness waits 1.5 s before "
            "each reading."
        )
    lines.append("")
    for scenario in report.scenarios:
        lines += [f"### {scenario.title}", "", scenario.description, ""]
    profile = report.profile
    lines += [
        "### Sizes",
        "",
        f"- write: {profile.write_saves:,} saves by one writer; "
        f"{profile.write_concurrent_saves:,} by {profile.writers} writers",
        f"- catch-up: {profile.catchup_events:,} events",
        f"- live latency: {profile.latency_saves:,} saves per repetition",
        f"- fan-out: {', '.join(f'{n:,}' for n in profile.fanout_waiters)} "
        f"waiters (eventsourcing capped at {profile.fanout_es_cap:,} threads), "
        f"{profile.fanout_window:g} s window",
        f"- memory: {profile.memory_events:,} events",
        "",
    ]
    return "\n".join(lines)


def _missing_reason(report: Report, backend: str, library: str) -> str:
    for row in report.rows:
        if row.scenario == "latency" and row.backend == backend:
            return row.missing.get(library, "not measured")
    return "not measured"


def _ms(value: float, _: object) -> str:
    return f"{value:g}"


def plot_latency(report: Report, path: Path) -> bool:
    """Latency distributions (empirical CDFs), one panel per backend."""
    samples: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for record in report.trials:
        for values in record.trial.distributions.values():
            samples[record.backend][record.library].extend(values)
    if not samples:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    backends = [b for b in ("postgres", "sqlite", "popo") if b in samples]
    fig, axes = plt.subplots(
        1, len(backends), figsize=(5 * len(backends), 4), squeeze=False
    )
    for ax, backend in zip(axes[0], backends, strict=True):
        for library, values in sorted(samples[backend].items()):
            ordered = sorted(values)
            fractions = [(i + 1) / len(ordered) for i in range(len(ordered))]
            ax.step(
                ordered,
                fractions,
                where="post",
                label=f"{library} (n={len(ordered)})",
                color=LIBRARY_COLOURS.get(library),
            )
        missing = [
            library
            for library in LIBRARY_COLOURS
            if library not in samples[backend] and backend in report.backends
        ]
        if missing:
            ax.text(
                0.02,
                0.95,
                "\n".join(
                    f"{library}: {_missing_reason(report, backend, library)}"
                    for library in missing
                ),
                transform=ax.transAxes,
                fontsize=8,
                verticalalignment="top",
            )
        ax.set_ylim(0, 1.02)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(_ms))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel("save() → wait() returns (ms, log scale)")
        ax.set_ylabel("fraction of saves")
        ax.set_title(f"live latency, {BACKEND_NAMES.get(backend, backend)}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_memory(report: Report, path: Path) -> bool:
    """VmRSS over the catch-up, per backend and library (every repetition)."""
    records = [r for r in report.trials if r.trial.rss_samples]
    if not records:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = {r.backend for r in records}
    backends = [b for b in ("postgres", "sqlite") if b in present]
    fig, axes = plt.subplots(
        1, len(backends), figsize=(5 * len(backends), 4), squeeze=False
    )
    for ax, backend in zip(axes[0], backends, strict=True):
        labelled: set[str] = set()
        for record in records:
            if record.backend != backend:
                continue
            times = [t for t, _ in record.trial.rss_samples]
            rss = [m for _, m in record.trial.rss_samples]
            label = record.library if record.library not in labelled else None
            labelled.add(record.library)
            ax.plot(times, rss, label=label, color=LIBRARY_COLOURS.get(record.library))
        ax.set_xlabel("seconds since catch-up started")
        ax.set_ylabel("VmRSS (MiB)")
        ax.set_ylim(bottom=0)
        ax.set_title(
            f"memory, {report.profile.memory_events:,} events, "
            f"{BACKEND_NAMES.get(backend, backend)}"
        )
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
