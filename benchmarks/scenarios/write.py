"""Scenario 1: ``save()`` of fresh one-event aggregates, by one and by many writers."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import ClassVar
from uuid import UUID

from eventsourcing.application import Application as ESApplication
from eventsourcing.domain import Aggregate

from asyncsourcing.application import Application
from benchmarks.results import Metric, Trial
from benchmarks.scenarios.base import Context, Scenario

__all__ = ["WriteScenario"]

WARM_UP_SAVES = 20


def _check_count(max_notification_id: int | None, ctx: Context) -> None:
    """Every save was recorded, each event with its own notification id."""
    profile = ctx.profile
    per_writer = profile.write_concurrent_saves // profile.writers
    expected = WARM_UP_SAVES + profile.write_saves + per_writer * profile.writers
    if max_notification_id != expected:
        msg = f"max notification id is {max_notification_id}, expected {expected}"
        raise AssertionError(msg)


class WriteScenario(Scenario):
    name: ClassVar[str] = "write"
    title: ClassVar[str] = "1. write"
    description: ClassVar[str] = (
        "`save()` of a fresh `Aggregate()` (one `Created` event) at a time, "
        "`Application[UUID]`, after a warm-up of 20 saves that connects and "
        "creates the tables. One writer; then N concurrent writers sharing one "
        "application object (asyncio tasks for asyncsourcing, threads for "
        "eventsourcing), each saving its share in a loop. Events per second "
        "of wall time."
    )

    def metrics(self, ctx: Context) -> list[Metric]:
        writers = ctx.profile.writers
        return [
            Metric("1 writer", "events/s", higher_is_better=True),
            Metric(f"{writers} writers", "events/s", higher_is_better=True),
        ]

    def run_eventsourcing(self, ctx: Context) -> Trial:
        profile = ctx.profile
        app = ESApplication[UUID](ctx.env("eventsourcing"))
        try:
            for _ in range(WARM_UP_SAVES):
                app.save(Aggregate())
            started = time.perf_counter()
            for _ in range(profile.write_saves):
                app.save(Aggregate())
            one = profile.write_saves / (time.perf_counter() - started)

            per_writer = profile.write_concurrent_saves // profile.writers
            errors: list[BaseException] = []
            barrier = threading.Barrier(profile.writers + 1)

            def writer() -> None:
                try:
                    barrier.wait()
                    for _ in range(per_writer):
                        app.save(Aggregate())
                except BaseException as error:
                    errors.append(error)

            threads = [
                threading.Thread(target=writer, name=f"writer-{i}")
                for i in range(profile.writers)
            ]
            for thread in threads:
                thread.start()
            barrier.wait()
            started = time.perf_counter()
            for thread in threads:
                thread.join()
            elapsed = time.perf_counter() - started
            if errors:
                raise errors[0]
            many = per_writer * profile.writers / elapsed
            _check_count(app.recorder.max_notification_id(), ctx)
        finally:
            app.close()
        return Trial(values={self.metrics(ctx)[0].name: one, self._many(ctx): many})

    async def run_asyncsourcing(self, ctx: Context) -> Trial:
        profile = ctx.profile
        async with Application[UUID](ctx.env("asyncsourcing")) as app:
            for _ in range(WARM_UP_SAVES):
                await app.save(Aggregate())
            started = time.perf_counter()
            for _ in range(profile.write_saves):
                await app.save(Aggregate())
            one = profile.write_saves / (time.perf_counter() - started)

            per_writer = profile.write_concurrent_saves // profile.writers

            async def writer() -> None:
                for _ in range(per_writer):
                    await app.save(Aggregate())

            started = time.perf_counter()
            async with asyncio.TaskGroup() as group:
                for _ in range(profile.writers):
                    group.create_task(writer())
            elapsed = time.perf_counter() - started
            many = per_writer * profile.writers / elapsed
            _check_count(await app.recorder.max_notification_id(), ctx)
        return Trial(values={self.metrics(ctx)[0].name: one, self._many(ctx): many})

    def _many(self, ctx: Context) -> str:
        return self.metrics(ctx)[1].name
