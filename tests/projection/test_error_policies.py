"""Error policies: stop, retry, skip and park, on every backend, with batching."""

from __future__ import annotations

import logging
from functools import singledispatchmethod
from pathlib import Path
from typing import Any, ClassVar
from uuid import UUID, uuid4

import pytest

from asyncsourcing.application import Application
from asyncsourcing.domain import Aggregate
from asyncsourcing.persistence import (
    IntegrityError,
    ParkedEvent,
    StoredEvent,
    Tracking,
    TrackingRecorder,
    parked_table_name,
)
from asyncsourcing.policies import Backoff, ErrorPolicy, OnError, PolicyName
from asyncsourcing.projection import (
    EventSourcedProjectionRunner,
    ProjectionRunner,
)
from asyncsourcing.utils import TopicError, get_topic
from examples.eventcounters.projection import (
    EventCountersProjection,
    SpannerThrown,
    SpannerThrownError,
)
from examples.eventcounters.views import POPOEventCounters
from tests.support.backends import Backend, aggregate_with, backend_env
from tests.support.projections import Copies


async def save_before_start(runner: ProjectionRunner[Any, Any]) -> tuple[int, int]:
    """10 good aggregates, a spanner, 10 more: recorded before the runner
    starts, so that it catches up in a batch. Returns (spanner id, last id).
    """
    good = [aggregate_with(Aggregate.Event) for _ in range(10)]
    await runner.app.save(*good)  # ids 1-20
    recordings = await runner.app.save(aggregate_with(SpannerThrown))  # 21, 22
    spanner = recordings[-1].notification.id
    recordings = await runner.app.save(*(aggregate_with() for _ in range(10)))
    return spanner, recordings[-1].notification.id


def failed_batches(backend: Backend) -> int:
    """How many failed batches hold the spanner of :func:`save_before_start`.

    Where events are batched, the batch of 32 events is split in halves to
    find the spanner (22): the batches 1-32, 17-24 and 21-22 fail.
    """
    return 0 if backend.name == "popo" else 3


@pytest.mark.parametrize("policy", ["skip", "park"])
async def test_failing_event_in_a_catch_up_batch(
    backend: Backend, policy: str, caplog: pytest.LogCaptureFixture
) -> None:
    runner = backend.runner(error_policy=policy)
    spanner, last = await save_before_start(runner)
    assert (spanner, last) == (22, 32)
    caplog.set_level(logging.ERROR, logger="asyncsourcing.projection")
    async with runner:
        view = runner.projection.view
        await runner.wait(last, timeout=10)
        # Every event before and after the failing one counted exactly once.
        assert await view.get_created_event_counter() == 21
        assert await view.get_subsequent_event_counter() == 10
        assert await view.max_tracking_id(runner.app.name) == last
        if backend.name != "popo":
            # Split in halves: 1-32 failed, 1-16 committed, 17-24 failed,
            # 17-20 committed, 21-22 failed (not counted: one tracking), 21
            # and 22 alone, then the rest, 23-32, batched again.
            assert backend.view_class.batches == 5

        stats = await runner.statistics()
        assert stats.events_processed == 32
        assert stats.position == last
        assert stats.lag == 0
        assert (stats.skipped, stats.parked) == ((1, 0) if policy == "skip" else (0, 1))
        assert stats.retries == 0
        assert stats.last_error is not None
        assert "SpannerThrownError" in stats.last_error
        assert stats.is_running

        parked = await view.parked(runner.app.name)
        if policy == "skip":
            assert parked == []
        else:
            [notification] = await runner.app.recorder.select_notifications(spanner, 1)
            assert len(parked) == 1
            assert isinstance(parked[0], ParkedEvent)
            assert parked[0].application_name == runner.app.name
            assert parked[0].notification_id == spanner
            assert parked[0].topic == get_topic(SpannerThrown)
            assert parked[0].state == notification.state
            assert "SpannerThrownError: This is a deliberate bug" in parked[0].error
            assert "Traceback" in parked[0].error
            assert parked[0].parked_at.tzinfo is not None

        # Live: a failing event is dealt with the same way; later ones go on.
        await runner.app.save(aggregate_with(SpannerThrown))  # 33, 34
        recordings = await runner.app.save(aggregate_with(Aggregate.Event))
        await runner.wait(recordings[-1].notification.id, timeout=10)
        assert await view.get_created_event_counter() == 23
        assert await view.get_subsequent_event_counter() == 11
        stats = await runner.statistics()
        assert stats.skipped + stats.parked == 2
        assert stats.events_processed == 36
        if policy == "park":
            parked = await view.parked(runner.app.name)
            assert [p.notification_id for p in parked] == [spanner, 34]
        assert await view.parked("other") == []

    verb = "skipped" if policy == "skip" else "parked"
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    logged = [m for m in messages if f"{verb} notification" in m]
    assert len(logged) == 2
    assert f"{verb} notification {spanner} " in logged[0]
    assert get_topic(SpannerThrown) in logged[0]
    assert "This is a deliberate bug" in logged[0]


@pytest.mark.parametrize("policy", ["skip", "park"])
async def test_a_new_runner_resumes_after_the_dealt_with_event(
    backend: Backend, policy: str
) -> None:
    if backend.name == "popo":
        pytest.skip("an in-memory view does not outlive its runner")
    runner = backend.runner(error_policy=policy)
    _, last = await save_before_start(runner)
    await runner.run_forever(timeout=0.5)
    # With the default policy, it would stop at the spanner: it is not read again.
    runner = backend.runner()
    async with runner:
        recordings = await runner.app.save(aggregate_with())
        await runner.wait(recordings[-1].notification.id, timeout=10)
        view = runner.projection.view
        assert await view.get_created_event_counter() == 22
        assert await view.get_subsequent_event_counter() == 10
        stats = await runner.statistics()
        assert stats.events_processed == 1
        assert stats.last_error is None
        assert len(await view.parked(runner.app.name)) == (policy == "park")
    assert last == 32


async def test_stop_policy_stops_at_the_failing_event(backend: Backend) -> None:
    runner = backend.runner(error_policy="stop")
    spanner, last = await save_before_start(runner)
    async with runner:
        with pytest.raises(SpannerThrownError):
            await runner.run_forever(timeout=10)
        view = runner.projection.view
        assert await view.max_tracking_id(runner.app.name) == spanner - 1
        assert await view.get_created_event_counter() == 11
        assert await view.get_subsequent_event_counter() == 10
        stats = await runner.statistics()
        assert not stats.is_running
        assert stats.position == spanner - 1
        assert stats.lag == last - (spanner - 1)
        assert stats.events_processed == spanner - 1
        assert (stats.retries, stats.skipped, stats.parked) == (0, 0, 0)
        assert stats.last_error is not None
        assert "deliberate bug" in stats.last_error


class Flaky(EventCountersProjection):
    """Fails on spanner events ``failures`` times, then counts them as events."""

    name = "eventcounters"
    failures = 0
    calls: ClassVar[list[int]] = []

    @singledispatchmethod
    async def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        await super().process_event(domain_event, tracking)

    @process_event.register
    async def spanner(self, _: SpannerThrown, tracking: Tracking) -> None:
        type(self).calls.append(tracking.notification_id)
        if len(type(self).calls) <= type(self).failures:
            msg = f"flaky {len(type(self).calls)}"
            raise SpannerThrownError(msg)
        await self.view.incr_subsequent_event_counter(tracking)


def fast_retry(**kwargs: Any) -> ErrorPolicy:
    return ErrorPolicy.retry(initial_delay=0.01, max_delay=0.05, **kwargs)


async def test_retry_processes_the_event_once_it_succeeds(backend: Backend) -> None:
    # Three failures once the spanner is alone: failed batches are no retries.
    Flaky.failures, Flaky.calls = 3 + failed_batches(backend), []
    runner = backend.runner(fast_retry(max_attempts=5), projection_class=Flaky)
    spanner, last = await save_before_start(runner)
    async with runner:
        await runner.wait(last, timeout=10)
        view = runner.projection.view
        assert Flaky.calls == [spanner] * (Flaky.failures + 1)
        assert await view.get_created_event_counter() == 21
        assert await view.get_subsequent_event_counter() == 11  # Spanner counted.
        stats = await runner.statistics()
        assert stats.retries == 3
        assert (stats.skipped, stats.parked) == (0, 0)
        assert stats.events_processed == last
        assert stats.last_error == repr(SpannerThrownError(f"flaky {Flaky.failures}"))
        assert stats.is_running


@pytest.mark.parametrize("then", [OnError.STOP, OnError.SKIP, OnError.PARK])
async def test_retry_gives_up_after_max_attempts(
    backend: Backend, then: OnError
) -> None:
    Flaky.failures, Flaky.calls = 100, []
    runner = backend.runner(
        fast_retry(max_attempts=3, then=then), projection_class=Flaky
    )
    spanner, last = await save_before_start(runner)
    # Where events are batched, the failed batches called the projection too.
    calls = 3 + failed_batches(backend)
    async with runner:
        view = runner.projection.view
        if then is OnError.STOP:
            with pytest.raises(SpannerThrownError, match=f"flaky {calls}"):
                await runner.run_forever(timeout=10)
            assert await view.max_tracking_id(runner.app.name) == spanner - 1
        else:
            await runner.wait(last, timeout=10)
            assert await view.get_created_event_counter() == 21
            assert await view.get_subsequent_event_counter() == 10
            parked = await view.parked(runner.app.name)
            assert len(parked) == (then is OnError.PARK)
        assert Flaky.calls == [spanner] * calls
        stats = await runner.statistics()
        assert stats.retries == 2
        assert stats.skipped == (then is OnError.SKIP)
        assert stats.parked == (then is OnError.PARK)


async def test_retry_gives_up_after_max_total_time() -> None:
    Flaky.failures, Flaky.calls = 1000, []
    policy = ErrorPolicy.retry(
        initial_delay=0.01, max_delay=0.02, max_attempts=None, max_total_time=0.3
    )
    runner = Backend("popo", {}).runner(policy, projection_class=Flaky)
    await runner.app.save(aggregate_with(SpannerThrown))
    async with runner:
        with pytest.raises(SpannerThrownError):
            await runner.run_forever(timeout=5)
    # About 0.3 s of attempts, 0.01 to 0.02 s apart.
    assert 10 <= len(Flaky.calls) <= 35


async def test_stop_while_retrying_ends_quietly() -> None:
    Flaky.failures, Flaky.calls = 1000, []
    policy = ErrorPolicy.retry(initial_delay=10, max_delay=10)
    runner = Backend("popo", {}).runner(policy, projection_class=Flaky)
    await runner.app.save(aggregate_with(SpannerThrown))
    async with runner:
        view = runner.projection.view
        await view.wait(runner.app.name, 1, timeout=5)  # The created event.
        runner.stop()
        await runner.run_forever(timeout=5)  # No error: stopped on purpose.
        assert Flaky.calls == [2]
        assert await view.max_tracking_id(runner.app.name) == 1


async def test_policy_from_the_projection_class_and_runner_override() -> None:
    class Skipping(EventCountersProjection):
        name = "eventcounters"
        error_policy = "skip"

    runner = Backend("popo", {}).runner(projection_class=Skipping)
    assert runner.error_policy == ErrorPolicy(OnError.SKIP)
    assert runner.error_policy.reconnect_backoff is None
    runner = Backend("popo", {}).runner("park", projection_class=Skipping)
    assert runner.error_policy.action is OnError.PARK
    assert Backend("popo", {}).runner().error_policy == ErrorPolicy()
    retry = Backend("popo", {}).runner("retry").error_policy
    assert retry.action is OnError.RETRY
    assert retry.reconnect_backoff is not None
    with pytest.raises(ValueError, match="Unknown error policy 'ignore'"):
        Backend("popo", {}).runner("ignore")


def test_backoff_delays() -> None:
    backoff = Backoff(initial_delay=0.1, max_delay=0.5, max_attempts=5)
    assert [backoff.delay(n, 0) for n in range(1, 6)] == [0.1, 0.2, 0.4, 0.5, None]
    timed = Backoff(initial_delay=1, max_delay=4, max_attempts=None, max_total_time=5)
    assert timed.delay(1, 0) == 1
    assert timed.delay(3, 3.5) == 1.5  # Not past the total time.
    assert timed.delay(3, 5) is None
    assert Backoff(max_attempts=None).delay(10_000, 1e9) == 5.0
    with pytest.raises(ValueError, match="initial_delay"):
        Backoff(initial_delay=2, max_delay=1)
    with pytest.raises(ValueError, match="then"):
        ErrorPolicy(OnError.RETRY, then=OnError.RETRY)


def test_parked_table_names() -> None:
    assert parked_table_name("tracking") == "parked"
    assert parked_table_name("eventcounters_tracking") == "eventcounters_parked"
    assert parked_table_name("positions") == "positions_parked"


async def test_park_is_atomic_with_tracking(backend: Backend) -> None:
    runner = backend.runner()
    view = runner.view
    try:
        await view.create_table()
        await view.park(Tracking("app", 5), "a:B", b"\x00state", "Boom")
        assert await view.max_tracking_id("app") == 5
        with pytest.raises(IntegrityError):
            await view.park(Tracking("app", 5), "a:C", b"", "Again")
        [parked] = await view.parked("app")
        assert (parked.notification_id, parked.topic, parked.state, parked.error) == (
            5,
            "a:B",
            b"\x00state",
            "Boom",
        )
    finally:
        await runner.aclose()


class NoDeadLetters(POPOEventCounters):
    """A view of a backend that cannot park events."""

    park = TrackingRecorder.park
    parked = TrackingRecorder.parked


async def test_parking_on_a_view_that_cannot_park_stops_the_runner() -> None:
    runner = Backend("popo", {}).runner("park", view_class=NoDeadLetters)
    await runner.app.save(aggregate_with(SpannerThrown))
    async with runner:
        with pytest.raises(NotImplementedError, match="cannot park events"):
            await runner.run_forever(timeout=5)
        assert await runner.view.max_tracking_id(runner.app.name) == 1


# Event-sourced projections.


ES_BACKENDS = ["popo", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=ES_BACKENDS)
def es_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    env = backend_env(request.param, request, tmp_path)
    if request.param == "sqlite":
        env["COPIES_SQLITE_DBNAME"] = str(tmp_path / "copies.sqlite")
    return env


@pytest.mark.parametrize("policy", ["skip", "park", "stop"])
async def test_event_sourced_projection_policies(
    es_env: dict[str, str], policy: PolicyName
) -> None:
    async with EventSourcedProjectionRunner(
        application_class=Application[UUID],
        projection_class=Copies,
        env=es_env,
        error_policy=policy,
    ) as runner:
        await runner.app.save(aggregate_with(Aggregate.Event))  # 1, 2
        await runner.app.save(aggregate_with(SpannerThrown))  # 3, 4
        recordings = await runner.app.save(aggregate_with())  # 5
        last = recordings[-1].notification.id
        recorder = runner.projection.recorder
        if policy == "stop":
            with pytest.raises(SpannerThrownError):
                await runner.run_forever(timeout=10)
            assert await recorder.max_tracking_id(runner.app.name) == 3
            assert len(await recorder.select_notifications(None, 10)) == 2
            return
        await runner.wait(last, timeout=10)
        assert await recorder.max_tracking_id(runner.app.name) == last
        # The copies of the three created aggregates, none of the spanner.
        assert len(await recorder.select_notifications(None, 10)) == 3
        stats = await runner.statistics()
        assert stats.events_processed == 4  # Created events and the spanner.
        assert (stats.skipped, stats.parked) == ((1, 0) if policy == "skip" else (0, 1))
        parked = await recorder.parked(runner.app.name)
        assert [p.notification_id for p in parked] == ([4] if policy == "park" else [])


@pytest.mark.parametrize("policy", ["skip", "park"])
async def test_many_failing_events_in_one_batch(backend: Backend, policy: str) -> None:
    runner = backend.runner(error_policy=policy)
    aggregates = [
        aggregate_with(SpannerThrown if n % 2 else Aggregate.Event) for n in range(300)
    ]
    recordings = await runner.app.save(*aggregates)  # 600 events, 150 failing.
    last = recordings[-1].notification.id
    async with runner:
        await runner.wait(last, timeout=30)
        view = runner.projection.view
        assert await view.get_created_event_counter() == 300
        assert await view.get_subsequent_event_counter() == 150
        stats = await runner.statistics()
        assert stats.events_processed == 600
        assert stats.skipped + stats.parked == 150
        parked = await view.parked(runner.app.name)
        assert len(parked) == (150 if policy == "park" else 0)


class AllTopics(EventCountersProjection):
    name = "eventcounters"
    topics = ()


@pytest.mark.parametrize("policy", ["stop", "skip", "park"])
async def test_undecodable_notifications_follow_the_policy(
    backend: Backend, policy: str
) -> None:
    runner = backend.runner(error_policy=policy, projection_class=AllTopics)
    await runner.app.save(aggregate_with())
    await runner.app.recorder.insert_events(
        [StoredEvent(uuid4(), 1, "no.such.module:Event", b"{}")]
    )
    recordings = await runner.app.save(aggregate_with())
    async with runner:
        view = runner.projection.view
        if policy == "stop":
            with pytest.raises(TopicError, match=r"no\.such\.module.*notification 2"):
                await runner.run_forever(timeout=10)
            assert await view.max_tracking_id(runner.app.name) == 1
            return
        await runner.wait(recordings[-1].notification.id, timeout=10)
        assert await view.get_created_event_counter() == 2
        parked = await view.parked(runner.app.name)
        if policy == "park":
            assert [(p.notification_id, p.topic, p.state) for p in parked] == [
                (2, "no.such.module:Event", b"{}")
            ]
            assert "TopicError" in parked[0].error
