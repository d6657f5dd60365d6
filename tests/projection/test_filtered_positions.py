"""Waiting for an event that the projection's topics filter out.

A projection with ``topics`` never sees the other events: the subscription
filters them in the database query. Its view is nonetheless up to date with
them, so ``wait()`` for their positions returns: when the runner has caught
up, it records the position it has read up to, events filtered out
included, in one small transaction of its own (fenced by its lease, like
every view transaction). A long run of such events costs few writes: the
runner records at most one such position every
:attr:`~asyncsourcing.projection.ProjectionRunner.filtered_tracking_interval`
seconds. And such a position is never recorded past an event the projection
has not processed yet.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, ClassVar
from uuid import UUID

import pytest

from asyncsourcing.application import Application
from asyncsourcing.domain import Aggregate
from asyncsourcing.persistence import Tracking
from asyncsourcing.projection import EventSourcedProjectionRunner, ProjectionRunner
from asyncsourcing.utils import get_topic
from examples.dogschool.application import DogSchool
from examples.dogschool.projections import DogCounters
from examples.eventcounters.postgres import PostgresEventCounters
from examples.eventcounters.projection import EventCountersProjection
from examples.eventcounters.sqlite import SQLiteEventCounters
from examples.eventcounters.views import POPOEventCounters
from tests.support.backends import BACKENDS, Backend, backend_env
from tests.support.runners import running

Runner = ProjectionRunner[Application[UUID], Any]


class Noted(Aggregate.Event):
    """Not one of the event counters' topics: their projection never sees it."""


class _CountsTrackingWrites:
    """Counts the tracking positions the view is asked to record."""

    writes: ClassVar[int] = 0

    async def _insert_tracking(self, conn: Any, tracking: Tracking) -> None:
        type(self).writes += 1
        await super()._insert_tracking(conn, tracking)  # type: ignore[misc]


class SQLiteCountingWrites(_CountsTrackingWrites, SQLiteEventCounters):
    writes = 0


class PostgresCountingWrites(_CountsTrackingWrites, PostgresEventCounters):
    writes = 0


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    SQLiteCountingWrites.writes = PostgresCountingWrites.writes = 0
    views = {
        "popo": POPOEventCounters,
        "sqlite": SQLiteCountingWrites,
        "postgres": PostgresCountingWrites,
    }
    env = backend_env(request.param, request, tmp_path)
    return Backend(request.param, env, views[request.param])


def noted() -> Aggregate:
    """An aggregate with a created event (counted) and a noted one (filtered out)."""
    aggregate = Aggregate()
    aggregate.trigger_event(Noted)
    return aggregate


async def test_waiting_for_a_filtered_out_event_returns(backend: Backend) -> None:
    async with backend.runner() as runner:
        recordings = await runner.app.save(noted())
        created, filtered = (r.notification.id for r in recordings)
        # The view is up to date with the noted event, which it does not
        # count: waiting for it returns at once, not after the timeout.
        await runner.wait(filtered, timeout=2)
        await runner.view.wait(runner.app_name, filtered, timeout=2)
        assert await runner.view.get_created_event_counter() == 1
        assert await runner.view.max_tracking_id(runner.app_name) == filtered > created


async def test_a_runner_resumes_after_the_filtered_out_events(
    backend: Backend,
) -> None:
    if backend.name == "popo":
        pytest.skip("an in-memory view does not outlive its runner")
    async with backend.runner() as runner:
        recordings = await runner.app.save(noted(), noted())
        await runner.wait(recordings[-1].notification.id, timeout=2)
    async with backend.runner() as runner:
        assert (await runner.statistics()).lag == 0
        recordings = await runner.app.save(noted())
        await runner.wait(recordings[-1].notification.id, timeout=2)
        assert await runner.view.get_created_event_counter() == 3


async def test_the_standby_view_wakes_up_too(backend: Backend) -> None:
    if backend.name == "popo":
        pytest.skip("an in-memory view has one runner")
    async with running(backend.runner(), backend.runner()) as (leader, standby):
        assert [(await r.statistics()).role for r in (leader, standby)] == [
            "leader",
            "standby",
        ]
        # Saved by the standby's application, recorded by the leader: the
        # standby's view wakes up to the position of the filtered event.
        recordings = await standby.app.save(noted())
        filtered = recordings[-1].notification.id
        await standby.wait(filtered, timeout=5)
        await standby.view.wait(standby.app_name, filtered, timeout=5)
        assert (await standby.statistics()).events_processed == 0
        assert (await leader.statistics()).events_processed == 1


async def test_a_fenced_leader_does_not_record_a_filtered_out_position(
    backend: Backend,
) -> None:
    if backend.name == "popo":
        pytest.skip("an in-memory view has one runner")
    # Without the fast takeover, the intruder's lease below holds until it
    # is released: nobody may record anything meanwhile.
    leader = backend.runner(LEASE_FAST_TAKEOVER="false")
    standby = backend.runner(LEASE_FAST_TAKEOVER="false")
    async with running(leader, standby):
        aggregate = Aggregate()
        recordings = await leader.app.save(aggregate)
        created = recordings[-1].notification.id
        await leader.wait(created, timeout=5)
        lease = leader.lease
        assert lease is not None
        leases = leader.view.leases
        app_name, projection_name = lease.application_name, lease.projection_name

        # An intruder takes the lease over, as if the leader had paused
        # past its expiry. The leader's write of the filtered-out event's
        # position is refused, like every view transaction of it.
        await leases.release(app_name, projection_name, lease.owner)
        assert await leases.acquire(app_name, projection_name, "intruder", 60)
        aggregate.trigger_event(Noted)
        recordings = await leader.app.save(aggregate)
        filtered = recordings[-1].notification.id
        with pytest.raises(TimeoutError):
            await standby.view.wait(standby.app_name, filtered, timeout=0.5)
        assert await leader.view.max_tracking_id(app_name) == created
        assert leader.role == "standby"

        # Once the intruder has gone, whoever leads records it.
        await leases.release(app_name, projection_name, "intruder")
        await standby.wait(filtered, timeout=5)
        await leader.wait(filtered, timeout=5)


async def test_a_long_run_of_filtered_out_events_costs_few_writes(
    backend: Backend,
) -> None:
    if backend.name == "popo":
        pytest.skip("counted in the views that write to a database")
    async with backend.runner() as runner:
        aggregate = Aggregate()
        recordings = await runner.app.save(aggregate)
        await runner.wait(recordings[-1].notification.id, timeout=5)
        assert backend.view_class.writes == 1  # The counted event.

        # 60 noted events, saved one at a time, each waking the runner.
        loop = asyncio.get_running_loop()
        started = loop.time()
        for _ in range(60):
            aggregate.trigger_event(Noted)
            recordings = await runner.app.save(aggregate)
        await runner.wait(recordings[-1].notification.id, timeout=5)
        elapsed = loop.time() - started

        # At most one write per interval, and one more at the end.
        interval = runner.filtered_tracking_interval
        filtered_writes = backend.view_class.writes - 1
        assert 1 <= filtered_writes <= elapsed / interval + 2
        assert await runner.view.get_created_event_counter() == 1
        assert await runner.view.get_subsequent_event_counter() == 0


async def test_never_recorded_past_an_event_not_processed_yet(
    backend: Backend,
) -> None:
    processing = asyncio.Event()
    release = asyncio.Event()

    class Slow(EventCountersProjection):
        async def process_event(self, domain_event: Any, tracking: Tracking) -> None:
            processing.set()
            await release.wait()
            await super().process_event(domain_event, tracking)

    runner = ProjectionRunner(
        application_class=Application[UUID],
        projection_class=Slow,
        view_class=backend.view_class,
        env=backend.env,
    )
    async with runner:
        recordings = await runner.app.save(noted())
        created, filtered = (r.notification.id for r in recordings)
        await asyncio.wait_for(processing.wait(), timeout=5)
        # The created event is being processed: the noted one, after it,
        # must not count as processed yet.
        with pytest.raises(TimeoutError):
            await runner.wait(created, timeout=0.3)
        with pytest.raises(TimeoutError):
            await runner.wait(filtered, timeout=0.01)
        release.set()
        await runner.wait(filtered, timeout=5)
        assert await runner.view.get_created_event_counter() == 1


async def test_an_event_sourced_projection_records_the_filtered_positions(
    backend: Backend,
) -> None:
    env = dict(backend.env)
    if backend.name == "sqlite":
        view_db = Path(env["SQLITE_DBNAME"]).with_name("counters.sqlite")
        env["DOGCOUNTERS_SQLITE_DBNAME"] = str(view_db)
    async with EventSourcedProjectionRunner(
        application_class=DogSchool, projection_class=DogCounters, env=env
    ) as runner:
        dog_id, _ = await runner.app.register_dog("Fido")
        await runner.app.add_trick(dog_id, "roll over")
        # A dog school event that the counters' topics filter out.
        recordings = await runner.app.save(noted())
        filtered = recordings[-1].notification.id
        await runner.wait(filtered, timeout=2)
        recorder = runner.projection.recorder
        assert await recorder.max_tracking_id(runner.app_name) == filtered
        assert await runner.projection.get_count("tricks") == 1


async def test_a_subscription_with_topics_tells_how_far_it_has_read(
    backend: Backend,
) -> None:
    """What the runner builds on: ``on_caught_up`` of a subscription."""
    async with Application[UUID](env=backend.env) as app:
        aggregate = Aggregate()
        aggregate.trigger_event(Noted)
        await app.save(aggregate)  # 1: created, 2: noted.

        read_up_to: list[int] = []
        is_caught_up = asyncio.Event()

        async def caught_up(position: int) -> None:
            read_up_to.append(position)
            is_caught_up.set()

        subscription = app.recorder.subscribe(topics=[get_topic(Aggregate.Created)])
        subscription.on_caught_up = caught_up
        async with subscription:
            assert (await anext(subscription)).id == 1
            assert read_up_to == []  # The caller has not dealt with 1 yet.
            # Asked for the next one, the subscription finds none of its
            # topics: it has read up to the noted event, and waits for news.
            following = asyncio.create_task(anext(subscription))
            await asyncio.wait_for(is_caught_up.wait(), 5)
            assert read_up_to == [2]
            await app.save(Aggregate())  # 3: created.
            assert (await asyncio.wait_for(following, 5)).id == 3
