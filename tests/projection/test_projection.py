"""Projection runners: processing, resuming, errors, stopping and cancellation."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

import pytest

from asyncsourcing.application import Application
from asyncsourcing.domain import Aggregate
from asyncsourcing.persistence import StoredEvent, Tracking
from asyncsourcing.projection import (
    ApplicationSubscription,
    EventSourcedProjectionRunner,
    Projection,
    ProjectionRunner,
    ProjectionStoppedError,
)
from asyncsourcing.utils import TopicError, get_topic
from examples.eventcounters.projection import (
    EventCountersProjection,
    SpannerThrown,
    SpannerThrownError,
)
from examples.eventcounters.views import POPOEventCounters
from tests.support.projections import Counted


def new_aggregate(subsequent_events: int = 0) -> Aggregate:
    aggregate = Aggregate()
    for _ in range(subsequent_events):
        aggregate.trigger_event(Aggregate.Event)
    return aggregate


def runner_of(view_class: type[Any] = POPOEventCounters) -> ProjectionRunner[Any, Any]:
    return ProjectionRunner(
        application_class=Application[UUID],
        projection_class=EventCountersProjection,
        view_class=view_class,
    )


def background_tasks() -> set[asyncio.Task[Any]]:
    current = asyncio.current_task()
    return {t for t in asyncio.all_tasks() if t is not current and not t.done()}


async def test_runner_processes_recorded_and_new_events() -> None:
    async with runner_of() as runner:
        await runner.app.save(new_aggregate(2))
        recordings = await runner.app.save(new_aggregate(1))
        await runner.wait(recordings[-1].notification.id)
        view = runner.projection.view
        assert await view.get_created_event_counter() == 2
        assert await view.get_subsequent_event_counter() == 3
        assert await view.max_tracking_id(runner.app.name) == 5


async def test_run_forever_returns_at_timeout() -> None:
    async with runner_of() as runner:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await runner.run_forever(timeout=0.1)
        assert 0.09 <= loop.time() - started < 1
        assert runner.is_running


async def test_run_forever_reraises_the_projection_error_once() -> None:
    async with runner_of() as runner:
        recordings = await runner.app.save(_spanner())
        with pytest.raises(SpannerThrownError):
            await runner.run_forever(timeout=5)
        assert not runner.is_running
        with pytest.raises(TimeoutError):
            await runner.projection.view.wait(
                runner.app.name, recordings[-1].notification.id, timeout=0.1
            )


def _spanner() -> Aggregate:
    aggregate = Aggregate()
    aggregate.trigger_event(SpannerThrown)
    return aggregate


async def test_runner_wait_raises_the_projection_error() -> None:
    async with runner_of() as runner:
        recordings = await runner.app.save(_spanner())
        with pytest.raises(ProjectionStoppedError) as stopped:
            await runner.wait(recordings[-1].notification.id, timeout=5)
        assert isinstance(stopped.value.__cause__, SpannerThrownError)


async def test_unconsumed_error_is_raised_on_exit() -> None:
    async def save_and_leave() -> None:
        async with runner_of() as runner:
            await runner.app.save(_spanner())
            await asyncio.sleep(0.1)

    with pytest.raises(SpannerThrownError):
        await save_and_leave()


async def test_stop_ends_run_forever_and_wait() -> None:
    async with runner_of() as runner:
        forever = asyncio.create_task(runner.run_forever())
        waiting = asyncio.create_task(runner.wait(1000, timeout=5))
        await asyncio.sleep(0.05)
        runner.stop()
        await asyncio.wait_for(forever, 1)
        await asyncio.wait_for(waiting, 1)  # Returns: stopped on purpose.
        assert not runner.is_running


async def test_run_forever_returns_after_the_event_in_hand_after_stop() -> None:
    class Slow(EventCountersProjection):
        async def process_event(self, domain_event: Any, tracking: Tracking) -> None:
            runner.stop()
            await asyncio.sleep(0.05)
            await super().process_event(domain_event, tracking)

    runner: ProjectionRunner[Any, Any] = ProjectionRunner(
        application_class=Application[UUID],
        projection_class=Slow,
        view_class=POPOEventCounters,
    )
    async with runner:
        recordings = await runner.app.save(new_aggregate())
        await runner.run_forever()
        position = recordings[-1].notification.id
        assert await runner.projection.view.max_tracking_id("Application") == position
        assert not runner.is_running


async def test_exit_leaves_no_tasks_behind() -> None:
    before = background_tasks()
    async with runner_of() as runner:
        await runner.app.save(new_aggregate(1))
        await runner.run_forever(timeout=0.05)
    assert background_tasks() - before == set()


async def test_cancelling_run_forever_leaves_no_tasks_behind() -> None:
    before = background_tasks()
    runner = runner_of()
    forever = asyncio.create_task(runner.run_forever())
    await asyncio.sleep(0.05)
    assert runner.is_running
    forever.cancel()
    with pytest.raises(asyncio.CancelledError):
        await forever
    assert not runner.is_running
    assert background_tasks() - before == set()


async def test_cancelling_inside_the_context_leaves_no_tasks_behind() -> None:
    before = background_tasks()
    entered = asyncio.Event()

    async def service() -> None:
        async with runner_of():
            entered.set()
            await asyncio.sleep(10)

    task = asyncio.create_task(service())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert background_tasks() - before == set()


def test_run_forever_as_a_script() -> None:
    runner = runner_of()

    async def script() -> None:
        await runner.run_forever(timeout=0.05)
        assert background_tasks() == set()

    asyncio.run(script())
    assert not runner.is_running


async def test_topics_are_filtered_by_the_recorder() -> None:
    class CreatedOnly(Projection[POPOEventCounters]):
        topics = (get_topic(Aggregate.Created),)
        seen: list[int] = []  # noqa: RUF012

        async def process_event(self, domain_event: Any, tracking: Tracking) -> None:
            self.seen.append(tracking.notification_id)
            await self.view.incr_created_event_counter(tracking)

    async with ProjectionRunner(
        application_class=Application[UUID],
        projection_class=CreatedOnly,
        view_class=POPOEventCounters,
    ) as runner:
        await runner.app.save(new_aggregate(2))
        recordings = await runner.app.save(new_aggregate(2))
        # The last event is not one of the topics: wait for the created one.
        await runner.wait(recordings[0].notification.id)
        assert CreatedOnly.seen == [1, 4]


async def test_unresolvable_topic_names_the_notification() -> None:
    app = Application[UUID]()
    await app.recorder.insert_events(
        [StoredEvent(UUID(int=1), 1, "no.such.module:Event", b"{}")]
    )
    async with ApplicationSubscription(app) as subscription:
        with pytest.raises(
            TopicError, match=r"'no\.such\.module:Event'.*notification 1"
        ):
            await anext(subscription)


async def test_event_sourced_projection_records_events_with_tracking() -> None:
    async with EventSourcedProjectionRunner(
        application_class=Application[UUID], projection_class=Counted
    ) as runner:
        await runner.app.save(new_aggregate(1))
        recordings = await runner.app.save(new_aggregate(0))
        await runner.wait(recordings[-1].notification.id)
        recorder = runner.projection.recorder
        assert await recorder.max_tracking_id(runner.app.name) == 3
        notifications = await recorder.select_notifications(None, 10)
        assert len(notifications) == 2
