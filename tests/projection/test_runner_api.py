"""The runners' public API: what they run, where they record, how they close,
their environment defaults, and their counters without IO."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from asyncsourcing.application import Application
from asyncsourcing.domain import Aggregate
from asyncsourcing.persistence import IntegrityError, Tracking
from asyncsourcing.popo import POPOFactory
from asyncsourcing.projection import (
    BaseProjectionRunner,
    EventSourcedProjectionRunner,
    ProjectionRunner,
    RunnerStatistics,
)
from asyncsourcing.sqlite import SQLiteFactory
from examples.eventcounters.projection import EventCountersProjection
from examples.eventcounters.sqlite import SQLiteEventCounters
from examples.eventcounters.views import EventCountersView, POPOEventCounters
from tests.support.projections import Counted


def counters_runner(
    view_class: type[EventCountersView] = POPOEventCounters, **kwargs: Any
) -> ProjectionRunner[Application[UUID], EventCountersView]:
    return ProjectionRunner(
        application_class=Application[UUID],
        projection_class=EventCountersProjection,
        view_class=view_class,
        **kwargs,
    )


def counted_runner(**kwargs: Any) -> EventSourcedProjectionRunner[Any, Counted]:
    return EventSourcedProjectionRunner(
        application_class=Application[UUID], projection_class=Counted, **kwargs
    )


async def save_aggregates(runner: BaseProjectionRunner[Any], count: int) -> int:
    """Save ``count`` new aggregates; the last notification id."""
    recordings = await runner.app.save(*(Aggregate() for _ in range(count)))
    return int(recordings[-1].notification.id)


# --- tracking_recorder, topics, projection_name --------------------------


async def test_a_projection_runner_records_positions_in_its_view() -> None:
    runner = counters_runner()
    # Known from construction: no IO, no start.
    assert runner.tracking_recorder is runner.view
    assert runner.topics == tuple(EventCountersProjection.topics)
    assert isinstance(runner.topics, tuple)
    assert runner.projection_name == "eventcounters"
    async with runner:
        last = await save_aggregates(runner, 2)
        await runner.wait(last)
        recorded = await runner.tracking_recorder.max_tracking_id(runner.app_name)
        assert recorded == last


async def test_an_event_sourced_runner_records_positions_in_its_process_recorder() -> (
    None
):
    runner = counted_runner()
    assert runner.tracking_recorder is runner.projection.recorder
    assert runner.topics == tuple(Counted.topics)
    assert runner.projection_name == runner.projection.name == "Counted"
    async with runner:
        last = await save_aggregates(runner, 1)
        await runner.wait(last)
        recorded = await runner.tracking_recorder.max_tracking_id(runner.app_name)
        assert recorded == last
    assert (await runner.statistics()).projection_name == runner.projection_name


@pytest.mark.parametrize("name", ["tracking_recorder", "topics", "projection_name"])
async def test_the_runners_properties_are_read_only(name: str) -> None:
    runner = counters_runner()
    with pytest.raises(AttributeError):
        setattr(runner, name, None)
    await runner.close()


# --- close() -------------------------------------------------------------


@pytest.mark.parametrize("construct", [counters_runner, counted_runner])
async def test_close_stops_and_closes_for_good(
    construct: Callable[[], BaseProjectionRunner[Any]],
) -> None:
    runner = construct()
    await runner.start()
    assert runner.is_running
    last = await save_aggregates(runner, 1)
    await runner.wait(last)
    await runner.close()
    assert not runner.is_running
    await runner.close()  # Idempotent,
    await runner.aclose()  # and aclose() is the same.
    assert (await runner.statistics()).position == last


async def test_close_of_a_runner_never_started() -> None:
    # What `asyncsourcing status` does: construct, read, close.
    runner = counters_runner()
    assert await runner.tracking_recorder.max_tracking_id(runner.app_name) is None
    await runner.close()
    assert not runner.is_running
    with pytest.raises(RuntimeError, match="closed"):
        await runner.start()  # Closed for good.


# --- env_defaults ----------------------------------------------------------


@pytest.mark.parametrize("construct", [counters_runner, counted_runner])
async def test_env_wins_over_the_process_environment_which_wins_over_env_defaults(
    construct: Callable[..., BaseProjectionRunner[Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ONLY_DEFAULT", raising=False)
    monkeypatch.setenv("IN_ENVIRON", "environ")
    monkeypatch.setenv("EVERYWHERE", "environ")
    runner = construct(
        env={"EVERYWHERE": "env"},
        env_defaults={
            "ONLY_DEFAULT": "default",
            "IN_ENVIRON": "default",
            "EVERYWHERE": "default",
        },
    )
    if isinstance(runner, ProjectionRunner):
        projection_env = runner.factory.env
    else:
        assert isinstance(runner, EventSourcedProjectionRunner)
        projection_env = runner.projection.env
    for env in (runner.app.env, projection_env):
        assert env.get("ONLY_DEFAULT") == "default"
        assert env.get("IN_ENVIRON") == "environ"
        assert env.get("EVERYWHERE") == "env"
    await runner.close()


async def test_env_defaults_choose_the_backend_unless_the_environment_does(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("PERSISTENCE_MODULE", raising=False)
    for name in ("APPLICATION", "EVENTCOUNTERS"):
        monkeypatch.delenv(f"{name}_PERSISTENCE_MODULE", raising=False)
    defaults = {
        "PERSISTENCE_MODULE": "asyncsourcing.sqlite",
        "SQLITE_DBNAME": str(tmp_path / "defaults.sqlite"),
    }
    runner = counters_runner(SQLiteEventCounters, env_defaults=defaults)
    assert isinstance(runner.factory, SQLiteFactory)
    assert isinstance(runner.view, SQLiteEventCounters)
    async with runner:
        last = await save_aggregates(runner, 3)
        await runner.wait(last)
        assert await runner.view.get_created_event_counter() == 3
    assert (tmp_path / "defaults.sqlite").exists()

    # The process environment overrides the defaults.
    monkeypatch.setenv("PERSISTENCE_MODULE", "asyncsourcing.popo")
    runner = counters_runner(env_defaults=defaults)
    assert isinstance(runner.factory, POPOFactory)
    await runner.close()


async def test_without_env_defaults_env_is_laid_over_the_environment_as_before(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("IN_ENVIRON", "environ")
    runner = counters_runner(env={"EXPLICIT": "env"}, env_defaults={})
    assert runner.app.env.get("IN_ENVIRON") == "environ"
    assert runner.factory.env.get("EXPLICIT") == "env"
    await runner.close()


# --- counters() ------------------------------------------------------------


async def test_counters_are_a_snapshot_without_io() -> None:
    runner = counters_runner()
    assert not inspect.iscoroutinefunction(runner.counters)
    before = runner.counters()
    assert isinstance(before, RunnerStatistics)
    assert before.projection_name == "eventcounters"
    assert before.application_name == runner.app_name
    assert before.position is None
    assert before.lag is None  # Not read: counters() reads nothing.
    assert before.events_processed == 0
    assert before.started_at is None
    assert not before.is_running
    async with runner:
        last = await save_aggregates(runner, 4)
        await runner.wait(last)
        counters = runner.counters()
        statistics = await runner.statistics()
        assert counters.is_running
        assert counters.position == statistics.position == last
        assert counters.events_processed == statistics.events_processed == 4
        assert counters.lag is None
        assert statistics.lag == 0
        assert counters.role == statistics.role == "leader"
        assert counters.started_at == statistics.started_at
    assert runner.counters().events_processed == 4
    assert not runner.counters().is_running


# --- EventSourcedProjection.record_tracking() ------------------------------


async def test_record_tracking_records_a_position_and_no_events() -> None:
    projection = Counted()
    recordings = await projection.record_tracking(Tracking("upstream", 3))
    assert recordings == []
    assert await projection.recorder.max_tracking_id("upstream") == 3
    assert await projection.recorder.select_notifications(None, 10) == []
    with pytest.raises(IntegrityError):
        await projection.record_tracking(Tracking("upstream", 3))
    await projection.close()
