"""Scenario 5: peak memory of a process catching up many events."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar
from uuid import UUID

from eventsourcing.application import Application as ESApplication

from asyncsourcing.application import Application
from benchmarks.libs import insert_as, insert_es, stored_events
from benchmarks.results import Metric, Trial
from benchmarks.scenarios.base import Context, Scenario

__all__ = ["MemoryScenario"]

PEAK = Metric("peak RSS", "MiB", higher_is_better=False, decimals=1)
GROWTH = Metric("RSS growth during catch-up", "MiB", higher_is_better=False, decimals=1)
DRIFT = Metric(
    "RSS growth over 2nd half",
    "MiB",
    higher_is_better=False,
    decimals=1,
    has_ratio=False,
)
RATE = Metric("catch-up into memory view", "events/s", higher_is_better=True)
ROOT = Path(__file__).resolve().parents[2]
CHILD_TIMEOUT = 1800.0


class MemoryScenario(Scenario):
    name: ClassVar[str] = "memory"
    title: ClassVar[str] = "5. memory"
    description: ClassVar[str] = (
        "N events are recorded (as for catch-up) by the parent; then a fresh "
        "subprocess per library and repetition (`python -m "
        "benchmarks.memory_child`, forked by a small shell: Linux carries "
        "`ru_maxrss` over fork and exec, so a child of the harness would "
        "report the harness's RSS) catches up all of them and reports "
        '`getrusage(RUSAGE_SELF).ru_maxrss` at the end ("peak RSS", '
        "including both libraries' imports, which every child has), its "
        'VmRSS before the catch-up ("growth" is the difference), and VmRSS '
        'sampled every 20 ms ("growth over 2nd half": the highest sample of '
        "the second half of the catch-up minus the highest of the first "
        "half; zero or below when memory stays flat). "
        "The application reads from the backend; the view is the in-memory "
        "counters view, so that 200,000 events take seconds instead of one "
        "database transaction each (minutes): what is measured is what the "
        "subscription, decoding and runner hold. On SQLite eventsourcing "
        "pages through `select_notifications()` (no subscription)."
    )
    backends: ClassVar[tuple[str, ...]] = ("sqlite", "postgres")

    def metrics(self, ctx: Context) -> list[Metric]:
        return [PEAK, GROWTH, DRIFT, RATE]

    def note(self, library: str, backend: str) -> str | None:
        if library == "eventsourcing" and backend == "sqlite":
            return "select_notifications loop, no subscription"
        return None

    def _request(self, ctx: Context, library: str, last: int) -> str:
        env = {
            **ctx.env(library),
            # The projection's view in memory; the application on the backend.
            "EVENTCOUNTERS_PERSISTENCE_MODULE": f"{library}.popo",
        }
        request = {"library": library, "backend": ctx.backend, "env": env, "last": last}
        return json.dumps(request)

    def _command(self, request: str) -> list[str]:
        # Through a shell that forks the child (it is not the shell's last
        # command, so the shell does not exec it): Linux carries ru_maxrss
        # over fork and exec, and a child forked from this process would
        # report this process's RSS (which holds the data set) as its peak.
        script = '"$0" -m benchmarks.memory_child "$1"; exit $?'
        return ["/bin/sh", "-c", script, sys.executable, request]

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        path = env.get("PYTHONPATH")
        env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{path}" if path else str(ROOT)
        return env

    def _trial(self, output: str, last: int, library: str, ctx: Context) -> Trial:
        report: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
        if report["counted"] != last:
            msg = f"the view counted {report['counted']} events, expected {last}"
            raise AssertionError(msg)
        samples: list[tuple[float, float]] = [(t, m) for t, m in report["samples"]]
        # The last sample is taken after the runner closed: leave it out.
        during = samples[:-1] if len(samples) > 2 else samples
        half = during[-1][0] / 2
        first = max(m for t, m in during if t < half)
        second = max((m for t, m in during if t >= half), default=first)
        return Trial(
            values={
                PEAK.name: report["peak_mib"],
                GROWTH.name: report["peak_mib"] - report["baseline_mib"],
                DRIFT.name: second - first,
                RATE.name: last / report["until_wait"],
            },
            rss_samples=samples,
        )

    def run_eventsourcing(self, ctx: Context) -> Trial:
        app = ESApplication[UUID](ctx.env("eventsourcing"))
        try:
            last = insert_es(app.recorder, stored_events(ctx.profile.memory_events))
        finally:
            app.close()
        completed = subprocess.run(
            self._command(self._request(ctx, "eventsourcing", last)),
            cwd=ROOT,
            env=self._child_env(),
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT,
            check=False,
        )
        if completed.returncode:
            msg = f"memory child failed:\n{completed.stderr[-3000:]}"
            raise RuntimeError(msg)
        return self._trial(completed.stdout, last, "eventsourcing", ctx)

    async def run_asyncsourcing(self, ctx: Context) -> Trial:
        async with Application[UUID](ctx.env("asyncsourcing")) as app:
            last = await insert_as(
                app.recorder, stored_events(ctx.profile.memory_events)
            )
        process = await asyncio.create_subprocess_exec(
            *self._command(self._request(ctx, "asyncsourcing", last)),
            cwd=ROOT,
            env=self._child_env(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), CHILD_TIMEOUT)
        if process.returncode:
            msg = f"memory child failed:\n{stderr.decode(errors='replace')[-3000:]}"
            raise RuntimeError(msg)
        return self._trial(stdout.decode(), last, "asyncsourcing", ctx)
