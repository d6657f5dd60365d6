"""The runner's pure parts, without a database: the error policy's decisions,
the reconnection streak, the counters, and the subscriber's lifetime."""

from __future__ import annotations

from collections.abc import Iterator
from uuid import UUID

import pytest

from asyncsourcing.application import Application
from asyncsourcing.domain import Aggregate
from asyncsourcing.persistence import OperationalError, Tracking
from asyncsourcing.policies import (
    Backoff,
    Decision,
    ErrorHandler,
    ErrorPolicy,
    Park,
    Retry,
    Skip,
    Stop,
)
from asyncsourcing.popo import POPOTrackingRecorder
from asyncsourcing.projection.environment import (
    construct_env,
    lease_settings,
    with_defaults,
)
from asyncsourcing.projection.reconnection import Reconnection, ReconnectStreak
from asyncsourcing.projection.subscription import Subscriber
from asyncsourcing.statistics import RunnerCounters, RunnerStatistics

# --- ErrorPolicy.decide() ----------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "decision"),
    [
        (ErrorPolicy.stop(), Stop()),
        (ErrorPolicy.skip(), Skip()),
        (ErrorPolicy.park(), Park()),
        (ErrorPolicy.of("skip"), Skip()),
    ],
)
def test_the_actions_other_than_retry_decide_at_once(
    policy: ErrorPolicy, decision: object
) -> None:
    assert policy.decide(1, 0.0) == decision
    assert policy.decide(100, 1000.0) == decision


def test_retry_backs_off_then_does_what_then_says() -> None:
    policy = ErrorPolicy.retry(initial_delay=0.5, max_delay=3.0, max_attempts=5)
    delays = [policy.decide(failures, 0.0) for failures in range(1, 5)]
    assert delays == [Retry(0.5), Retry(1.0), Retry(2.0), Retry(3.0)]
    assert policy.decide(5, 0.0) == Stop()  # The default last resort.
    assert ErrorPolicy.retry(max_attempts=2, then="park").decide(2, 0.0) == Park()
    assert ErrorPolicy.retry(max_attempts=1, then="skip").decide(1, 0.0) == Skip()


def test_retry_gives_up_after_max_total_time() -> None:
    policy = ErrorPolicy.retry(max_attempts=None, max_total_time=1.0, then="park")
    assert policy.decide(1, 0.0) == Retry(0.1)
    decision = policy.decide(4, 0.9)  # 0.8 would overrun: what is left.
    assert isinstance(decision, Retry)
    assert decision.delay == pytest.approx(0.1)
    assert policy.decide(2, 1.0) == Park()


def test_a_decision_is_a_value() -> None:
    assert Retry(0.25) == Retry(0.25) != Retry(0.5)
    decisions: list[Decision] = [Skip(), Park(), Stop()]
    assert len(set(decisions)) == 3
    assert Stop() in decisions


# --- ErrorHandler ------------------------------------------------------------


def clock(*times: float) -> Iterator[float]:
    return iter(times)


def test_the_handler_counts_failures_and_times_them_from_the_first() -> None:
    policy = ErrorPolicy.retry(
        initial_delay=0.1, max_attempts=None, max_total_time=1.2, then="skip"
    )
    times = clock(10.0, 10.5, 11.5)
    handler = ErrorHandler(policy, lambda: next(times))
    assert handler.failures == 0
    assert handler.failed() == Retry(0.1)  # elapsed 0
    assert handler.failed() == Retry(0.2)  # elapsed 0.5
    assert handler.failed() == Skip()  # elapsed 1.5: out of time
    assert handler.failures == 3


def test_a_new_handler_starts_from_no_failure() -> None:
    policy = ErrorPolicy.retry(max_attempts=2)
    first = ErrorHandler(policy, lambda: 0.0)
    assert (first.failed(), first.failed()) == (Retry(0.1), Stop())
    second = ErrorHandler(policy, lambda: 0.0)
    assert second.failed() == Retry(0.1)


# --- ReconnectStreak ---------------------------------------------------------

BACKOFF = Backoff(initial_delay=1.0, max_delay=4.0, max_attempts=None)


def test_a_streak_grows_while_attempts_fail() -> None:
    streak = ReconnectStreak()
    streak.failed(BACKOFF, 100.0, processed=0)
    assert (streak.first_failure, streak.failures) == (100.0, 1)
    assert streak.delay(BACKOFF, 100.0) == 1.0
    streak.failed_again()
    streak.failed_again()
    assert streak.failures == 3
    assert streak.delay(BACKOFF, 103.0) == 4.0
    limited = Backoff(max_attempts=None, max_total_time=5.0)
    assert streak.delay(limited, 105.0) is None  # 5 s since the first failure


def test_a_recovery_that_does_not_last_continues_the_streak() -> None:
    streak = ReconnectStreak()
    streak.failed(BACKOFF, 100.0, processed=7)
    streak.recovered(101.0, processed=7)
    # Failing again within max_delay, nothing processed since: continued.
    streak.failed(BACKOFF, 104.0, processed=7)
    assert (streak.first_failure, streak.failures) == (100.0, 2)
    assert streak.delay(BACKOFF, 104.0) == 2.0


def test_an_event_processed_after_recovery_ends_the_streak() -> None:
    streak = ReconnectStreak()
    streak.failed(BACKOFF, 100.0, processed=7)
    streak.recovered(101.0, processed=7)
    streak.failed(BACKOFF, 102.0, processed=8)
    assert (streak.first_failure, streak.failures) == (102.0, 1)


def test_max_delay_without_error_after_recovery_ends_the_streak() -> None:
    streak = ReconnectStreak()
    streak.failed(BACKOFF, 100.0, processed=0)
    streak.failed_again()
    streak.recovered(101.0, processed=0)
    streak.failed(BACKOFF, 105.5, processed=0)  # 4.5 s > max_delay of 4 s
    assert (streak.first_failure, streak.failures) == (105.5, 1)


# --- Reconnection ------------------------------------------------------------


class Attempts:
    """An attempt to reconnect that fails with the given errors first."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)


class Sleeps:
    """The runner's sleep, without sleeping: True once stopped."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.delays: list[float] = []
        self.stop_at = stop_at

    async def __call__(self, delay: float) -> bool:
        self.delays.append(delay)
        return len(self.delays) == self.stop_at


def reconnection(counters: RunnerCounters, sleeps: Sleeps) -> Reconnection:
    return Reconnection(counters, "Orders", "totals", sleeps)


def snapshot(counters: RunnerCounters) -> RunnerStatistics:
    return counters.snapshot("Orders", "totals", is_running=True)


async def test_reconnection_backs_off_until_an_attempt_succeeds() -> None:
    counters, sleeps = RunnerCounters(), Sleeps()
    attempt = Attempts(OperationalError("still down"), OperationalError("down"))
    backoff = Backoff(initial_delay=0.5, max_attempts=None)
    reconnecting = reconnection(counters, sleeps)
    assert await reconnecting.reconnect(OperationalError("lost"), backoff, attempt)
    assert sleeps.delays == [0.5, 1.0, 2.0]
    assert attempt.calls == 3
    stats = snapshot(counters)
    assert (stats.errors, stats.reconnections) == (3, 1)
    assert stats.last_error == repr(OperationalError("down"))

    # Failing again at once, with no event processed: the streak continues.
    assert await reconnecting.reconnect(OperationalError("lost"), backoff, Attempts())
    assert sleeps.delays[3:] == [4.0]


async def test_reconnection_gives_up_and_the_error_is_counted_once() -> None:
    counters, sleeps = RunnerCounters(), Sleeps()
    attempt = Attempts(*(OperationalError(f"down {n}") for n in range(5)))
    backoff = Backoff(initial_delay=0.1, max_attempts=3)
    with pytest.raises(
        OperationalError, match="gave up reconnecting after 3 fail"
    ) as raised:
        await reconnection(counters, sleeps).reconnect(
            OperationalError("lost"), backoff, attempt
        )
    assert str(raised.value.__cause__) == "down 1"
    counters.stopped_by(raised.value)  # As the runner does: not counted again.
    assert sleeps.delays == [0.1, 0.2]
    assert snapshot(counters).errors == 3


async def test_without_backoff_a_connection_error_stops_with_advice() -> None:
    counters, attempt = RunnerCounters(), Attempts()
    lost = OperationalError("lost")
    with pytest.raises(OperationalError, match="error_policy='retry'") as raised:
        await reconnection(counters, Sleeps()).reconnect(lost, None, attempt)
    assert raised.value.__cause__ is lost
    assert "'totals' of application 'Orders'" in str(raised.value)
    assert attempt.calls == 0
    assert snapshot(counters).errors == 1


async def test_stopping_while_backing_off_stops_reconnecting() -> None:
    counters, sleeps, attempt = RunnerCounters(), Sleeps(stop_at=1), Attempts()
    reconnecting = reconnection(counters, sleeps)
    assert not await reconnecting.reconnect(OperationalError("x"), BACKOFF, attempt)
    assert attempt.calls == 0
    assert snapshot(counters).reconnections == 0


async def test_an_error_other_than_a_connection_error_is_not_retried() -> None:
    attempt = Attempts(ValueError("bad"))
    with pytest.raises(ValueError, match="bad"):
        await reconnection(RunnerCounters(), Sleeps()).reconnect(
            OperationalError("x"), BACKOFF, attempt
        )
    assert attempt.calls == 1


# --- RunnerCounters ----------------------------------------------------------


def test_counters_move_together_and_are_read_as_a_snapshot() -> None:
    counters = RunnerCounters()
    before = snapshot(counters)
    assert (before.position, before.events_processed, before.started_at) == (
        None,
        0,
        None,
    )
    counters.start(3)
    counters.processed_up_to(6, 3)
    counters.retried()
    counters.retried()
    counters.skipped(7)
    counters.parked(8)
    counters.reconnected()
    stats = snapshot(counters)
    assert stats.started_at is not None
    assert (stats.position, stats.events_processed) == (8, 5)
    assert (stats.retries, stats.skipped, stats.parked) == (2, 1, 1)
    assert stats.reconnections == 1
    assert (counters.position, counters.processed) == (8, 5)


def test_positions_from_a_resubscription_and_from_another_runner() -> None:
    counters = RunnerCounters()
    counters.start(None)
    counters.resubscribed_at(4)
    assert counters.position == 4
    counters.advanced_to(9)
    counters.advanced_to(2)  # Only forward.
    assert counters.position == 9
    assert counters.processed == 0


def test_an_error_that_stops_the_runner_is_counted_once() -> None:
    counters = RunnerCounters()
    met = ValueError("met")
    counters.error(met)
    counters.stopped_by(met)
    assert snapshot(counters).errors == 1
    counters.stopped_by(RuntimeError("another"))  # Not counted before.
    stats = snapshot(counters)
    assert stats.errors == 2
    assert stats.last_error == repr(RuntimeError("another"))
    assert stats.last_error_at is not None


def test_the_snapshot_takes_the_views_record_and_the_head_read() -> None:
    counters = RunnerCounters()
    counters.start(5)
    assert snapshot(counters).lag is None  # The head was not read.
    ahead = counters.snapshot("Orders", "totals", is_running=False, recorded=7)
    assert ahead.position == 7
    behind = counters.snapshot("Orders", "totals", is_running=True, recorded=2)
    assert behind.position == 5
    lagging = counters.snapshot(
        "Orders", "totals", is_running=True, head=12, role="standby", epoch=3
    )
    assert (lagging.lag, lagging.role, lagging.epoch) == (7, "standby", 3)
    assert counters.snapshot("Orders", "totals", is_running=True, head=0).lag == 0
    assert (lagging.application_name, lagging.projection_name) == (
        "Orders",
        "totals",
    )


# --- Subscriber --------------------------------------------------------------


async def nothing_filtered(position: int) -> float | None:
    return None


async def test_the_subscriber_subscribes_after_the_views_position() -> None:
    app: Application[UUID] = Application()
    await app.save(*(Aggregate() for _ in range(3)))
    view = POPOTrackingRecorder()
    await view.insert_tracking(Tracking(app.name, 2))
    subscriber = Subscriber(app, view, (), nothing_filtered)
    assert subscriber.current is None
    assert await subscriber.subscribe() == 2
    subscription = subscriber.current
    assert subscription is not None
    _, tracking = await anext(subscription)
    assert tracking.notification_id == 3

    # A new subscription replaces the old one, which is exited.
    await view.insert_tracking(Tracking(app.name, 3))
    assert await subscriber.subscribe() == 3
    assert subscriber.current is not subscription
    assert subscription.subscription.is_stopped
    await subscriber.unsubscribe()
    assert subscriber.current is None
    await subscriber.unsubscribe()  # Idempotent.


async def test_a_stopped_subscriber_stops_later_subscriptions_too() -> None:
    app: Application[UUID] = Application()
    subscriber = Subscriber(app, POPOTrackingRecorder(), (), nothing_filtered)
    await subscriber.subscribe()
    first = subscriber.current
    assert first is not None
    subscriber.stop()
    assert first.subscription.is_stopped
    assert await subscriber.subscribe() is None
    second = subscriber.current
    assert second is not None
    assert second.subscription.is_stopped
    with pytest.raises(StopAsyncIteration):
        await anext(second)
    await subscriber.unsubscribe()


# --- environment -------------------------------------------------------------


def test_env_wins_over_the_process_environment_over_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LEASE_TTL", "7")
    for name in ("TOTALS_LEASE_TTL", "LEADERSHIP", "TOTALS_LEADERSHIP", "TOTALS_X"):
        monkeypatch.delenv(name, raising=False)
    env = with_defaults({"LEADERSHIP": "no"}, {"LEASE_TTL": "3", "TOTALS_X": "1"})
    assert env == {"TOTALS_X": "1", "LEADERSHIP": "no"}
    settings = lease_settings(construct_env("totals", env))
    assert (settings.ttl, settings.enabled) == (7.0, False)
    assert with_defaults(None, None) is None
    with pytest.raises(ValueError, match="LEASE_TTL must be float, got 'soon'"):
        lease_settings(construct_env("totals", {"TOTALS_LEASE_TTL": "soon"}))
