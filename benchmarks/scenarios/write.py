"""Scenario 1: ``save()`` of fresh one-event aggregates, by one and by many writers.

On PostgreSQL, asyncsourcing's trials also time a reference beside the one
writer: a bare asyncpg loop of autocommit ``INSERT``s of one row into a table
like the events table, on one connection, with nothing else around it. The
two take turns, a chunk of each at a time, so that the load of a shared
machine weighs on both alike; the table gives the reference's rate, and the
one writer's over it, per trial.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import ClassVar
from uuid import UUID, uuid4

import asyncpg
from eventsourcing.application import Application as ESApplication
from eventsourcing.domain import Aggregate

from asyncsourcing.application import Application
from asyncsourcing.persistence import StoredEvent
from benchmarks.results import Metric, Trial
from benchmarks.scenarios.base import Context, Scenario

__all__ = ["WriteScenario"]

WARM_UP_SAVES = 20

#: Saves (and reference inserts) in a turn, when the two take turns.
CHUNK = 100

RAW_INSERT = Metric("raw asyncpg INSERT, 1 writer", "rows/s", higher_is_better=True)
RAW_RATIO = Metric(
    "1 writer / raw asyncpg INSERT",
    "x",
    higher_is_better=True,
    decimals=2,
    has_ratio=False,
)

# The reference's table: the columns, primary key and notification id index
# of the events table, and nothing else (no lock, no NOTIFY, no function).
_RAW_TABLE = "write_reference_raw_inserts"
_RAW_CREATE = (
    f"CREATE TABLE {_RAW_TABLE} ("
    "originator_id uuid NOT NULL, "
    "originator_version bigint NOT NULL, "
    "topic text, "
    "state bytea, "
    "notification_id bigserial, "
    "PRIMARY KEY (originator_id, originator_version)); "
    f"CREATE UNIQUE INDEX {_RAW_TABLE}_notification_id_idx "
    f"ON {_RAW_TABLE} (notification_id ASC)"
)
_RAW_INSERT = (
    f"INSERT INTO {_RAW_TABLE} (originator_id, originator_version, topic, state) "
    "VALUES ($1, $2, $3, $4)"
)


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
        "of wall time. On PostgreSQL, a reference, measured in each of "
        "asyncsourcing's trials beside its one writer, the two taking turns "
        f"({CHUNK} saves, {CHUNK} inserts, ...): as many autocommit `INSERT`s "
        "of one row (a fresh id, the `Created` event's topic and state) by a "
        "bare asyncpg loop on one connection, into a table with the events "
        "table's columns, primary key and notification id index; and the one "
        "writer's rate over it, per trial."
    )

    def metrics(self, ctx: Context) -> list[Metric]:
        writers = ctx.profile.writers
        metrics = [
            Metric("1 writer", "events/s", higher_is_better=True),
            Metric(f"{writers} writers", "events/s", higher_is_better=True),
        ]
        if ctx.backend == "postgres":
            metrics += [RAW_INSERT, RAW_RATIO]
        return metrics

    def missing(self, library: str, ctx: Context, metric: Metric) -> str:
        if metric in (RAW_INSERT, RAW_RATIO) and library == "eventsourcing":
            return "asyncsourcing's reference"
        return "not measured"

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
            reference: dict[str, float] = {}
            if ctx.backend == "postgres":
                created = Aggregate().collect_events()[0]
                sample = app.mapper.to_stored_event(created)
                async with _RawInserts(ctx, sample) as raw:
                    one = await _one_writer(app, profile.write_saves, raw)
                    rate = profile.write_saves / raw.elapsed
                reference = {RAW_INSERT.name: rate, RAW_RATIO.name: one / rate}
            else:
                one = await _one_writer(app, profile.write_saves)

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
        return Trial(
            values={self.metrics(ctx)[0].name: one, self._many(ctx): many, **reference}
        )

    def _many(self, ctx: Context) -> str:
        return self.metrics(ctx)[1].name


async def _one_writer(
    app: Application[UUID], saves: int, raw: _RawInserts | None = None
) -> float:
    """Saves per second of one writer, taking turns with ``raw`` if given."""
    elapsed = 0.0
    for start in range(0, saves, CHUNK):
        chunk = min(CHUNK, saves - start)
        started = time.perf_counter()
        for _ in range(chunk):
            await app.save(Aggregate())
        elapsed += time.perf_counter() - started
        if raw is not None:
            await raw.insert(chunk)
    return saves / elapsed


class _RawInserts:
    """The reference: autocommit INSERTs of one row each (``sample``'s topic
    and state, fresh ids) on a connection of its own, after a warm-up;
    :attr:`elapsed` adds up the time of :meth:`insert`."""

    def __init__(self, ctx: Context, sample: StoredEvent) -> None:
        assert ctx.server is not None
        self._settings = ctx.server.env()
        self._sample = sample
        self._conn: asyncpg.Connection[asyncpg.Record] | None = None
        self.elapsed = 0.0

    async def __aenter__(self) -> _RawInserts:
        settings = self._settings
        self._conn = await asyncpg.connect(
            host=settings["POSTGRES_HOST"],
            port=int(settings["POSTGRES_PORT"]),
            user=settings["POSTGRES_USER"],
            password=settings["POSTGRES_PASSWORD"],
            database=settings["POSTGRES_DBNAME"],
        )
        await self._conn.execute(_RAW_CREATE)
        await self._insert(WARM_UP_SAVES)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._conn is not None:
            await self._conn.close()

    async def insert(self, rows: int) -> None:
        started = time.perf_counter()
        await self._insert(rows)
        self.elapsed += time.perf_counter() - started

    async def _insert(self, rows: int) -> None:
        assert self._conn is not None
        topic, state = self._sample.topic, self._sample.state
        for _ in range(rows):
            await self._conn.execute(_RAW_INSERT, uuid4(), 1, topic, state)
