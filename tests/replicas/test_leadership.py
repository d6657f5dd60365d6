"""Leadership: of the runners of one projection, one processes, the others stand by.

The lease row in ``asyncsourcing_leases`` says who leads; each view
transaction of the leader checks it (fencing); a standby takes over when the
leader stops, when its session ends (PostgreSQL's fast path), or when its
lease expires.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from asyncsourcing.application import Application
from asyncsourcing.domain import Aggregate
from asyncsourcing.leases import FencedError, Leases
from asyncsourcing.persistence import OperationalError
from asyncsourcing.postgres.leases import PostgresSessionLock
from asyncsourcing.projection import ProjectionRunner
from examples.eventcounters.postgres import PostgresEventCounters
from examples.eventcounters.projection import EventCountersProjection
from examples.eventcounters.sqlite import SQLiteEventCounters
from tests.support.backends import BACKENDS, Backend, backend_env
from tests.support.postgres import admin_connection, factory_env, quote
from tests.support.runners import running

Runner = ProjectionRunner[Application[UUID], Any]


@pytest.fixture(params=BACKENDS[1:])  # Leases are kept in a database.
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    views = {"sqlite": SQLiteEventCounters, "postgres": PostgresEventCounters}
    env = backend_env(request.param, request, tmp_path)
    return Backend(request.param, env, views[request.param])


async def save_created(app: Application[UUID], count: int) -> int:
    recordings = await app.save(*(Aggregate() for _ in range(count)))
    return recordings[-1].notification.id


async def eventually(condition: Callable[[], Any], timeout: float = 5.0) -> float:
    """Seconds until ``condition()`` (awaited if need be) is true."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return loop.time() - started
        assert loop.time() - started < timeout, "timed out"
        await asyncio.sleep(0.01)


def leases_of(runner: Runner) -> Leases:
    leases = runner.view.leases
    assert leases is not None
    return leases


async def test_one_runner_leads_the_others_stand_by_and_read_their_writes(
    backend: Backend,
) -> None:
    async with running(backend.runner(), backend.runner(), backend.runner()) as runners:
        first, *others = runners
        stats = [await runner.statistics() for runner in runners]
        assert [s.role for s in stats] == ["leader", "standby", "standby"]
        assert stats[0].epoch == 1 and stats[0].owner is not None
        assert all(s.epoch is None and s.is_running for s in stats[1:])
        lease = await leases_of(first).read(
            first.app_name, EventCountersProjection.name
        )
        assert lease is not None and lease.owner == stats[0].owner

        # Events saved by a standby's application are processed by the
        # leader, and the standby's view wakes up to them.
        last = await save_created(others[0].app, 10)
        await others[0].wait(last, timeout=5)
        await others[1].view.wait(others[1].app_name, last, timeout=5)
        assert await first.view.get_created_event_counter() == 10
        assert [(await r.statistics()).events_processed for r in runners] == [10, 0, 0]


async def test_a_standby_takes_over_when_the_leader_stops(backend: Backend) -> None:
    first, second = backend.runner(), backend.runner()
    async with running(second):
        await first.start()  # second leads, first stands by
        assert (first.role, second.role) == ("standby", "leader")
        last = await save_created(second.app, 5)
        await first.wait(last, timeout=5)
    # second stopped cleanly: it gave the lease back, first takes it at once.
    try:
        took = await eventually(lambda: first.role == "leader", timeout=3)
        assert took < 1.5
        assert (await first.statistics()).epoch == 2
        last = await save_created(first.app, 5)
        await first.wait(last, timeout=5)
        assert await first.view.get_created_event_counter() == 10
    finally:
        await first.aclose()


class FailsOneRead:
    """A view whose next position read fails as a lost connection would."""

    fail_next_read = False

    async def max_tracking_id(self, application_name: str) -> int | None:
        if self.fail_next_read:
            self.fail_next_read = False
            msg = "the connection was lost (injected by the test)"
            raise OperationalError(msg)
        return await super().max_tracking_id(application_name)  # type: ignore[misc]


async def test_a_standby_whose_database_fails_as_it_takes_over_stands_by_again(
    backend: Backend,
) -> None:
    # The policy is "stop": a leader stops on a database error. A standby is
    # not processing yet: it must not stop, or no runner would lead.
    view_class = type("FailingView", (FailsOneRead, backend.view_class), {})
    standby: Runner = ProjectionRunner(
        application_class=Application[UUID],
        projection_class=EventCountersProjection,
        view_class=view_class,
        env=backend.env,
    )
    leader = backend.runner()
    async with running(leader):
        await standby.start()
        assert standby.role == "standby"
        last = await save_created(leader.app, 5)
        await standby.wait(last, timeout=5)
        standby.view.fail_next_read = True
    try:
        # The leader gave the lease back: the standby takes it, and its
        # first read of the view's position fails.
        await eventually(lambda: not standby.view.fail_next_read, timeout=10)
        last = await save_created(standby.app, 5)
        await standby.wait(last, timeout=5)
        assert await standby.view.get_created_event_counter() == 10
        stats = await standby.statistics()
        assert (stats.role, stats.is_running, stats.errors) == ("leader", True, 1)
        assert "injected" in (stats.last_error or "")
    finally:
        await standby.aclose()


async def test_a_fenced_leader_commits_nothing_and_stands_by(backend: Backend) -> None:
    # A short time to live, so that the test's takeover is quick.
    leader, standby = backend.runner(LEASE_TTL="1"), backend.runner(LEASE_TTL="1")
    async with running(leader, standby):
        last = await save_created(leader.app, 3)
        await leader.wait(last, timeout=5)
        lease = leader.lease
        assert lease is not None and lease.epoch == 1

        # Another runner takes the lease over, as if the leader had paused
        # past its expiry: an intruder, or the standby if it is quicker.
        leases = leases_of(leader)
        await leases.release(lease.application_name, lease.projection_name, lease.owner)
        await leases.acquire(lease.application_name, lease.projection_name, "x", 1)
        current = await leases.read(lease.application_name, lease.projection_name)
        assert current is not None and current.epoch == 2
        assert current.owner != lease.owner

        # The former leader's view transactions are refused from now on.
        transaction = leader.view.batch_transaction(leader.app_name, fence=lease)
        with pytest.raises(FencedError, match="epoch 1"):
            async with transaction:
                pass
        # It stands by (on PostgreSQL, holding the session lock, it may
        # take the intruder's lease over at once, at a new epoch).
        await eventually(
            lambda: leader.lease is None or leader.lease.epoch > 2, timeout=5
        )

        # Whoever leads next processes what follows, once.
        last = await save_created(leader.app, 4)
        await leader.wait(last, timeout=5)
        await standby.wait(last, timeout=5)
        assert await standby.view.get_created_event_counter() == 7
        counts = [(await r.statistics()).events_processed for r in (leader, standby)]
        assert sum(counts) == 7


@pytest.mark.postgres
async def test_postgres_takeover_is_fast_when_the_leaders_session_ends(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    backend = Backend(
        "postgres", factory_env(postgres_env, pg_schema), PostgresEventCounters
    )
    leader, standby = backend.runner(), backend.runner()
    async with running(leader, standby):
        lease = leader.lease
        assert lease is not None and lease.holder_pid is not None
        # The leader's process dies: its sessions end, its lease does not.
        async with admin_connection(postgres_env) as admin:
            await admin.execute("SELECT pg_terminate_backend($1)", lease.holder_pid)
        took = await eventually(lambda: standby.role == "leader", timeout=5)
        assert took < 1.0  # The lease's time to live is 10 s.


async def settled_epoch(runner: Runner, quiet: float, timeout: float) -> int:
    """The lease's epoch, once it has not changed for ``quiet`` seconds."""
    leases, app = leases_of(runner), runner.app_name
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    epoch, since = None, loop.time()
    while loop.time() - since < quiet:
        assert loop.time() < deadline, f"the lease keeps changing hands: {epoch}"
        lease = await leases.read(app, EventCountersProjection.name)
        current = None if lease is None else lease.epoch
        if current != epoch:
            epoch, since = current, loop.time()
        await asyncio.sleep(0.1)
    assert epoch is not None
    return epoch


@pytest.mark.postgres
async def test_postgres_lock_sessions_lost_one_runner_leads_on(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    # Lock sessions end without their process (a pooler, a network cut):
    # the runners take the lock again, and the lease settles with one.
    backend = Backend(
        "postgres", factory_env(postgres_env, pg_schema), PostgresEventCounters
    )
    first, second = backend.runner(), backend.runner()
    async with running(first, second):
        lock = leases_of(first).session_lock(
            first.app_name, EventCountersProjection.name
        )
        assert isinstance(lock, PostgresSessionLock)
        async with admin_connection(postgres_env) as admin:
            for expected in (2, 1):
                terminated = await admin.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_locks "
                    "WHERE locktype = 'advisory' AND (classid::bigint << 32 "
                    "| objid::bigint) = hashtextextended($1, 0)",
                    lock.key,
                )
                # First the leader's and the standby's wait; then whichever
                # took the lock again meanwhile, at least.
                assert terminated >= expected
                await asyncio.sleep(1.0)
        # Lost sessions count as crashes: the lease may change hands once
        # or twice, then it stays put for longer than a renewal interval.
        await settled_epoch(first, quiet=4.0, timeout=20)
        assert sorted([first.role, second.role]) == ["leader", "standby"]
        last = await save_created(first.app, 5)
        await first.wait(last, timeout=5)
        await second.wait(last, timeout=5)
        assert await first.view.get_created_event_counter() == 5


@pytest.mark.postgres
async def test_postgres_an_expired_lease_is_left_to_the_lock_holder_for_a_while(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    # So that the leader holds the session lock whenever a holder is alive,
    # and its crash is noticed at once: a runner without the lock takes an
    # expired lease only a time to live after it expired.
    backend = Backend(
        "postgres", factory_env(postgres_env, pg_schema), PostgresEventCounters
    )
    runner = backend.runner(LEASE_TTL="1")
    leases = leases_of(runner)
    await leases.create_table()
    app, projection = runner.app_name, EventCountersProjection.name
    lock = leases.session_lock(app, projection)
    assert isinstance(lock, PostgresSessionLock)
    async with admin_connection(postgres_env) as holder:
        # Another runner, alive, holds the lock; a lease expires now.
        await holder.execute(
            "SELECT pg_advisory_lock(hashtextextended($1, 0))", lock.key
        )
        expired = await leases.acquire(app, projection, "gone:1:x", 0.0)
        assert expired is not None
        async with running(runner):
            took = await eventually(lambda: runner.role == "leader", timeout=5)
            assert took >= 0.5  # Not at expiry: a time to live after it.
            assert runner.lease is not None and runner.lease.holder_pid is None
    await runner.aclose()


@pytest.mark.postgres
async def test_postgres_without_the_fast_path_holds_no_session(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    # For poolers in transaction mode (PgBouncer, RDS Proxy), where a session
    # lock would pin a server connection. Takeover after a crash then waits
    # for expiry (tests/replicas/test_replicas.py kills a process to show it).
    backend = Backend(
        "postgres", factory_env(postgres_env, pg_schema), PostgresEventCounters
    )
    env = {"LEASE_FAST_TAKEOVER": "false", "LEASE_TTL": "1.5"}
    leader, standby = backend.runner(**env), backend.runner(**env)
    async with running(leader, standby):
        lease = leader.lease
        assert lease is not None and lease.holder_pid is None
        async with admin_connection(postgres_env) as admin:
            schema = quote(pg_schema)
            count = await admin.fetchval(
                f"SELECT count(*) FROM {schema}.asyncsourcing_leases"
            )
            assert count == 1
            # Not even a standby waits for the projection's advisory lock.
            lock = leases_of(leader).session_lock(
                lease.application_name, lease.projection_name
            )
            assert isinstance(lock, PostgresSessionLock)
            advisory = await admin.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND "
                "(classid::bigint << 32 | objid::bigint) = hashtextextended($1, 0)",
                lock.key,
            )
            assert advisory == 0


async def test_sqlite_takes_over_at_once_from_a_process_that_has_exited(
    tmp_path: Path,
) -> None:
    backend = Backend(
        "sqlite",
        {
            "PERSISTENCE_MODULE": "asyncsourcing.sqlite",
            "SQLITE_DBNAME": str(tmp_path / "app.sqlite"),
        },
        SQLiteEventCounters,
    )
    runner = backend.runner()
    leases = leases_of(runner)
    await leases.create_table()
    app, projection = runner.app_name, EventCountersProjection.name
    host = socket.gethostname()
    exited = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await exited.wait()  # Reaped: no process has its pid now (nor soon after).
    dead_pid = exited.pid
    try:
        # A live process of this host holds the lease for a minute: no takeover.
        alive = await leases.acquire(app, projection, f"{host}:{os.getpid()}:a", 60)
        assert alive is not None and alive.epoch == 1
        assert await leases.acquire(app, projection, f"{host}:1:b", 60) is None

        # Its holder exits without giving it back: the next acquire takes it,
        # though it has not expired.
        await leases.release(app, projection, alive.owner)
        gone = await leases.acquire(app, projection, f"{host}:{dead_pid}:c", 60)
        assert gone is not None and gone.epoch == 2
        taken = await leases.acquire(app, projection, f"{host}:{os.getpid()}:d", 60)
        assert taken is not None and taken.epoch == 3

        # The same owner on another host may still run: no takeover.
        await leases.release(app, projection, taken.owner)
        elsewhere = await leases.acquire(app, projection, f"elsewhere:{dead_pid}:e", 60)
        assert elsewhere is not None
        assert await leases.acquire(app, projection, f"{host}:1:f", 60) is None
    finally:
        await runner.aclose()


@pytest.mark.postgres
async def test_postgres_a_lock_that_cannot_connect_raises_a_database_error(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # Nothing listens there once closed.
    env = {**factory_env(postgres_env, pg_schema), "POSTGRES_PORT": str(port)}
    runner = Backend("postgres", env, PostgresEventCounters).runner()
    lock = leases_of(runner).session_lock(runner.app_name, "eventcounters")
    assert lock is not None
    try:
        # Not the driver's ConnectionRefusedError: the runner's policies
        # know database errors.
        with pytest.raises(OperationalError):
            await lock.try_acquire()
    finally:
        await lock.aclose()
        await runner.aclose()


def test_bad_lease_settings_name_the_variable(tmp_path: Path) -> None:
    backend = Backend(
        "sqlite",
        {
            "PERSISTENCE_MODULE": "asyncsourcing.sqlite",
            "SQLITE_DBNAME": str(tmp_path / "app.sqlite"),
        },
        SQLiteEventCounters,
    )
    with pytest.raises(ValueError, match="LEASE_TTL"):
        backend.runner(LEASE_TTL="soon")
    with pytest.raises(ValueError, match="LEASE_TTL"):
        backend.runner(LEASE_TTL="0")
    with pytest.raises(ValueError, match="LEADERSHIP"):
        backend.runner(LEADERSHIP="perhaps")
