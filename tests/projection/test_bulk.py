"""Projection.process_events(): whole batches at once, and failing batches
split in halves to find the failing event, on every backend.

Batches are formed on SQLite and PostgreSQL only; in memory (no transaction
to roll a failed batch back) every event goes to process_event() alone.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar
from uuid import UUID

import pytest

from asyncsourcing.application import Application
from asyncsourcing.domain import Aggregate
from asyncsourcing.persistence import OperationalError, Tracking
from asyncsourcing.policies import ErrorPolicy
from asyncsourcing.postgres.identifiers import qualified
from asyncsourcing.projection import Projection, ProjectionRunner
from asyncsourcing.projection.batches import bisect_batch
from examples.eventcounters.projection import EventCountersProjection
from examples.eventcounters.views import EventCountersView, POPOEventCounters
from tests.support.backends import Backend
from tests.support.batches import PostgresCountingBatches, SQLiteCountingBatches

N = 200  # Events in the catch-up batch: 100 aggregates, created and updated.
MAX_FAILED_BATCHES = math.ceil(math.log2(N)) + 1


# Views with a command method for many events at once.


class BulkCountersView(EventCountersView):
    @abstractmethod
    async def add_counts(
        self, created: int, subsequent: int, tracking: Tracking
    ) -> None:
        """Add to both counters, recording ``tracking`` (that of the last
        event counted) with the update."""


class POPOBulkCounters(POPOEventCounters, BulkCountersView):
    async def add_counts(
        self, created: int, subsequent: int, tracking: Tracking
    ) -> None:
        async with self.database_lock:
            self.assert_tracking_uniqueness(tracking)
            self.record_tracking(tracking)
            self._created_event_counter += created
            self._subsequent_event_counter += subsequent


class SQLiteBulkCounters(SQLiteCountingBatches, BulkCountersView):
    async def add_counts(
        self, created: int, subsequent: int, tracking: Tracking
    ) -> None:
        statement = (
            f"INSERT INTO {self.counters_table_name} VALUES (?, ?) "
            "ON CONFLICT (counter_name) DO UPDATE SET counter = counter + ?"
        )
        async with self.datastore.transaction(commit=True) as conn:
            await self.record_tracking(conn, tracking)
            for name, n in (
                (self._created_event_counter_name, created),
                (self._subsequent_event_counter_name, subsequent),
            ):
                await conn.execute(statement, (name, n, n))


class PostgresBulkCounters(PostgresCountingBatches, BulkCountersView):
    async def add_counts(
        self, created: int, subsequent: int, tracking: Tracking
    ) -> None:
        table = qualified(self.datastore.schema, self.counters_table_name)
        statement = (
            f"INSERT INTO {table} VALUES ($1, $2) ON CONFLICT (counter_name) "
            f"DO UPDATE SET counter = {table}.counter + EXCLUDED.counter"
        )
        async with self.datastore.transaction(commit=True) as conn:
            await self.record_tracking(conn, tracking)
            await conn.execute(statement, self._created_event_counter_name, created)
            await conn.execute(
                statement, self._subsequent_event_counter_name, subsequent
            )


BULK_VIEWS: dict[str, type[BulkCountersView]] = {
    "popo": POPOBulkCounters,
    "sqlite": SQLiteBulkCounters,
    "postgres": PostgresBulkCounters,
}


class BulkError(Exception):
    pass


class Bulk(Projection[BulkCountersView]):
    """Counts a batch's events with one command, recording the last tracking.

    Fails on the events in :attr:`failing`: a batch holding one after
    counting the events before it (so the batch has written part of its
    updates), an event alone :attr:`alone_failures` times. Records what
    each method was given and whether it raised.
    """

    name = "eventcounters"
    failing: ClassVar[set[int]] = set()
    alone_failures: ClassVar[float] = math.inf
    batch_failures: ClassVar[float] = 0  # Of any batch, failing or not.
    batch_error: ClassVar[type[Exception]] = BulkError
    # The ids given to process_events() and whether it returned.
    batches: ClassVar[list[tuple[list[int], bool]]] = []
    # The id given to process_event() and whether it returned.
    alone: ClassVar[list[tuple[int, bool]]] = []

    async def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        cls = type(self)
        if tracking.notification_id in cls.failing:
            failures = sum(1 for i, ok in cls.alone if i == tracking.notification_id)
            if failures < cls.alone_failures:
                cls.alone.append((tracking.notification_id, False))
                msg = f"event {tracking.notification_id}"
                raise BulkError(msg)
        cls.alone.append((tracking.notification_id, True))
        if isinstance(domain_event, Aggregate.Created):
            await self.view.incr_created_event_counter(tracking)
        else:
            await self.view.incr_subsequent_event_counter(tracking)

    async def process_events(self, events: Sequence[tuple[Any, Tracking]]) -> None:
        cls = type(self)
        ids = [tracking.notification_id for _, tracking in events]
        cut = next((i for i, n in enumerate(ids) if n in cls.failing), len(ids))
        good = events[:cut]
        if good:
            created = sum(isinstance(e, Aggregate.Created) for e, _ in good)
            await self.view.add_counts(created, len(good) - created, good[-1][1])
        failed_batches = sum(1 for _, ok in cls.batches if not ok)
        if len(good) < len(events) or failed_batches < cls.batch_failures:
            cls.batches.append((ids, False))
            msg = f"batch {ids[0]}-{ids[-1]}"
            raise cls.batch_error(msg)
        cls.batches.append((ids, True))


class Runner(ProjectionRunner[Application[UUID], BulkCountersView]):
    """Counts the view transactions that rolled back."""

    rollbacks = 0

    def _rolled_back(self) -> None:
        self.rollbacks += 1


@pytest.fixture(autouse=True)
def fresh_bulk() -> None:
    """Bulk's settings and records are class attributes: the runner makes it."""
    Bulk.failing, Bulk.alone_failures, Bulk.batch_failures = set(), math.inf, 0
    Bulk.batch_error = BulkError
    Bulk.batches, Bulk.alone = [], []
    SQLiteBulkCounters.batches = PostgresBulkCounters.batches = 0


def runner_of(
    backend: Backend,
    error_policy: Any = None,
    projection_class: type[Projection[Any]] = Bulk,
) -> Runner:
    return Runner(
        application_class=Application[UUID],
        projection_class=projection_class,
        view_class=BULK_VIEWS[backend.name],
        env=backend.env,
        error_policy=error_policy,
    )


async def save_before_start(runner: Runner) -> None:
    """N events (odd ids created, even ones updated), recorded before the
    runner starts, so that it catches up in one batch."""
    aggregates = []
    for _ in range(N // 2):
        aggregate = Aggregate()
        aggregate.trigger_event(Aggregate.Event)
        aggregates.append(aggregate)
    recordings = await runner.app.save(*aggregates)
    assert recordings[-1].notification.id == N


def committed() -> list[int]:
    """The ids of the events processed without an error, in order of calls."""
    in_batches = [(ids[0], ids) for ids, ok in Bulk.batches if ok]
    alone = [(i, [i]) for i, ok in Bulk.alone if ok]
    return [i for _, ids in sorted(in_batches + alone) for i in ids]


async def counts(runner: Runner) -> tuple[int, int]:
    view = runner.projection.view
    return (
        await view.get_created_event_counter(),
        await view.get_subsequent_event_counter(),
    )


@pytest.mark.parametrize("projection_class", [Bulk, EventCountersProjection])
async def test_process_events_gets_whole_batches(
    backend: Backend, projection_class: type[Projection[Any]]
) -> None:
    runner = runner_of(backend, projection_class=projection_class)
    await save_before_start(runner)
    async with runner:
        await runner.wait(N, timeout=10)
        assert await counts(runner) == (N // 2, N // 2)
        assert await runner.view.max_tracking_id(runner.app.name) == N
        stats = await runner.statistics()
        assert (stats.events_processed, stats.position, stats.lag) == (N, N, 0)
        if projection_class is EventCountersProjection:
            # The default process_events(): one process_event() per event,
            # in one transaction where the backend batches.
            view_class = BULK_VIEWS[backend.name]
            assert getattr(view_class, "batches", 0) == (backend.name != "popo")
            return
        if backend.name == "popo":
            # Nothing to roll back a failed batch with: one at a time.
            assert Bulk.batches == []
            assert [i for i, _ in Bulk.alone] == list(range(1, N + 1))
        else:
            assert Bulk.batches == [(list(range(1, N + 1)), True)]
            assert Bulk.alone == []
        assert runner.rollbacks == 0

        # A live event comes alone, to process_event().
        recordings = await runner.app.save(Aggregate())
        await runner.wait(recordings[-1].notification.id, timeout=10)
        assert Bulk.alone[-1] == (N + 1, True)
        assert await counts(runner) == (N // 2 + 1, N // 2)


def assert_bisected(backend: Backend, runner: Runner, failing: int) -> None:
    """The failing event was found by splitting the batch: few failed
    batches, each holding it, and it was processed alone."""
    failed = [ids for ids, ok in Bulk.batches if not ok]
    alone = {i for i, _ in Bulk.alone}
    if backend.name == "popo":
        assert failed == []
        assert runner.rollbacks == 0
        return
    assert 1 <= len(failed) <= MAX_FAILED_BATCHES
    assert all(failing in ids for ids in failed)
    assert all(failing not in ids for ids, ok in Bulk.batches if ok)
    assert failing in alone
    assert len(alone) <= 3  # The failing event and neighbours of its last range.
    failed_alone = sum(1 for _, ok in Bulk.alone if not ok)
    assert runner.rollbacks == len(failed) + failed_alone


@pytest.mark.parametrize("failing", [1, N // 2, N])
@pytest.mark.parametrize("policy", ["skip", "park"])
async def test_failing_event_is_found_and_set_aside(
    backend: Backend, policy: str, failing: int
) -> None:
    Bulk.failing = {failing}
    runner = runner_of(backend, policy)
    await save_before_start(runner)
    async with runner:
        await runner.wait(N, timeout=10)
        created = N // 2 - (failing % 2)
        assert await counts(runner) == (created, N - 1 - created)
        assert await runner.view.max_tracking_id(runner.app.name) == N
        # Every other event processed once, in order.
        assert committed() == [i for i in range(1, N + 1) if i != failing]
        assert_bisected(backend, runner, failing)
        assert [ok for i, ok in Bulk.alone if i == failing] == [False]
        stats = await runner.statistics()
        assert (stats.events_processed, stats.position) == (N, N)
        assert (stats.skipped, stats.parked) == ((1, 0) if policy == "skip" else (0, 1))
        assert (stats.retries, stats.errors) == (0, 1)
        parked = await runner.view.parked(runner.app.name)
        assert [p.notification_id for p in parked] == (
            [failing] if policy == "park" else []
        )


@pytest.mark.parametrize("failing", [1, N // 2, N])
async def test_stop_policy_stops_at_the_failing_event(
    backend: Backend, failing: int
) -> None:
    Bulk.failing = {failing}
    runner = runner_of(backend, "stop")
    await save_before_start(runner)
    async with runner:
        with pytest.raises(BulkError, match=f"event {failing}"):
            await runner.run_forever(timeout=10)
        before = failing - 1
        assert await counts(runner) == (before - before // 2, before // 2)
        recorded = await runner.view.max_tracking_id(runner.app.name)
        assert recorded == (before or None)
        assert committed() == list(range(1, failing))
        assert_bisected(backend, runner, failing)
        stats = await runner.statistics()
        assert (stats.events_processed, stats.position) == (before, before or None)
        assert (stats.retries, stats.skipped, stats.parked) == (0, 0, 0)


async def test_retry_processes_the_failing_event_alone(backend: Backend) -> None:
    failing = N // 2 + 1
    Bulk.failing, Bulk.alone_failures = {failing}, 2
    runner = runner_of(backend, ErrorPolicy.retry(initial_delay=0.01, max_delay=0.02))
    await save_before_start(runner)
    async with runner:
        await runner.wait(N, timeout=10)
        assert await counts(runner) == (N // 2, N // 2)
        assert committed() == list(range(1, N + 1))
        assert_bisected(backend, runner, failing)
        # Failed batches are no attempts of the policy: the event alone is.
        assert [ok for i, ok in Bulk.alone if i == failing] == [False, False, True]
        stats = await runner.statistics()
        assert (stats.events_processed, stats.position) == (N, N)
        assert (stats.retries, stats.errors) == (2, 2)


async def test_a_failed_batch_leaves_nothing_and_each_event_is_then_processed_once(
    backend: Backend,
) -> None:
    if backend.name == "popo":
        pytest.skip("in memory, events are not batched")
    # The first batch counts every event, then raises: it is rolled back.
    Bulk.batch_failures = 1
    runner = runner_of(backend)
    await save_before_start(runner)
    async with runner:
        await runner.wait(N, timeout=10)
        assert await counts(runner) == (N // 2, N // 2)
        assert Bulk.batches[0] == (list(range(1, N + 1)), False)
        assert committed() == list(range(1, N + 1))
        assert runner.rollbacks == 1
        stats = await runner.statistics()
        assert (stats.events_processed, stats.position) == (N, N)
        assert (stats.errors, stats.last_error) == (0, None)


async def test_a_connection_error_of_a_batch_is_not_split_on(
    backend: Backend,
) -> None:
    if backend.name == "popo":
        pytest.skip("in memory, events are not batched")
    Bulk.batch_failures, Bulk.batch_error = 1, OperationalError
    runner = runner_of(backend, "skip")  # No reconnecting: it stops.
    await save_before_start(runner)
    async with runner:
        with pytest.raises(OperationalError, match="batch 1-200"):
            await runner.run_forever(timeout=10)
        assert Bulk.batches == [(list(range(1, N + 1)), False)]
        assert Bulk.alone == []
        assert runner.rollbacks == 1
        assert await counts(runner) == (0, 0)
        stats = await runner.statistics()
        assert (stats.events_processed, stats.skipped) == (0, 0)


# The splitting itself, without a database.


class Fake:
    """Items of a batch: ``failing`` ones fail in a batch and alone."""

    def __init__(self, failing: set[int], flaky_batches: int = 0) -> None:
        self.failing = failing
        self.flaky_batches = flaky_batches
        self.done: list[int] = []
        self.failed_batches = 0
        self.alone: list[int] = []

    async def try_batch(self, items: Sequence[int]) -> bool:
        assert len(items) > 1
        if self.failing & set(items) or self.flaky_batches:
            self.flaky_batches = max(0, self.flaky_batches - 1)
            self.failed_batches += 1
            return False
        self.done.extend(items)
        return True

    async def process_alone(self, item: int) -> bool:
        self.alone.append(item)
        self.done.append(item)
        return item in self.failing


@pytest.mark.parametrize("n", [2, 3, 5, 64, 200, 500])
async def test_bisection_finds_any_failing_item_in_log_n_failed_batches(
    n: int,
) -> None:
    for failing in range(n):
        fake = Fake({failing})
        await bisect_batch(range(n), fake.try_batch, fake.process_alone)
        assert fake.done == list(range(n))
        assert failing in fake.alone
        assert len(fake.alone) <= 3
        assert fake.failed_batches <= math.ceil(math.log2(n)) + 1


async def test_bisection_of_200_with_a_failure_at_101() -> None:
    fake = Fake({101})
    tried: list[tuple[int, int, bool]] = []

    async def try_batch(items: Sequence[int]) -> bool:
        ok = await fake.try_batch(items)
        tried.append((items[0], len(items), ok))
        return ok

    await bisect_batch(range(200), try_batch, fake.process_alone)
    assert tried == [
        (0, 200, False),
        (0, 100, True),
        (100, 50, False),
        (100, 25, False),
        (100, 12, False),
        (100, 6, False),
        (100, 3, False),
        (102, 98, True),  # The rest, batched again.
    ]
    assert fake.alone == [100, 101]


async def test_bisection_with_many_failing_items_and_a_flaky_batch() -> None:
    failing = {0, 7, 8, 99}
    fake = Fake(failing, flaky_batches=1)
    await bisect_batch(range(100), fake.try_batch, fake.process_alone)
    assert fake.done == list(range(100))
    assert failing <= set(fake.alone)
    assert len(fake.alone) < 20


async def test_bisection_stops_when_processing_alone_raises() -> None:
    fake = Fake({50})

    async def stop(item: int) -> bool:
        if await fake.process_alone(item):
            raise BulkError
        return False

    with pytest.raises(BulkError):
        await bisect_batch(range(100), fake.try_batch, stop)
    assert fake.done == list(range(51))
