"""Helpers of the fault tests (tests/faults/) and of benchmarks/soak.py.

This module has no tests. It holds:

* ``Counters``, an application of ``Counter`` aggregates;
* views that record, with their tracking, every processed notification id in
  a table of their own (Postgres and SQLite), so that a test can check that
  nothing was skipped, nothing processed twice, and positions strictly
  increased; and :func:`check_exactly_once`, which checks that;
* a child-process entry point (``python -m tests.support.faults writer|runner``)
  used to write from, and to kill, another process. Its configuration comes
  from the environment (``PERSISTENCE_MODULE``, ``POSTGRES_*``, ...).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sys
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from asyncsourcing.application import Application
from asyncsourcing.domain import Aggregate, event
from asyncsourcing.persistence import Tracking, TrackingRecorder
from asyncsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
from asyncsourcing.postgres.identifiers import qualified
from asyncsourcing.projection import Projection, ProjectionRunner
from asyncsourcing.sqlite import SQLiteTrackingRecorder

__all__ = [
    "Counter",
    "Counters",
    "PostgresRecordingView",
    "RecordingProjection",
    "SQLiteRecordingView",
    "check_exactly_once",
    "write_events",
]


class Counter(Aggregate):
    @event("Created")
    def __init__(self) -> None:
        self.count = 0

    @event("Incremented")
    def increment(self) -> None:
        self.count += 1


class Counters(Application[UUID]):
    name = "Counters"


class PostgresRecordingView(PostgresTrackingRecorder):
    """Records each processed notification id (in processing order) with tracking."""

    def __init__(self, datastore: PostgresDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        name = self.tracking_table_name.removesuffix("_tracking") + "_processed"
        self.check_identifier_length(name)
        table = qualified(self.datastore.schema, name)
        self.sql_create_statements.append(
            f"CREATE TABLE IF NOT EXISTS {table} "
            "(seq bigserial PRIMARY KEY, notification_id bigint NOT NULL)"
        )
        self._insert_processed = f"INSERT INTO {table} (notification_id) VALUES ($1)"
        self._select_processed = f"SELECT notification_id FROM {table} ORDER BY seq"

    async def record(self, tracking: Tracking) -> None:
        async with self.datastore.transaction(commit=True) as conn:
            await self._insert_tracking(conn, tracking)
            await conn.execute(self._insert_processed, tracking.notification_id)

    async def processed_ids(self) -> list[int]:
        async with self.datastore.transaction(commit=False) as conn:
            rows = await conn.fetch(self._select_processed)
        return [row[0] for row in rows]


class SQLiteRecordingView(SQLiteTrackingRecorder):
    """The SQLite twin of :class:`PostgresRecordingView`."""

    def _construct_create_table_statements(self) -> list[str]:
        return [
            *super()._construct_create_table_statements(),
            "CREATE TABLE IF NOT EXISTS processed "
            "(seq INTEGER PRIMARY KEY AUTOINCREMENT, notification_id INTEGER NOT NULL)",
        ]

    async def record(self, tracking: Tracking) -> None:
        async with self.datastore.transaction(commit=True) as connection:
            await self._insert_tracking(connection, tracking)
            await connection.execute(
                "INSERT INTO processed (notification_id) VALUES (?)",
                (tracking.notification_id,),
            )

    async def processed_ids(self) -> list[int]:
        async with self.datastore.transaction(commit=False) as connection:
            rows = await connection.execute_fetchall(
                "SELECT notification_id FROM processed ORDER BY seq"
            )
        return [int(row[0]) for row in rows]


RecordingView = PostgresRecordingView | SQLiteRecordingView


class RecordingProjection(Projection[Any]):
    """Records every event; ``delay`` seconds of "work" per event (for kill tests)."""

    name = "recording"
    delay = 0.0

    async def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        await self.view.record(tracking)


async def check_exactly_once(
    view: Any, app_name: str, all_ids: Sequence[int]
) -> tuple[int | None, list[int]]:
    """Assert the view processed exactly the ids up to its position, once each.

    Returns the view's tracking position and the processed ids.
    """
    position = await view.max_tracking_id(app_name)
    processed = await view.processed_ids()
    expected = [i for i in sorted(all_ids) if position is not None and i <= position]
    duplicated = len(processed) - len(set(processed))
    assert duplicated == 0, f"{duplicated} notifications processed twice"
    assert all(a < b for a, b in itertools.pairwise(processed)), (
        "positions did not strictly increase"
    )
    skipped = sorted(set(expected) - set(processed))
    assert not skipped, f"skipped {len(skipped)} notifications: {skipped[:10]}..."
    assert processed == expected, (
        f"processed {len(processed)} notifications up to position {position}, "
        f"expected {len(expected)}"
    )
    return position, processed


async def write_events(app: Counters, n_events: int) -> list[int]:
    """Save one Counter and then increment it: ``n_events`` saves, one event each."""
    counter = Counter()
    ids = [r.notification.id for r in await app.save(counter)]
    for _ in range(n_events - 1):
        counter.increment()
        ids.extend(r.notification.id for r in await app.save(counter))
    return ids


# Child process entry points.


async def _writer(n_tasks: int, n_events: int) -> None:
    async with Counters() as app:
        print("ready", flush=True)
        results = await asyncio.gather(
            *(write_events(app, n_events) for _ in range(n_tasks))
        )
    print(json.dumps([i for ids in results for i in ids]), flush=True)


class _BatchedRunner(ProjectionRunner[Any, Any]):
    max_batch_size = int(os.environ.get("FAULTS_MAX_BATCH_SIZE", "500"))


async def _runner(view_class: type[TrackingRecorder], delay: float) -> None:
    projection_class = type(
        "RecordingProjection",
        (RecordingProjection,),
        {"delay": delay, "name": "recording"},
    )
    runner = _BatchedRunner(
        application_class=Counters,
        projection_class=projection_class,
        view_class=view_class,
    )
    async with runner:
        print("ready", flush=True)
        await runner.run_forever()


def main(argv: list[str]) -> None:
    if argv[0] == "writer":
        asyncio.run(_writer(int(argv[1]), int(argv[2])))
    elif argv[0] == "runner":
        view_class: dict[str, type[TrackingRecorder]] = {
            "postgres": PostgresRecordingView,
            "sqlite": SQLiteRecordingView,
        }
        asyncio.run(_runner(view_class[argv[1]], float(argv[2])))
    else:  # pragma: no cover
        raise SystemExit(f"unknown command {argv[0]!r}")


if __name__ == "__main__":
    # Run as "python -m": use this module's importable twin, so that event
    # topics name "tests.support.faults", not "__main__".
    from tests.support.faults import main as _main

    _main(sys.argv[1:])
