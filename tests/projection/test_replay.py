"""The replay context: what handlers see while a runner replays events, and
which side effects are suppressed (see asyncsourcing.projection.replay).

The runner side, versions and resets, is in test_versions.py.
"""

from __future__ import annotations

import asyncio

from asyncsourcing.domain import Aggregate
from asyncsourcing.persistence import Tracking
from asyncsourcing.projection import allow_side_effects, is_replaying, side_effect
from asyncsourcing.projection.replay import (
    ReplayContext,
    replay_context,
    replaying,
    side_effects_suppressed,
)
from tests.support.projections import Counted

calls: list[str] = []


@side_effect
async def notify(text: str) -> str:
    calls.append(text)
    return text


@side_effect
def log_line(text: str) -> str:
    calls.append(text)
    return text


def setup_function() -> None:
    calls.clear()


async def test_outside_a_replay_side_effects_run() -> None:
    assert replay_context() == ReplayContext(replaying=False, side_effects=True)
    assert not is_replaying()
    assert await notify("a") == "a"
    assert log_line("b") == "b"
    assert calls == ["a", "b"]


async def test_while_replaying_side_effects_do_nothing_and_return_none() -> None:
    with replaying(41) as context:
        assert context.replay_until == 41
        assert is_replaying() and side_effects_suppressed()
        assert await notify("a") is None
        assert log_line("b") is None
    assert calls == []
    assert not is_replaying()


async def test_a_handler_opts_in_around_the_calls_it_means() -> None:
    with replaying(None):
        with allow_side_effects():
            assert is_replaying()
            await notify("wanted")
        await notify("unwanted")
    assert calls == ["wanted"]


async def test_a_projection_opts_in_for_all_its_side_effects() -> None:
    with replaying(None, side_effects=True):
        await notify("a")
    assert calls == ["a"]


async def test_tasks_started_by_a_handler_inherit_the_context() -> None:
    with replaying(7):
        task = asyncio.create_task(notify("from a task"))
    # The task runs after the block: its context was copied at creation.
    assert await task is None
    assert calls == []


async def test_the_decorated_function_keeps_its_name_and_docstring() -> None:
    assert notify.__name__ == "notify"
    assert asyncio.iscoroutinefunction(notify)


async def test_an_event_sourced_projection_records_no_new_events_while_replaying() -> (
    None
):
    env = {"PERSISTENCE_MODULE": "asyncsourcing.popo"}
    async with Counted(env=env) as projection:
        created = Aggregate().collect_events()[0]
        with replaying(1):
            replayed = await projection.process_event(created, Tracking("App", 1))
        live = await projection.process_event(created, Tracking("App", 2))
        # The replayed event's tracking is recorded, with no new event.
        assert await projection.recorder.max_tracking_id("App") == 2
        notifications = await projection.recorder.select_notifications(1, 10)
    assert replayed == []
    assert len(live) == 1
    assert len(notifications) == 1
