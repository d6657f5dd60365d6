"""The bulk examples (one view command per catch-up batch) on every backend:
their views equal those of the examples that process one event at a time,
and on SQLite and PostgreSQL the batches really go through the bulk command.

In memory, every event goes to process_event() alone (no batches).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from uuid import UUID, uuid4

import pytest

import examples.dogschool.postgres as postgres_dogs
from asyncsourcing.domain import Aggregate
from asyncsourcing.persistence import Tracking
from asyncsourcing.postgres.bulk import copy_rows, insert_rows
from asyncsourcing.projection import Projection, ProjectionRunner
from asyncsourcing.projection.batches import group_by_originator
from examples.dogschool.application import DogSchool
from examples.dogschool.postgres import PostgresCounters, PostgresDogs
from examples.dogschool.projections import (
    DOGS,
    TRICKS,
    BulkDogsProjection,
    DogCountersProjection,
)
from examples.dogschool.sqlite import SQLiteCounters, SQLiteDogs
from examples.dogschool.views import DogUpdate, POPOCounters, POPODogs
from examples.eventcounters.projection import (
    BulkEventCountersProjection,
    EventCountersProjection,
    SpannerThrown,
)
from tests.support.backends import Backend

# Calls of the views' command methods: (method, events it counted or dogs).
CALLS: list[tuple[str, int]] = []


@pytest.fixture(autouse=True)
def fresh_calls() -> None:
    CALLS.clear()


class _SpyCounters:
    """Records the event counters' command calls."""

    async def add_to_counters(
        self, created: int, subsequent: int, tracking: Tracking
    ) -> None:
        CALLS.append(("add_to_counters", created + subsequent))
        await super().add_to_counters(created, subsequent, tracking)  # type: ignore[misc]

    async def incr_created_event_counter(self, tracking: Tracking) -> None:
        CALLS.append(("incr", 1))
        await super().incr_created_event_counter(tracking)  # type: ignore[misc]

    async def incr_subsequent_event_counter(self, tracking: Tracking) -> None:
        CALLS.append(("incr", 1))
        await super().incr_subsequent_event_counter(tracking)  # type: ignore[misc]


class _SpyDogs:
    """Records the dogs view's command calls, with the number of dogs."""

    async def update_dogs(
        self,
        updates: Mapping[UUID, DogUpdate],
        counts: Mapping[str, int],
        tracking: Tracking,
    ) -> None:
        CALLS.append(("update_dogs", len(updates)))
        await super().update_dogs(updates, counts, tracking)  # type: ignore[misc]


def spy(mixin: type[Any], view_class: type[Any]) -> type[Any]:
    return type(f"Spy{view_class.__name__}", (mixin, view_class), {})


async def catch_up_counters(
    backend: Backend, projection_class: type[Projection[Any]], **kwargs: Any
) -> tuple[int, int]:
    """Run ``projection_class`` over 300 aggregates (created, then updated)
    recorded before it starts, then over one live aggregate (the first run
    records them, a later one on the same database catches up); return the
    counts."""
    view_class = spy(_SpyCounters, backend.view_class)
    async with backend.runner(
        projection_class=projection_class, view_class=view_class, **kwargs
    ) as runner:
        if await runner.app.recorder.max_notification_id() is None:
            aggregates = [Aggregate() for _ in range(300)]
            for aggregate in aggregates:
                aggregate.trigger_event(Aggregate.Event)
            await runner.app.save(*aggregates)
            await runner.wait(600, timeout=30)
            live = Aggregate()
            live.trigger_event(Aggregate.Event)
            await runner.app.save(live)
        await runner.wait(602, timeout=30)
        view = runner.projection.view
        return (
            await view.get_created_event_counter(),
            await view.get_subsequent_event_counter(),
        )


async def test_bulk_event_counters_equal_the_event_counters(backend: Backend) -> None:
    bulk = await catch_up_counters(backend, BulkEventCountersProjection)
    bulk_calls = list(CALLS)
    CALLS.clear()
    one_by_one = await catch_up_counters(backend, EventCountersProjection)

    assert bulk == one_by_one == (301, 301)
    # Each event counted once, by one command or another.
    assert sum(n for _, n in bulk_calls) == 602
    assert all(method == "incr" for method, _ in CALLS)
    bulk_events = sum(n for method, n in bulk_calls if method == "add_to_counters")
    if backend.name == "popo":
        assert bulk_events == 0
    else:
        # The 600 recorded events were counted by a few commands, in batches
        # (how the runner cuts them depends on its reads); the live ones alone.
        assert bulk_events >= 600
        assert len(bulk_calls) <= 10


async def test_bulk_event_counters_skip_a_failing_event(backend: Backend) -> None:
    async with backend.runner(
        error_policy="skip",
        projection_class=BulkEventCountersProjection,
        view_class=spy(_SpyCounters, backend.view_class),
    ) as runner:
        aggregates = [Aggregate() for _ in range(100)]
        aggregates[50].trigger_event(SpannerThrown)
        recordings = await runner.app.save(*aggregates)
        await runner.wait(recordings[-1].notification.id, timeout=30)
        view = runner.projection.view
        assert await view.get_created_event_counter() == 100
        assert await view.get_subsequent_event_counter() == 0
    # No command was called and rolled back: the batch holding the failing
    # event raised before writing anything.
    assert sum(n for _, n in CALLS) == 100


class SmallBatches(ProjectionRunner[DogSchool, Any]):
    # Batches smaller than the catch-up, so that a dog's events fall in
    # several batches: its row, written by one, is loaded by the next.
    max_batch_size = 7


DOGS_VIEWS: dict[str, type[Any]] = {
    "popo": POPODogs,
    "sqlite": SQLiteDogs,
    "postgres": PostgresDogs,
}
COUNTERS_VIEWS: dict[str, type[Any]] = {
    "popo": POPOCounters,
    "sqlite": SQLiteCounters,
    "postgres": PostgresCounters,
}
TRICKS_TAUGHT = ("sit", "fetch", "roll over")


async def teach(school: DogSchool, dogs: int) -> tuple[list[UUID], int]:
    """Register ``dogs`` dogs, then teach them their tricks in turns."""
    dog_ids = [(await school.register_dog(f"dog {n}"))[0] for n in range(dogs)]
    position = 0
    for trick in TRICKS_TAUGHT:
        for dog_id in dog_ids:
            position = await school.add_trick(dog_id, trick)
    return dog_ids, position


def dog_runner(
    backend: Backend, projection_class: type[Projection[Any]], view_class: type[Any]
) -> SmallBatches:
    return SmallBatches(
        application_class=DogSchool,
        projection_class=projection_class,
        view_class=view_class,
        env=backend.env,
    )


async def test_bulk_dogs_equal_the_dog_school(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On PostgreSQL: the rows the view adds with COPY, and writes back.
    copied: list[UUID] = []
    written: list[UUID] = []

    def counting(function: Any, ids: list[UUID]) -> Any:
        async def wrapper(
            conn: Any, table: str, columns: Any, rows: Any, **kw: Any
        ) -> Any:
            ids.extend(row[0] for row in rows)
            return await function(conn, table, columns, rows, **kw)

        return wrapper

    monkeypatch.setattr(postgres_dogs, "copy_rows", counting(copy_rows, copied))
    monkeypatch.setattr(postgres_dogs, "insert_rows", counting(insert_rows, written))
    view_class = spy(_SpyDogs, DOGS_VIEWS[backend.name])
    runner = dog_runner(backend, BulkDogsProjection, view_class)
    # Recorded before the runner starts: it catches up in batches.
    dog_ids, position = await teach(runner.app, 20)
    async with runner:
        school, view = runner.app, runner.projection.view
        await runner.wait(position, timeout=30)
        # Live: a new dog, and a trick for a dog of the catch-up.
        new_dog, _ = await school.register_dog("Milly")
        position = await school.add_trick(dog_ids[0], "play dead")
        await runner.wait(position, timeout=30)

        for dog_id in [*dog_ids, new_dog]:
            dog = await school.get_dog(dog_id)
            assert await view.get_dog(dog_id) == (dog["name"], dog["tricks"])
        assert await view.get_dog(uuid4()) is None
        bulk_counts = (await view.get_count(DOGS), await view.get_count(TRICKS))

    runner = dog_runner(backend, DogCountersProjection, COUNTERS_VIEWS[backend.name])
    if backend.name == "popo":  # A new application: the same events again.
        first_ids, _ = await teach(runner.app, 20)
        await runner.app.register_dog("Milly")
        position = await runner.app.add_trick(first_ids[0], "play dead")
    async with runner:
        await runner.wait(position, timeout=30)
        view = runner.projection.view
        counts = (await view.get_count(DOGS), await view.get_count(TRICKS))

    assert bulk_counts == counts == (21, 61)
    dogs_per_call = [n for _, n in CALLS]
    if backend.name == "popo":
        assert len(CALLS) == 82 and set(dogs_per_call) == {1}
    else:
        # The 80 events of the catch-up, in batches of 7 events (the last of
        # 3), each an update of up to 7 dogs; then the 2 live events, alone
        # or together, as the subscription happens to read them.
        assert len(CALLS) in (12 + 1, 12 + 2)
        assert max(dogs_per_call) == 7
    if backend.name == "postgres":
        # Each dog added once, by COPY, when first seen; written back by
        # later batches (each learns a trick in three of them).
        assert sorted(copied) == sorted([*dog_ids, new_dog])
        assert set(written) == set(dog_ids)


async def test_dogs_view_refuses_tricks_of_unknown_dogs() -> None:
    view = POPODogs()
    with pytest.raises(LookupError):
        await view.update_dogs(
            {uuid4(): DogUpdate(None, ("sit",))}, {TRICKS: 1}, Tracking("school", 1)
        )
    assert await view.max_tracking_id("school") is None
    assert await view.get_count(TRICKS) == 0


def test_group_by_originator_keeps_the_order() -> None:
    a, b = Aggregate(), Aggregate()
    a.trigger_event(Aggregate.Event)
    b.trigger_event(Aggregate.Event)
    a.trigger_event(Aggregate.Event)
    events = [e for agg in (b, a) for e in agg.collect_events()]
    # In the order of a recorded sequence: b0, a0, a1, b1, a2.
    b0, b1, a0, a1, a2 = events
    pairs = [
        (event, Tracking("app", n))
        for n, event in enumerate([b0, a0, a1, b1, a2], start=1)
    ]
    groups = group_by_originator(pairs)
    assert list(groups) == [b.id, a.id]
    assert groups[b.id] == [pairs[0], pairs[3]]
    assert groups[a.id] == [pairs[1], pairs[2], pairs[4]]
    assert group_by_originator([]) == {}
