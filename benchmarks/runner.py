"""Runs the scenarios for both libraries, one trial at a time, and collects the rows.

eventsourcing's trials are plain blocking calls made from this thread while
no event loop exists (its runners and writers start threads of their own);
asyncsourcing's trials each run in a fresh ``asyncio.run()``. A trial of one
library never overlaps a trial of the other, and the order of the two
alternates from one repetition to the next so that drift of a shared machine
does not favour either.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.util
import tempfile
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.config import BACKENDS, LIBRARIES, PROFILES, Profile
from benchmarks.progress import log
from benchmarks.results import Row, Trial
from benchmarks.scenarios import SCENARIOS, Context, Scenario
from benchmarks.server import PostgresServer, postgres_server

__all__ = ["BenchmarkError", "Report", "TrialRecord", "run"]


class BenchmarkError(RuntimeError):
    """A trial failed and the run was strict."""


@dataclass
class TrialRecord:
    scenario: str
    backend: str
    library: str
    repetition: int
    trial: Trial


@dataclass
class Report:
    profile: Profile
    scenarios: list[Scenario]
    backends: list[str]
    rows: list[Row] = field(default_factory=list)
    trials: list[TrialRecord] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    elapsed: float = 0.0
    postgres_version: str = ""
    postgres_started_here: bool = False
    #: The server's values of fsync, synchronous_commit and full_page_writes.
    postgres_durability: dict[str, str] = field(default_factory=dict)
    query_counter_method: str = ""

    @property
    def ok(self) -> bool:
        return not self.errors


def _available(backend: str) -> str | None:
    """Why asyncsourcing cannot run on ``backend`` yet, if it can't."""
    modules = {
        "popo": ("asyncsourcing.popo", "examples.eventcounters.views"),
        "sqlite": ("asyncsourcing.sqlite", "examples.eventcounters.sqlite"),
        "postgres": ("asyncsourcing.postgres", "examples.eventcounters.postgres"),
    }[backend]
    for module in modules:
        try:
            if importlib.util.find_spec(module) is None:
                return f"{module} does not exist yet"
        except ImportError as error:
            return f"{module}: {error}"
    return None


@contextlib.contextmanager
def _maybe_server(needed: bool, *, durable: bool) -> Iterator[PostgresServer | None]:
    if not needed:
        yield None
        return
    with postgres_server(durable=durable) as server:
        yield server


def _format_values(trial: Trial) -> str:
    return ", ".join(f"{name}={value:,.4g}" for name, value in trial.values.items())


def _run_trial(scenario: Scenario, ctx: Context, library: str) -> Trial:
    ctx.reset()
    gc.collect()
    if library == "eventsourcing":
        return scenario.run_eventsourcing(ctx)
    return asyncio.run(scenario.run_asyncsourcing(ctx))


def run(
    profile: str | Profile = "full",
    *,
    scenarios: Sequence[str] | None = None,
    backends: Sequence[str] | None = None,
    repetitions: int | None = None,
    strict: bool = False,
    durable: bool = True,
) -> Report:
    """Run the benchmarks and return what they measured.

    ``profile`` is "full", "quick", "smoke" or a :class:`Profile`;
    ``scenarios`` and ``backends`` select (default: all scenarios, the
    profile's backends). With ``strict``, the first failing trial raises
    :class:`BenchmarkError`; otherwise failures are logged, recorded in
    ``Report.errors`` and shown in the table. ``durable=False`` starts the
    throwaway PostgreSQL server with fsync, synchronous_commit and
    full_page_writes off (``TemporaryPostgres(durable=False)``); the
    server's values are recorded in ``Report.postgres_durability``.
    """
    started = time.perf_counter()
    chosen = PROFILES[profile] if isinstance(profile, str) else profile
    if repetitions is not None:
        chosen = Profile(**{**chosen.__dict__, "repetitions": repetitions})
    names = list(scenarios) if scenarios else list(SCENARIOS)
    for name in names:
        if name not in SCENARIOS:
            msg = f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}"
            raise ValueError(msg)
    selected_backends = list(backends) if backends else list(chosen.default_backends)
    for backend in selected_backends:
        if backend not in BACKENDS:
            msg = f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}"
            raise ValueError(msg)
    report = Report(
        profile=chosen,
        scenarios=[SCENARIOS[name] for name in names],
        backends=selected_backends,
    )
    runnable: list[str] = []
    for backend in selected_backends:
        reason = _available(backend)
        if reason is None:
            runnable.append(backend)
        else:
            report.skipped.append(f"{backend}: {reason}")
            log(f"skipping backend {backend}: {reason}")
    needs_server = "postgres" in runnable and any(
        "postgres" in s.backends for s in report.scenarios
    )
    log(
        f"profile {chosen.name}: scenarios {', '.join(names)}; backends "
        f"{', '.join(runnable) or 'none'}; {chosen.repetitions} repetitions"
    )
    with (
        tempfile.TemporaryDirectory(prefix="asyncsourcing-bench-") as workdir,
        _maybe_server(needs_server, durable=durable) as server,
    ):
        if server is not None:
            report.postgres_version = server.version
            report.postgres_started_here = server.started_here
            report.postgres_durability = dict(server.durability)
            report.query_counter_method = server.counter_method
        for scenario in report.scenarios:
            for backend in runnable:
                if backend not in scenario.backends:
                    continue
                ctx = Context(
                    profile=chosen,
                    backend=backend,
                    workdir=Path(workdir),
                    server=server,
                )
                _run_scenario(report, scenario, ctx, strict=strict)
    report.elapsed = time.perf_counter() - started
    log(f"done in {report.elapsed:.0f}s")
    return report


def _run_scenario(
    report: Report, scenario: Scenario, ctx: Context, *, strict: bool
) -> None:
    backend = ctx.backend
    rows = [Row(scenario.name, backend, metric) for metric in scenario.metrics(ctx)]
    report.rows.extend(rows)
    failed: dict[str, str] = {}
    for library in LIBRARIES:
        reason = scenario.unsupported(library, backend)
        if reason is not None:
            failed[library] = reason
        note = scenario.note(library, backend)
        if note:
            for row in rows:
                row.notes.setdefault(library, []).append(note)
    repetitions = ctx.profile.repetitions
    for repetition in range(repetitions):
        order = LIBRARIES if repetition % 2 == 0 else tuple(reversed(LIBRARIES))
        for library in order:
            if library in failed:
                continue
            label = (
                f"{scenario.name} / {backend} / {library} "
                f"[{repetition + 1}/{repetitions}]"
            )
            log(f"{label} ...")
            trial_started = time.perf_counter()
            try:
                trial = _run_trial(scenario, ctx, library)
            except Exception as error:
                message = f"{label}: {type(error).__name__}: {error}"
                report.errors.append(message)
                log(f"FAILED {message}\n{traceback.format_exc()}")
                failed[library] = f"error: {type(error).__name__}"
                if strict:
                    raise BenchmarkError(message) from error
                continue
            report.trials.append(
                TrialRecord(scenario.name, backend, library, repetition, trial)
            )
            log(
                f"{label} {time.perf_counter() - trial_started:.1f}s: "
                f"{_format_values(trial)}"
            )
            for row in rows:
                value = trial.values.get(row.metric.name)
                if value is not None:
                    row.values.setdefault(library, []).append(value)
    for row in rows:
        for library in LIBRARIES:
            if row.values.get(library):
                continue
            if library in failed:
                row.missing[library] = failed[library]
            else:
                row.missing[library] = scenario.missing(library, ctx, row.metric)
