"""The tutorial's event counters view on SQLite, alone and under a projection."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from asyncsourcing.application import Application
from asyncsourcing.domain import Aggregate
from asyncsourcing.persistence import (
    InfrastructureFactory,
    IntegrityError,
    Tracking,
    TrackingRecorder,
)
from asyncsourcing.projection import ProjectionRunner
from asyncsourcing.sqlite import SQLiteDatastore, SQLiteFactory
from asyncsourcing.utils import Environment
from examples.eventcounters.__main__ import main
from examples.eventcounters.projection import (
    EventCountersProjection,
    SpannerThrown,
    SpannerThrownError,
)
from examples.eventcounters.sqlite import SQLiteEventCounters
from examples.eventcounters.views import EventCountersView


@pytest.fixture(params=["file", "memory"])
def db_name(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return str(tmp_path / "counters.sqlite") if request.param == "file" else ":memory:"


@pytest.fixture
async def factory(db_name: str) -> AsyncIterator[SQLiteFactory]:
    env = {"PERSISTENCE_MODULE": "asyncsourcing.sqlite", "SQLITE_DBNAME": db_name}
    factory = InfrastructureFactory[EventCountersView].construct(env)
    assert f"{type(factory).__module__}:{type(factory).__qualname__}" == (
        "asyncsourcing.sqlite:SQLiteFactory"
    )
    assert isinstance(factory, SQLiteFactory)
    async with factory:
        yield factory


async def counters_view(factory: SQLiteFactory) -> SQLiteEventCounters:
    view = await factory.tracking_recorder(SQLiteEventCounters)
    assert isinstance(view, SQLiteEventCounters)
    return view


def aggregate_with(subsequent_events: int) -> Aggregate:
    aggregate = Aggregate()
    for _ in range(subsequent_events):
        aggregate.trigger_event(event_class=Aggregate.Event)
    return aggregate


async def test_view(factory: SQLiteFactory) -> None:
    # The tutorial's view test, as in the acceptance tests.
    view = await counters_view(factory)
    assert isinstance(view, TrackingRecorder)
    assert await view.max_tracking_id("upstream") is None
    assert await view.get_created_event_counter() == 0
    assert await view.get_subsequent_event_counter() == 0

    await view.incr_created_event_counter(Tracking("upstream", 1))
    assert await view.get_created_event_counter() == 1
    assert await view.get_subsequent_event_counter() == 0
    await view.incr_subsequent_event_counter(Tracking("upstream", 2))
    await view.incr_subsequent_event_counter(Tracking("upstream", 3))
    assert await view.get_created_event_counter() == 1
    assert await view.get_subsequent_event_counter() == 2
    assert await view.max_tracking_id("upstream") == 3

    # Recorded uniquely and atomically: the counter does not move either.
    with pytest.raises(IntegrityError):
        await view.incr_created_event_counter(Tracking("upstream", 3))
    assert await view.get_created_event_counter() == 1
    with pytest.raises(IntegrityError):
        await view.incr_subsequent_event_counter(Tracking("upstream", 2))
    assert await view.get_subsequent_event_counter() == 2

    await view.wait("upstream", 3)
    with pytest.raises(TimeoutError):
        await view.wait("upstream", 4, timeout=0.5)


async def test_view_tables_sit_beside_the_tracking_table(
    factory: SQLiteFactory,
) -> None:
    view = await counters_view(factory)
    assert view.counters_table_name == "counters"
    other = SQLiteEventCounters(factory.datastore, tracking_table_name="v2_tracking")
    assert other.counters_table_name == "v2_counters"
    await other.create_table()
    await other.incr_created_event_counter(Tracking("upstream", 1))
    assert await other.get_created_event_counter() == 1
    assert await view.get_created_event_counter() == 0


async def test_view_constructed_without_io_creates_its_tables_on_first_use(
    factory: SQLiteFactory,
) -> None:
    view = factory.construct_tracking_recorder(SQLiteEventCounters)
    assert isinstance(view, SQLiteEventCounters)
    assert await view.get_created_event_counter() == 0
    await view.incr_created_event_counter(Tracking("upstream", 1))
    assert await view.get_created_event_counter() == 1


async def test_waiter_is_woken_when_the_update_commits(factory: SQLiteFactory) -> None:
    view = await counters_view(factory)
    waiting = asyncio.create_task(view.wait("upstream", 1, timeout=5))
    await asyncio.sleep(0.02)
    async with view.datastore.transaction(commit=True) as connection:
        await view._insert_tracking(connection, Tracking("upstream", 1))
        await asyncio.sleep(0.05)
        # Recorded but not committed: nobody may see it yet.
        assert not waiting.done()
        assert view.position_board.known("upstream") is None
    await asyncio.wait_for(waiting, 1)


async def test_rolled_back_update_wakes_nobody(factory: SQLiteFactory) -> None:
    view = await counters_view(factory)

    class Failed(Exception):
        pass

    async def fail_after_recording_tracking() -> None:
        async with view.datastore.transaction(commit=True) as connection:
            await view._insert_tracking(connection, Tracking("upstream", 1))
            raise Failed

    with pytest.raises(Failed):
        await fail_after_recording_tracking()
    assert view.position_board.known("upstream") is None
    assert await view.max_tracking_id("upstream") is None
    with pytest.raises(TimeoutError):
        await view.wait("upstream", 1, timeout=0.2)


def projection_env(db_name: str) -> dict[str, str]:
    return {"PERSISTENCE_MODULE": "asyncsourcing.sqlite", "SQLITE_DBNAME": db_name}


async def test_projection(db_name: str) -> None:
    async with ProjectionRunner(
        application_class=Application[UUID],
        projection_class=EventCountersProjection,
        view_class=SQLiteEventCounters,
        env=projection_env(db_name),
    ) as runner:
        read_model = runner.projection.view
        for expected in (1, 2):
            recordings = await runner.app.save(aggregate_with(2))
            await read_model.wait(runner.app.name, recordings[-1].notification.id)
            assert await read_model.get_created_event_counter() == expected
            assert await read_model.get_subsequent_event_counter() == 2 * expected


async def test_projection_error_is_raised_by_run_forever(db_name: str) -> None:
    async with ProjectionRunner(
        application_class=Application[UUID],
        projection_class=EventCountersProjection,
        view_class=SQLiteEventCounters,
        env=projection_env(db_name),
    ) as runner:
        aggregate = Aggregate()
        aggregate.trigger_event(event_class=SpannerThrown)
        recordings = await runner.app.save(aggregate)
        with pytest.raises(SpannerThrownError):
            await runner.run_forever(timeout=5)
        with pytest.raises(TimeoutError):
            await runner.projection.view.wait(
                runner.app.name, recordings[-1].notification.id
            )


async def test_projection_resumes_and_wakes_separate_instances(tmp_path: Path) -> None:
    # The application and the view in files of their own, by prefixed settings.
    env = {
        "APPLICATION_PERSISTENCE_MODULE": "asyncsourcing.sqlite",
        "APPLICATION_SQLITE_DBNAME": str(tmp_path / "app.sqlite"),
        "EVENTCOUNTERS_PERSISTENCE_MODULE": "asyncsourcing.sqlite",
        "EVENTCOUNTERS_SQLITE_DBNAME": str(tmp_path / "view.sqlite"),
    }
    runner_args: dict[str, Any] = {
        "application_class": Application[UUID],
        "projection_class": EventCountersProjection,
        "view_class": SQLiteEventCounters,
        "env": env,
    }
    async with ProjectionRunner(**runner_args) as runner:
        recordings = await runner.app.save(aggregate_with(2))
        await runner.wait(recordings[-1].notification.id)

    async with ProjectionRunner(**runner_args):
        # Separate instances of the write model and of the read model.
        write_model = Application[UUID](env)
        factory = InfrastructureFactory[EventCountersView].construct(
            Environment(EventCountersProjection.name, env)
        )
        try:
            read_model = await factory.tracking_recorder(SQLiteEventCounters)
            assert isinstance(read_model, SQLiteEventCounters)
            assert await read_model.get_created_event_counter() == 1
            recordings = await write_model.save(aggregate_with(2))
            # Woken by the runner's commit, in this process: not a poll.
            await read_model.wait(
                write_model.name, recordings[-1].notification.id, timeout=5
            )
            assert await read_model.get_created_event_counter() == 2
            assert await read_model.get_subsequent_event_counter() == 4
        finally:
            await write_model.close()
            await factory.close()

    with sqlite3.connect(tmp_path / "view.sqlite") as connection:
        tables = {
            row[0] for row in connection.execute("SELECT name FROM sqlite_master")
        }
    connection.close()
    # The view's tables are named after the projection ("eventcounters").
    assert {"eventcounters_tracking", "eventcounters_counters"} <= tables
    assert not {"tracking", "counters", "stored_events"} & tables


async def test_example_main_on_sqlite(tmp_path: Path) -> None:
    env = projection_env(str(tmp_path / "example.sqlite"))
    assert await main(aggregates=3, env=env) == (3, 3)
    # Run again on the same file: resumes, and counts the new events only once.
    assert await main(aggregates=2, env=env) == (5, 5)


async def test_counters_view_closes_cleanly(tmp_path: Path) -> None:
    datastore = SQLiteDatastore(str(tmp_path / "db.sqlite"))
    view = SQLiteEventCounters(datastore)
    await view.incr_created_event_counter(Tracking("upstream", 1))
    await datastore.close()
    await datastore.close()
    assert datastore.is_closed
