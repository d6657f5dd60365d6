"""Versions of a projection: a new version builds beside the serving one,
readers switch to it in one step, a reset drops a version's view, and
handlers can tell replays from live events, on SQLite and PostgreSQL.

Each test's projection records, per version, which events its handler saw
as replays and which side effects (a :func:`side_effect` function) ran.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, ClassVar
from uuid import UUID

import pytest

from asyncsourcing.application import Application
from asyncsourcing.domain import Aggregate
from asyncsourcing.persistence import Tracking
from asyncsourcing.projection import (
    ProjectionRunner,
    ProjectionVersions,
    RebuildProgress,
    allow_side_effects,
    is_replaying,
    side_effect,
)
from asyncsourcing.versions import VersionError, VersionStatus
from examples.eventcounters.projection import EventCountersProjection
from tests.support.backends import VIEW_CLASSES, backend_env

SQL_BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


class Sent:
    """What the handlers saw: replays and side effects, by version."""

    replays: ClassVar[dict[int, list[int]]] = defaultdict(list)
    effects: ClassVar[dict[int, list[int]]] = defaultdict(list)
    forced: ClassVar[dict[int, list[int]]] = defaultdict(list)

    @classmethod
    def clear(cls) -> None:
        cls.replays.clear()
        cls.effects.clear()
        cls.forced.clear()


@side_effect
async def send_email(version: int, position: int) -> None:
    Sent.effects[version].append(position)


@side_effect
def ring_bell(version: int, position: int) -> None:
    Sent.forced[version].append(position)


class Counters(EventCountersProjection):
    """The event counters, with a side effect per event."""

    name = "eventcounters"

    async def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        if is_replaying():
            Sent.replays[self.version].append(tracking.notification_id)
        await send_email(self.version, tracking.notification_id)
        with allow_side_effects():
            ring_bell(self.version, tracking.notification_id)
        await super().process_event(domain_event, tracking)


class CountersV2(Counters):
    name = "eventcounters"  # A subclass is named after itself otherwise.
    version = 2


class CountersV3(Counters):
    name = "eventcounters"
    version = 3
    side_effects_during_replay = True


@pytest.fixture(params=SQL_BACKENDS)
def env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    Sent.clear()
    return backend_env(request.param, request, tmp_path)


@pytest.fixture
def view_class(env: dict[str, str]) -> type[Any]:
    return VIEW_CLASSES["sqlite" if "SQLITE_DBNAME" in env else "postgres"]


def runner(
    env: dict[str, str], view_class: type[Any], projection_class: type[Any] = Counters
) -> ProjectionRunner[Application[UUID], Any]:
    return ProjectionRunner(**arguments(env, view_class, projection_class))


def versions(
    env: dict[str, str], view_class: type[Any], projection_class: type[Any] = Counters
) -> ProjectionVersions[Application[UUID], Any]:
    return ProjectionVersions(**arguments(env, view_class, projection_class))


def arguments(
    env: dict[str, str], view_class: type[Any], projection_class: type[Any]
) -> dict[str, Any]:
    """What a runner and a versions object of the projection are given."""
    return {
        "application_class": Application[UUID],
        "projection_class": projection_class,
        "view_class": view_class,
        "env": env,
    }


async def save_events(app: Application[UUID], n: int) -> int:
    """Save ``n`` aggregates (one Created event each); the last position."""
    recordings = []
    for _ in range(n):
        recordings = await app.save(Aggregate())
    return recordings[-1].notification.id


async def run_until(
    env: dict[str, str],
    view_class: type[Any],
    projection_class: type[Any],
    position: int,
) -> None:
    async with runner(env, view_class, projection_class) as r:
        await r.view.wait(r.app.name, position, timeout=10)


async def test_first_version_serves_at_once_and_does_its_side_effects(
    env: dict[str, str], view_class: type[Any]
) -> None:
    async with runner(env, view_class) as r:
        last = await save_events(r.app, 3)
        await r.view.wait(r.app.name, last, timeout=10)
        record = r.version_record
    assert record is not None
    assert (record.version, record.status) == (1, VersionStatus.SERVING)
    assert record.replay_until is None
    assert Sent.replays[1] == []
    assert Sent.effects[1] == [1, 2, 3]


async def test_a_new_version_builds_beside_the_serving_one_then_readers_switch(
    env: dict[str, str], view_class: type[Any]
) -> None:
    async with runner(env, view_class) as r:
        last = await save_events(r.app, 20)
        await r.view.wait(r.app.name, last, timeout=10)

    reports: list[RebuildProgress] = []
    async with versions(env, view_class, CountersV2) as vs:
        before = await vs.serving_view()
        record = await vs.rebuild(max_lag=0, on_progress=reports.append)
        after = await vs.serving_view()

        assert (record.version, record.status) == (2, VersionStatus.SERVING)
        assert record.replay_until == last
        # Readers name the version by asking for the serving view each time.
        assert before.tracking_table_name == "eventcounters_tracking"
        assert after.tracking_table_name == "eventcounters_v2_tracking"
        assert await after.get_created_event_counter() == 20
        # The old version stays until it is reset.
        assert await before.get_created_event_counter() == 20
        listed = {info.version: info for info in await vs.list()}
        assert listed[1].status is VersionStatus.RETIRED
        assert (listed[2].position, listed[2].lag) == (last, 0)

    assert reports and reports[-1].lag == 0 and reports[-1].fraction == 1.0
    # Everything version 2 processed was a replay: no email sent twice.
    assert Sent.replays[2] == list(range(1, last + 1))
    assert Sent.effects[2] == []
    # The handler's own opt-in still rang the bell.
    assert Sent.forced[2] == list(range(1, last + 1))


async def test_after_the_switch_only_events_past_the_mark_are_live(
    env: dict[str, str], view_class: type[Any]
) -> None:
    async with runner(env, view_class) as r:
        last = await save_events(r.app, 5)
        await r.view.wait(r.app.name, last, timeout=10)
    async with versions(env, view_class, CountersV2) as vs:
        await vs.rebuild(max_lag=0)
    Sent.clear()
    async with runner(env, view_class, CountersV2) as r:
        newer = await save_events(r.app, 2)
        await r.view.wait(r.app.name, newer, timeout=10)
        assert r.projection_name == "eventcounters_v2"
    assert Sent.replays[2] == []
    assert Sent.effects[2] == [last + 1, last + 2]


async def test_a_projection_may_opt_in_to_side_effects_during_replay(
    env: dict[str, str], view_class: type[Any]
) -> None:
    async with runner(env, view_class) as r:
        last = await save_events(r.app, 4)
        await r.view.wait(r.app.name, last, timeout=10)
    async with versions(env, view_class, CountersV3) as vs:
        await vs.rebuild(max_lag=0, switch=False)
        records = {rec.version: rec.status for rec in await vs.records()}
    assert records == {1: VersionStatus.SERVING, 3: VersionStatus.BUILDING}
    assert Sent.replays[3] == [1, 2, 3, 4]
    assert Sent.effects[3] == [1, 2, 3, 4]


async def test_a_building_version_keeps_replaying_after_a_restart(
    env: dict[str, str], view_class: type[Any]
) -> None:
    async with runner(env, view_class) as r:
        last = await save_events(r.app, 6)
        await r.view.wait(r.app.name, last, timeout=10)
    # Two runs of version 2, as if the first had crashed: the record, not
    # the process, says it is building.
    await run_until(env, view_class, CountersV2, 3)
    await run_until(env, view_class, CountersV2, last)
    assert sorted(set(Sent.replays[2])) == list(range(1, last + 1))
    assert Sent.effects[2] == []


async def test_reset_drops_the_view_and_the_serving_version_replays_up_to_its_mark(
    env: dict[str, str], view_class: type[Any]
) -> None:
    async with runner(env, view_class) as r:
        last = await save_events(r.app, 4)
        await r.view.wait(r.app.name, last, timeout=10)
    async with versions(env, view_class) as vs:
        await vs.reset(1)
        (record,) = await vs.records()
        assert (record.status, record.replay_until) == (VersionStatus.SERVING, last)
        view = await vs.view(1)
        assert await view.max_tracking_id("Application") is None
        assert await view.get_created_event_counter() == 0
    Sent.clear()
    # Reprocessed after the reset: a replay up to the mark, live after it.
    async with runner(env, view_class) as r:
        newer = await save_events(r.app, 1)
        await r.view.wait(r.app.name, newer, timeout=10)
        assert await r.view.get_created_event_counter() == last + 1
    assert Sent.replays[1] == list(range(1, last + 1))
    assert Sent.effects[1] == [newer]


async def test_reset_refuses_a_version_whose_runner_is_running(
    env: dict[str, str], view_class: type[Any]
) -> None:
    async with runner(env, view_class) as r:
        last = await save_events(r.app, 1)
        await r.view.wait(r.app.name, last, timeout=10)
        async with versions(env, view_class) as vs:
            with pytest.raises(VersionError, match="stop its runners first"):
                await vs.reset(1)
        assert await r.view.get_created_event_counter() == 1


async def test_unknown_versions_are_named_in_the_error(
    env: dict[str, str], view_class: type[Any]
) -> None:
    async with runner(env, view_class) as r:
        await r.view.wait(r.app.name, await save_events(r.app, 1), timeout=10)
    async with versions(env, view_class) as vs:
        with pytest.raises(VersionError, match="'eventcounters' has no version 7"):
            await vs.switch(7)
        with pytest.raises(VersionError, match="no version 7"):
            await vs.reset(7)


async def test_a_version_is_an_int_of_at_least_one(
    env: dict[str, str], view_class: type[Any]
) -> None:
    with pytest.raises(ValueError, match="version must be an int >= 1, not 0"):
        ProjectionRunner(**arguments(env, view_class, Counters), version=0)


async def test_a_switch_while_events_flow_leaves_each_event_live_once_in_the_new(
    env: dict[str, str], view_class: type[Any]
) -> None:
    # Version 2 is building while events are written, version 1 serving;
    # the switch lands between their transactions (it waits for those in
    # flight): each event is a replay up to the mark and live after it, for
    # version 2, and live up to the mark only, for version 1.
    total = 120
    async with runner(env, view_class) as v1, runner(env, view_class, CountersV2) as v2:
        async with versions(env, view_class, CountersV2) as vs:
            last = 0
            for n in range(total):
                last = await save_events(v1.app, 1)
                if n == total // 2:
                    record = await vs.switch(2)
        await v2.view.wait(v2.app.name, last, timeout=20)
    mark = record.replay_until
    assert mark is not None and 0 < mark <= last
    replays, effects = Sent.replays[2], Sent.effects[2]
    assert sorted(replays) == list(range(1, mark + 1))
    assert effects == list(range(mark + 1, last + 1))
    # Version 1, fenced off by the switch, did the side effects up to the
    # mark and none after: each side effect once, in one version or the other.
    assert Sent.effects[1] == list(range(1, mark + 1))


async def test_a_rebuild_stands_by_while_another_process_builds_the_version(
    env: dict[str, str], view_class: type[Any]
) -> None:
    async with runner(env, view_class) as r:
        last = await save_events(r.app, 30)
        await r.view.wait(r.app.name, last, timeout=10)
    reports: list[RebuildProgress] = []
    # A runner of version 2 leads (a new deployment, say); the rebuild's
    # own runner stands by and follows the leader's progress.
    async with runner(env, view_class, CountersV2) as builder:
        await builder.view.wait(builder.app.name, 1, timeout=10)
        async with versions(env, view_class, CountersV2) as vs:
            record = await vs.rebuild(max_lag=0, on_progress=reports.append)
        assert str(builder.role) == "leader"
    assert record.status is VersionStatus.SERVING
    assert {report.role for report in reports} == {"standby"}
    # One builder: every event processed once, by the leader.
    assert sorted(Sent.replays[2]) == list(range(1, last + 1))
