"""Each library's view classes, and the recorded data the scenarios start from."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any
from uuid import UUID

from eventsourcing.application import Application as ESApplication
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import StoredEvent

from benchmarks.es_views import (
    ESEventCountersView,
    ESPOPOEventCounters,
    ESPostgresEventCounters,
    ESSQLiteEventCounters,
)
from benchmarks.progress import log

__all__ = [
    "BATCH_SIZE",
    "EVENTS_PER_AGGREGATE",
    "as_view_class",
    "es_view_class",
    "insert_as",
    "insert_es",
    "stored_events",
]

#: Events per insert_events() call when recording a data set.
BATCH_SIZE = 5000
#: A data set's aggregates have one Created event and four Aggregate.Event.
EVENTS_PER_AGGREGATE = 5


def es_view_class(backend: str) -> type[ESEventCountersView]:
    classes: dict[str, type[ESEventCountersView]] = {
        "popo": ESPOPOEventCounters,
        "sqlite": ESSQLiteEventCounters,
        "postgres": ESPostgresEventCounters,
    }
    return classes[backend]


def as_view_class(backend: str) -> type[Any]:
    """asyncsourcing's example view (imported late: backends may be missing)."""
    if backend == "popo":
        from examples.eventcounters.views import POPOEventCounters

        return POPOEventCounters
    if backend == "sqlite":
        from examples.eventcounters.sqlite import (  # type: ignore[import-not-found,unused-ignore]
            SQLiteEventCounters,
        )

        cls: type[Any] = SQLiteEventCounters
        return cls
    if backend == "postgres":
        from examples.eventcounters.postgres import PostgresEventCounters

        return PostgresEventCounters
    raise ValueError(backend)


@cache
def stored_events(count: int) -> tuple[StoredEvent, ...]:
    """``count`` stored events of ``Aggregate``s, made by eventsourcing's mapper.

    The mapper (transcoder, no cipher, no compressor) is the one both
    libraries' ``Application[UUID]`` use, so either can record and read them.
    Cached: each data set is made once per run.
    """
    started = time.perf_counter()
    app = ESApplication[UUID]({"PERSISTENCE_MODULE": "eventsourcing.popo"})
    to_stored_event: Callable[[Any], StoredEvent] = app.mapper.to_stored_event
    result: list[StoredEvent] = []
    while len(result) < count:
        aggregate = Aggregate()
        for _ in range(EVENTS_PER_AGGREGATE - 1):
            aggregate.trigger_event(Aggregate.Event)
        result.extend(to_stored_event(e) for e in aggregate.collect_events())
    del result[count:]
    log(f"  made {count:,} stored events in {time.perf_counter() - started:.1f}s")
    return tuple(result)


def _batches(events: Sequence[StoredEvent]) -> list[Sequence[StoredEvent]]:
    return [events[i : i + BATCH_SIZE] for i in range(0, len(events), BATCH_SIZE)]


def insert_es(recorder: Any, events: Sequence[StoredEvent]) -> int:
    """Record ``events`` with an eventsourcing recorder; the last notification id."""
    for batch in _batches(events):
        recorder.insert_events(list(batch))
    last = recorder.max_notification_id()
    assert last is not None
    return int(last)


async def insert_as(recorder: Any, events: Sequence[StoredEvent]) -> int:
    """Record ``events`` with an asyncsourcing recorder; the last notification id."""
    for batch in _batches(events):
        await recorder.insert_events(list(batch))
    last = await recorder.max_notification_id()
    assert last is not None
    return int(last)
