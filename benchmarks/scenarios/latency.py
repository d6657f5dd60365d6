"""Scenario 3: from ``save()`` until a separate view's ``wait()`` returns."""

from __future__ import annotations

import time
from typing import Any, ClassVar
from uuid import UUID

from eventsourcing.application import Application as ESApplication
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import InfrastructureFactory as ESInfrastructureFactory
from eventsourcing.projection import ProjectionRunner as ESProjectionRunner
from eventsourcing.utils import Environment

from asyncsourcing.application import Application
from asyncsourcing.persistence import InfrastructureFactory
from asyncsourcing.projection import ProjectionRunner
from benchmarks.config import PROJECTION_NAME
from benchmarks.es_views import ESEventCountersProjection
from benchmarks.libs import as_view_class, es_view_class
from benchmarks.results import Metric, Trial, percentile
from benchmarks.scenarios.base import Context, Scenario
from examples.eventcounters.projection import EventCountersProjection

__all__ = ["LatencyScenario"]

P50 = Metric("p50", "ms", higher_is_better=False, decimals=2)
P99 = Metric("p99", "ms", higher_is_better=False, decimals=2)
WARM_UP_SAVES = 5
WAIT_TIMEOUT = 30.0


class LatencyScenario(Scenario):
    name: ClassVar[str] = "latency"
    title: ClassVar[str] = "3. live latency"
    description: ClassVar[str] = (
        "A `ProjectionRunner` runs the counters projection; a separately "
        "constructed application saves one fresh `Aggregate()` at a time and "
        "a separately constructed view (another infrastructure factory on the "
        'same database, as in the acceptance test\'s "Resume" part) awaits '
        "`wait(position)`; the time from before `save()` until `wait()` "
        "returns is one sample. Sequential, after 5 warm-up saves. In memory "
        "there is no separate database to share: the runner's own "
        "application and view are used. eventsourcing's `wait()` polls "
        "`max_tracking_id()` with sleeps of 0.1, 0.2, 0.4, 0.8, 0.8... s, so "
        "its latency cannot go below 0.1 s unless the event is processed "
        "before the first check."
    )
    backends: ClassVar[tuple[str, ...]] = ("popo", "sqlite", "postgres")

    def metrics(self, ctx: Context) -> list[Metric]:
        return [P50, P99]

    def unsupported(self, library: str, backend: str) -> str | None:
        if library == "eventsourcing" and backend == "sqlite":
            return "no subscriptions on SQLite"
        return None

    def note(self, library: str, backend: str) -> str | None:
        if backend == "popo":
            return "runner's own app and view"
        return None

    def _trial(self, samples: list[float], ctx: Context, library: str) -> Trial:
        return Trial(
            values={
                P50.name: percentile(samples, 50),
                P99.name: percentile(samples, 99),
            },
            distributions={f"{library} {ctx.backend}": samples},
        )

    def run_eventsourcing(self, ctx: Context) -> Trial:
        env = ctx.env("eventsourcing")
        view_class = es_view_class(ctx.backend)
        samples: list[float] = []
        with ESProjectionRunner(
            application_class=ESApplication[UUID],
            projection_class=ESEventCountersProjection,
            view_class=view_class,
            env=env,
        ) as runner:
            factory: Any = None
            if ctx.backend == "popo":
                write_model: Any = runner.app
                read_model: Any = runner.projection.view
            else:
                write_model = ESApplication[UUID](env)
                factory = ESInfrastructureFactory[Any].construct(
                    env=Environment(name=PROJECTION_NAME, env=env)
                )
                read_model = factory.tracking_recorder(view_class)
            try:
                for i in range(WARM_UP_SAVES + ctx.profile.latency_saves):
                    started = time.perf_counter()
                    recordings = write_model.save(Aggregate())
                    read_model.wait(
                        write_model.name,
                        recordings[-1].notification.id,
                        timeout=WAIT_TIMEOUT,
                    )
                    if i >= WARM_UP_SAVES:
                        samples.append((time.perf_counter() - started) * 1000)
            finally:
                if factory is not None:
                    write_model.close()
                    factory.close()
        return self._trial(samples, ctx, "eventsourcing")

    async def run_asyncsourcing(self, ctx: Context) -> Trial:
        env = ctx.env("asyncsourcing")
        view_class = as_view_class(ctx.backend)
        samples: list[float] = []
        async with ProjectionRunner(
            application_class=Application[UUID],
            projection_class=EventCountersProjection,
            view_class=view_class,
            env=env,
        ) as runner:
            factory: Any = None
            if ctx.backend == "popo":
                write_model: Any = runner.app
                read_model: Any = runner.projection.view
            else:
                write_model = Application[UUID](env)
                factory = InfrastructureFactory[Any].construct(
                    env=Environment(name=PROJECTION_NAME, env=env)
                )
                read_model = await factory.tracking_recorder(view_class)
            try:
                for i in range(WARM_UP_SAVES + ctx.profile.latency_saves):
                    started = time.perf_counter()
                    recordings = await write_model.save(Aggregate())
                    await read_model.wait(
                        write_model.name,
                        recordings[-1].notification.id,
                        timeout=WAIT_TIMEOUT,
                    )
                    if i >= WARM_UP_SAVES:
                        samples.append((time.perf_counter() - started) * 1000)
            finally:
                if factory is not None:
                    await write_model.close()
                    await factory.close()
        return self._trial(samples, ctx, "asyncsourcing")
