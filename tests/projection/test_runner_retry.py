"""Database connection errors: reconnecting with backoff, or stopping clearly."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest

from asyncsourcing.application import Application
from asyncsourcing.domain import Aggregate
from asyncsourcing.persistence import InterfaceError, OperationalError, Tracking
from asyncsourcing.policies import Backoff, ErrorPolicy
from asyncsourcing.projection import ProjectionRunner
from asyncsourcing.testing.pgserver import TemporaryPostgres
from examples.eventcounters.postgres import PostgresEventCounters
from examples.eventcounters.projection import EventCountersProjection
from examples.eventcounters.views import POPOEventCounters
from tests.support.backends import aggregate_with

FAST_RECONNECT = Backoff(
    initial_delay=0.01, max_delay=0.05, max_attempts=None, max_total_time=5
)


class Unreliable(POPOEventCounters):
    """Its updates fail with a connection error ``failures`` times."""

    failures = 0
    error_class: type[Exception] = OperationalError

    async def incr_subsequent_event_counter(self, tracking: Tracking) -> None:
        if type(self).failures > 0:
            type(self).failures -= 1
            msg = "server closed the connection unexpectedly"
            raise type(self).error_class(msg)
        await super().incr_subsequent_event_counter(tracking)


def unreliable_runner(error_policy: Any) -> ProjectionRunner[Any, Any]:
    return ProjectionRunner(
        application_class=Application[UUID],
        projection_class=EventCountersProjection,
        view_class=Unreliable,
        error_policy=error_policy,
    )


@pytest.mark.parametrize("error_class", [OperationalError, InterfaceError])
async def test_connection_errors_resubscribe_and_carry_on(
    error_class: type[Exception],
) -> None:
    Unreliable.failures, Unreliable.error_class = 3, error_class
    policy = ErrorPolicy.skip(reconnect=FAST_RECONNECT)
    async with unreliable_runner(policy) as runner:
        recordings = await runner.app.save(aggregate_with(Aggregate.Event))
        await runner.wait(recordings[-1].notification.id, timeout=5)
        view = runner.projection.view
        assert await view.get_created_event_counter() == 1
        # Not skipped: a connection error is not the event's fault.
        assert await view.get_subsequent_event_counter() == 1
        stats = await runner.statistics()
        assert stats.reconnections == 3
        assert (stats.skipped, stats.retries) == (0, 0)
        assert stats.events_processed == 2
        assert stats.last_error is not None
        assert error_class.__name__ in stats.last_error


async def test_without_reconnect_run_forever_raises_a_clear_operational_error() -> None:
    Unreliable.failures, Unreliable.error_class = 1, InterfaceError
    async with unreliable_runner("park") as runner:
        await runner.app.save(aggregate_with(Aggregate.Event))
        with pytest.raises(OperationalError, match="stopped by a database error") as e:
            await runner.run_forever(timeout=5)
        assert isinstance(e.value.__cause__, InterfaceError)
        assert "error_policy='retry'" in str(e.value)
        assert await runner.projection.view.max_tracking_id(runner.app.name) == 1
        assert not (await runner.statistics()).is_running


async def test_reconnecting_gives_up_after_max_total_time() -> None:
    Unreliable.failures, Unreliable.error_class = 10_000, OperationalError
    backoff = Backoff(
        initial_delay=0.01, max_delay=0.02, max_attempts=None, max_total_time=0.3
    )
    async with unreliable_runner(ErrorPolicy.retry(reconnect=backoff)) as runner:
        await runner.app.save(aggregate_with(Aggregate.Event))
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(OperationalError, match="gave up reconnecting"):
            await runner.run_forever(timeout=5)
        assert 0.25 < loop.time() - started < 2
        stats = await runner.statistics()
        assert stats.reconnections > 5
        assert stats.position == 1


# A real server restarted under a running runner.


@pytest.fixture(scope="module")
def server() -> Iterator[TemporaryPostgres]:
    """A server of this module's own, that its tests restart."""
    try:
        postgres = TemporaryPostgres(settings={"synchronous_commit": "on"}).start()
    except (RuntimeError, FileNotFoundError) as error:  # pragma: no cover
        pytest.skip(f"cannot start a PostgreSQL server: {error}")
    try:
        yield postgres
    finally:
        postgres.stop()


@pytest.fixture
async def server_env(server: TemporaryPostgres) -> dict[str, str]:
    schema = f"test_{uuid4().hex[:12]}"
    conn = await asyncpg.connect(server.dsn)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
    finally:
        await conn.close()
    return {
        "PERSISTENCE_MODULE": "asyncsourcing.postgres",
        **server.env(),
        "POSTGRES_SCHEMA": schema,
        "POSTGRES_POOL_SIZE": "2",
        "POSTGRES_CONNECT_TIMEOUT": "2",
    }


class SlowCounters(PostgresEventCounters):
    """Slow enough for a restart to come in the middle of a catch-up batch."""

    async def _incr_counter(self, name: str, tracking: Tracking) -> None:
        await asyncio.sleep(0.002)
        await super()._incr_counter(name, tracking)


async def save(env: dict[str, str], count: int) -> int:
    """Record ``count`` aggregates of two events each; the last position."""
    async with Application[UUID](env) as app:
        recordings = await app.save(
            *(aggregate_with(Aggregate.Event) for _ in range(count))
        )
    return recordings[-1].notification.id


def restart_runner(
    env: dict[str, str], error_policy: Any
) -> ProjectionRunner[Any, Any]:
    return ProjectionRunner(
        application_class=Application[UUID],
        projection_class=EventCountersProjection,
        view_class=SlowCounters,
        env=env,
        error_policy=error_policy,
    )


@pytest.mark.postgres
async def test_runner_carries_on_after_the_server_restarts(
    server: TemporaryPostgres, server_env: dict[str, str]
) -> None:
    async with asyncio.timeout(20):
        await save(server_env, 200)  # 400 events: over a second to process.
        policy = ErrorPolicy.retry(
            reconnect=Backoff(
                initial_delay=0.05, max_delay=0.5, max_attempts=None, max_total_time=15
            )
        )
        async with restart_runner(server_env, policy) as runner:
            await asyncio.sleep(0.3)  # In the middle of catching up.
            assert runner.is_running
            assert (await runner.statistics()).position is None  # One batch.
            await asyncio.to_thread(server.restart, "immediate")
            last = await save(server_env, 50)
            await runner.wait(last, timeout=15)
            view = runner.projection.view
            # Nothing lost, nothing twice.
            assert await view.get_created_event_counter() == 250
            assert await view.get_subsequent_event_counter() == 250
            # (A crash makes the sequence of notification ids jump ahead.)
            assert await view.max_tracking_id(runner.app.name) == last
            stats = await runner.statistics()
            assert runner.is_running
            assert stats.reconnections >= 1
            assert stats.position == last
            assert stats.lag == 0
            assert stats.last_error is not None
            assert (stats.skipped, stats.parked) == (0, 0)


@pytest.mark.postgres
async def test_runner_stops_with_a_clear_error_when_the_server_restarts(
    server: TemporaryPostgres, server_env: dict[str, str]
) -> None:
    async with asyncio.timeout(20):
        await save(server_env, 200)
        async with restart_runner(server_env, "stop") as runner:
            await asyncio.sleep(0.3)
            assert runner.is_running
            await asyncio.to_thread(server.restart, "immediate")
            with pytest.raises(OperationalError, match="stopped by a database error"):
                await runner.run_forever(timeout=15)
            assert not runner.is_running
            # What was processed was committed whole: a new run resumes there.
            last = await save(server_env, 1)
        async with restart_runner(server_env, "stop") as runner:
            await runner.wait(last, timeout=15)
            view = runner.projection.view
            assert await view.get_created_event_counter() == 201
            assert await view.get_subsequent_event_counter() == 201
