"""Scenario 4: many concurrent waiters on one position of one view."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, ClassVar

from eventsourcing.persistence import InfrastructureFactory as ESInfrastructureFactory
from eventsourcing.persistence import Tracking
from eventsourcing.utils import Environment

from asyncsourcing.persistence import InfrastructureFactory
from benchmarks.config import APP_NAME, PROJECTION_NAME
from benchmarks.libs import as_view_class, es_view_class
from benchmarks.results import Metric, Trial
from benchmarks.scenarios.base import Context, Scenario
from benchmarks.server import QueryCounter

__all__ = ["FanOutScenario"]

POSITION = 1
#: Waiters wait this long at most; they are woken well before.
WAIT_TIMEOUT = 120.0
#: eventsourcing's thread stacks: the default 8 MiB of address space each is
#: more than a waiter needs (it is only reserved, but 1,000 of them add up).
ES_THREAD_STACK_SIZE = 512 * 1024


def _wake(n: int) -> Metric:
    return Metric(f"{n:,} waiters: all woken", "ms", higher_is_better=False, decimals=1)


def _queries(n: int, window: float) -> Metric:
    return Metric(
        f"{n:,} waiters: queries in {window:g} s wait",
        "queries",
        higher_is_better=False,
    )


def _cpu(n: int, window: float) -> Metric:
    return Metric(
        f"{n:,} waiters: client CPU in {window:g} s wait",
        "% of a core",
        higher_is_better=False,
        decimals=1,
    )


class FanOutScenario(Scenario):
    name: ClassVar[str] = "fanout"
    title: ClassVar[str] = "4. fan-out"
    description: ClassVar[str] = (
        "N tasks (asyncsourcing) or N threads (eventsourcing) call "
        "`wait(app, position)` on one view object, for a position not yet "
        "recorded. For the first W seconds after the waiters are launched "
        "(their initial checks included) the database statements and this "
        "process's CPU time (`time.process_time()`, all threads) are counted. "
        "Then another view object, from another infrastructure factory on the "
        "same database, records the position with `insert_tracking()`; "
        '"all woken" is the time from the start of that call until the last '
        "waiter returned. In memory a second view would be a second database: "
        "the same view object records the position. eventsourcing runs one "
        "thread per waiter and is capped at 1,000 waiters."
    )

    def metrics(self, ctx: Context) -> list[Metric]:
        window = ctx.profile.fanout_window
        metrics: list[Metric] = []
        for n in ctx.profile.fanout_waiters:
            metrics.append(_wake(n))
            if ctx.backend == "postgres":
                metrics.append(_queries(n, window))
            metrics.append(_cpu(n, window))
        return metrics

    def missing(self, library: str, ctx: Context, metric: Metric) -> str:
        if library == "eventsourcing":
            return f"capped at {ctx.profile.fanout_es_cap:,} threads"
        return "not measured"

    def note(self, library: str, backend: str) -> str | None:
        if backend == "popo":
            return "one view object waits and records"
        return None

    def _counter(self, ctx: Context) -> QueryCounter | None:
        if ctx.backend == "postgres" and ctx.server is not None:
            return ctx.server.query_counter()
        return None

    def _values(
        self,
        ctx: Context,
        n: int,
        woken: float,
        queries: int | None,
        cpu: float,
        window: float,
    ) -> dict[str, float]:
        values = {
            _wake(n).name: woken * 1000,
            _cpu(n, ctx.profile.fanout_window).name: cpu / window * 100,
        }
        if queries is not None:
            values[_queries(n, ctx.profile.fanout_window).name] = queries
        return values

    def run_eventsourcing(self, ctx: Context) -> Trial:
        view_class = es_view_class(ctx.backend)
        trial = Trial()
        for i, n in enumerate(ctx.profile.fanout_waiters):
            if n > ctx.profile.fanout_es_cap:
                continue
            if i:
                ctx.reset()
            env = ctx.env("eventsourcing")
            factories: list[Any] = []

            def view(env: dict[str, str], factories: list[Any]) -> Any:
                factory = ESInfrastructureFactory[Any].construct(
                    env=Environment(name=PROJECTION_NAME, env=env)
                )
                factories.append(factory)
                return factory.tracking_recorder(view_class)

            try:
                reader = view(env, factories)
                writer = reader if ctx.backend == "popo" else view(env, factories)
                trial.values.update(self._es_once(ctx, n, reader, writer))
            finally:
                for factory in factories:
                    factory.close()
        return trial

    def _es_once(
        self, ctx: Context, n: int, reader: Any, writer: Any
    ) -> dict[str, float]:
        woken_at: list[float] = []
        errors: list[BaseException] = []
        lock = threading.Lock()

        def waiter() -> None:
            try:
                reader.wait(APP_NAME, POSITION, timeout=WAIT_TIMEOUT)
                now = time.perf_counter()
                with lock:
                    woken_at.append(now)
            except BaseException as error:
                with lock:
                    errors.append(error)

        counter = self._counter(ctx)
        previous_stack_size = threading.stack_size(ES_THREAD_STACK_SIZE)
        try:
            if counter is not None:
                counter.start()
            cpu_started = time.process_time()
            started = time.perf_counter()
            threads = [threading.Thread(target=waiter, daemon=True) for _ in range(n)]
            for thread in threads:
                thread.start()
        finally:
            threading.stack_size(previous_stack_size)
        time.sleep(max(0.0, started + ctx.profile.fanout_window - time.perf_counter()))
        cpu = time.process_time() - cpu_started
        window = time.perf_counter() - started
        queries = counter.stop() if counter is not None else None
        if errors:
            raise errors[0]
        recording = time.perf_counter()
        writer.insert_tracking(Tracking(APP_NAME, POSITION))
        for thread in threads:
            thread.join(WAIT_TIMEOUT)
        if errors:
            raise errors[0]
        if len(woken_at) != n:
            msg = f"{n - len(woken_at)} of {n} waiters did not wake"
            raise AssertionError(msg)
        return self._values(ctx, n, max(woken_at) - recording, queries, cpu, window)

    async def run_asyncsourcing(self, ctx: Context) -> Trial:
        view_class = as_view_class(ctx.backend)
        trial = Trial()
        for i, n in enumerate(ctx.profile.fanout_waiters):
            if i:
                ctx.reset()
            env = ctx.env("asyncsourcing")
            factories: list[Any] = []

            async def view(env: dict[str, str], factories: list[Any]) -> Any:
                factory = InfrastructureFactory[Any].construct(
                    env=Environment(name=PROJECTION_NAME, env=env)
                )
                factories.append(factory)
                return await factory.tracking_recorder(view_class)

            try:
                reader = await view(env, factories)
                writer = reader if ctx.backend == "popo" else await view(env, factories)
                trial.values.update(await self._as_once(ctx, n, reader, writer))
            finally:
                for factory in factories:
                    await factory.close()
        return trial

    async def _as_once(
        self, ctx: Context, n: int, reader: Any, writer: Any
    ) -> dict[str, float]:
        woken_at: list[float] = []

        async def waiter() -> None:
            await reader.wait(APP_NAME, POSITION, timeout=WAIT_TIMEOUT)
            woken_at.append(time.perf_counter())

        counter = self._counter(ctx)
        if counter is not None:
            counter.start()
        cpu_started = time.process_time()
        started = time.perf_counter()
        tasks = [asyncio.create_task(waiter()) for _ in range(n)]
        try:
            await asyncio.sleep(
                max(0.0, started + ctx.profile.fanout_window - time.perf_counter())
            )
            cpu = time.process_time() - cpu_started
            window = time.perf_counter() - started
            # A blocking read, with nothing else to do on the loop meanwhile.
            queries = counter.stop() if counter is not None else None
            for task in tasks:
                if task.done():
                    task.result()  # Surfaces an early failure.
            recording = time.perf_counter()
            await writer.insert_tracking(Tracking(APP_NAME, POSITION))
            await asyncio.wait_for(asyncio.gather(*tasks), WAIT_TIMEOUT)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return self._values(ctx, n, max(woken_at) - recording, queries, cpu, window)
