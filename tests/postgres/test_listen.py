"""Waking subscribers and waiters through LISTEN/NOTIFY, under concurrency,
connection loss and cancellation, with separate datastores standing in for
separate processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from uuid import uuid4

import asyncpg
import pytest
from eventsourcing.persistence import (
    OperationalError,
    StoredEvent,
    Tracking,
    WaitInterruptedError,
)

from asyncsourcing.persistence import ApplicationRecorder, Notification, Subscription
from asyncsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
from tests.support.postgres import (
    admin_connection,
    factory,
    our_connections,
    quote,
    settings,
)

pytestmark = pytest.mark.postgres

# Long enough that being woken in time proves it wasn't the safety-net poll.
NO_POLL = {"POSTGRES_POLL_INTERVAL": "30"}


def event(originator_id: Any, version: int) -> StoredEvent:
    return StoredEvent(originator_id, version, "tests:Topic", b"{}")


async def take(
    subscription: Subscription[Any], n: int, timeout: float
) -> list[Notification]:
    taken: list[Notification] = []

    async def read() -> None:
        async for notification in subscription:
            taken.append(notification)
            if len(taken) == n:
                return

    await asyncio.wait_for(read(), timeout)
    return taken


async def test_concurrent_writers_commit_ids_in_order(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    writers, per_writer = 2, 1000
    # Separate datastores: separate pools, as separate processes would have.
    factories = [factory(postgres_env, pg_schema) for _ in range(writers + 1)]
    try:
        recorders: list[ApplicationRecorder] = [
            await f.application_recorder() for f in factories
        ]
        reader = recorders.pop()

        async def write(recorder: ApplicationRecorder) -> list[int]:
            originator_id = uuid4()
            ids: list[int] = []
            for version in range(1, per_writer + 1):
                new_ids = await recorder.insert_events([event(originator_id, version)])
                assert new_ids is not None
                ids.extend(new_ids)
            return ids

        async with reader.subscribe() as subscription:
            reading = asyncio.create_task(take(subscription, writers * per_writer, 40))
            written = await asyncio.gather(*(write(r) for r in recorders))
            seen = [n.id for n in await reading]

        # Strictly increasing, none skipped: every recorded id, in order.
        recorded = await reader.select_notifications(None, writers * per_writer + 1)
        assert seen == [n.id for n in recorded]
        assert seen == sorted(set(seen))
        assert sorted(seen) == sorted(i for ids in written for i in ids)
        # The writers really did interleave.
        assert any(
            written[0][i] + 1 != written[0][i + 1] for i in range(per_writer - 1)
        )
    finally:
        for f in factories:
            await f.close()


async def test_terminated_listen_connection_is_replaced_and_nothing_missed(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    async with (
        factory(postgres_env, pg_schema, **NO_POLL) as ours,
        factory(postgres_env, pg_schema, **NO_POLL) as other,
    ):
        recorder = await ours.application_recorder()
        view = await ours.tracking_recorder()
        writer = await other.application_recorder()
        other_view = await other.tracking_recorder()
        a = uuid4()
        await writer.insert_events([event(a, 1)])

        async with recorder.subscribe() as subscription:
            assert [n.originator_version for n in await take(subscription, 1, 5)] == [1]
            waiting = asyncio.create_task(view.wait("upstream", 1, timeout=10))
            following = asyncio.create_task(take(subscription, 1, 10))
            await asyncio.sleep(0.1)
            listener = ours.datastore.listener
            old_pid = listener.server_pid
            assert old_pid is not None

            async with admin_connection(postgres_env) as admin:
                assert await admin.fetchval("SELECT pg_terminate_backend($1)", old_pid)
            # Committed while (or just after) the listening connection is gone:
            # the notifications may be lost, the events and tracking are not.
            await writer.insert_events([event(a, 2)])
            await other_view.insert_tracking(Tracking("upstream", 1))

            await asyncio.wait_for(waiting, 5)
            assert [n.originator_version for n in await following] == [2]
            new_pid = listener.server_pid
            assert listener.reconnections == 1
            assert new_pid is not None and new_pid != old_pid

            # Listening again: woken at once, not by a poll.
            started = time.monotonic()
            more = asyncio.create_task(take(subscription, 1, 5))
            woken = asyncio.create_task(view.wait("upstream", 2, timeout=5))
            await asyncio.sleep(0.05)
            await writer.insert_events([event(a, 3)])
            await other_view.insert_tracking(Tracking("upstream", 2))
            assert [n.originator_version for n in await more] == [3]
            await woken
            assert time.monotonic() - started < 1.0


async def test_waiters_of_another_datastore_are_woken_within_milliseconds(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    async with (
        factory(postgres_env, pg_schema, **NO_POLL) as waiting_side,
        factory(postgres_env, pg_schema, **NO_POLL) as writing_side,
    ):
        view = await waiting_side.tracking_recorder()
        writer = await writing_side.tracking_recorder()
        latencies: list[float] = []
        for position in range(1, 8):
            woken_at: list[float] = []

            async def wait(
                position: int = position, woken_at: list[float] = woken_at
            ) -> None:
                await view.wait("upstream", position, timeout=5)
                woken_at.append(time.perf_counter())

            task = asyncio.create_task(wait())
            await asyncio.sleep(0.02)
            assert not task.done()
            await writer.insert_tracking(Tracking("upstream", position))
            committed_at = time.perf_counter()
            await task
            latencies.append(woken_at[0] - committed_at)
        assert statistics.median(latencies) < 0.02, latencies
        assert max(latencies) < 0.2, latencies


class CountingDatastore(PostgresDatastore):
    """Counts the statements run on its pooled connections."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queries: list[str] = []

    async def _init_connection(self, conn: asyncpg.Connection[Any]) -> None:
        conn.add_query_logger(self._log)

    def _log(self, record: asyncpg.connection.LoggedQuery) -> None:
        # Not the pool's reset of a released connection: only our statements.
        if not record.query.startswith("SELECT pg_advisory_unlock_all()"):
            self.queries.append(record.query)

    def count(self, predicate: Callable[[str], bool]) -> int:
        return sum(1 for query in self.queries if predicate(query))


async def test_a_thousand_waiters_cost_one_listen_and_one_query(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    store = CountingDatastore(settings(postgres_env, pg_schema, **NO_POLL))
    try:
        # Two recorder instances on one table share one board.
        views = [
            PostgresTrackingRecorder(store, tracking_table_name="counted_tracking")
            for _ in range(2)
        ]
        for view in views:
            await view.create_table()
        assert views[0].position_board is views[1].position_board
        await asyncio.sleep(0.05)
        store.queries.clear()

        waiters = [
            asyncio.create_task(views[n % 2].wait("upstream", n % 10 + 1, timeout=10))
            for n in range(1000)
        ]
        await asyncio.sleep(0.2)
        assert not any(w.done() for w in waiters)

        # Another datastore (another process) records the positions.
        async with factory(postgres_env, pg_schema) as other:
            other_view = PostgresTrackingRecorder(
                other.datastore, tracking_table_name="counted_tracking"
            )
            for position in (3, 10):
                await other_view.insert_tracking(Tracking("upstream", position))
            await asyncio.wait_for(asyncio.gather(*waiters), 5)

        await asyncio.sleep(0.05)  # Query loggers are called soon, not at once.
        max_reads = store.count(lambda q: "MAX(notification_id)" in q)
        assert max_reads == 1, store.queries
        assert len(store.queries) == 1, store.queries
        listening = [
            name
            for name in await our_connections(postgres_env, pg_schema)
            if name.endswith(":listen")
        ]
        assert len(listening) == 1

        # Committed by this datastore: woken straight after the commit.
        later = asyncio.create_task(views[1].wait("upstream", 11, timeout=5))
        await asyncio.sleep(0.05)
        await views[0].insert_tracking(Tracking("upstream", 11))
        await asyncio.wait_for(later, 1)
    finally:
        await store.close()


async def test_cancelling_and_closing_leave_no_connections_or_tasks(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    tasks_before = asyncio.all_tasks()
    f = factory(postgres_env, pg_schema)
    recorder = await f.application_recorder()
    view = await f.tracking_recorder()
    subscription = recorder.subscribe()
    iterating = asyncio.create_task(take(subscription, 1, 30))
    waiting = [
        asyncio.create_task(view.wait("upstream", n, timeout=30)) for n in (1, 2)
    ]

    async def hold_a_transaction() -> None:
        async with f.datastore.transaction(commit=True) as conn:
            await conn.execute("SELECT pg_sleep(30)")

    holding = asyncio.create_task(hold_a_transaction())
    await asyncio.sleep(0.3)
    assert len(await our_connections(postgres_env, pg_schema)) >= 2

    # Cancelled mid-query and mid-wait.
    holding.cancel()
    waiting[0].cancel()
    for task in (holding, waiting[0]):
        with pytest.raises(asyncio.CancelledError):
            await task

    # Closing ends the subscription's iteration and interrupts the waiters.
    await f.close()
    assert await asyncio.wait_for(iterating, 2) == []
    with pytest.raises(WaitInterruptedError):
        await asyncio.wait_for(waiting[1], 2)
    await subscription.aclose()
    await f.close()  # Idempotent.

    for _ in range(50):
        left = await our_connections(postgres_env, pg_schema)
        if not left:
            break
        await asyncio.sleep(0.05)
    assert left == []
    await asyncio.sleep(0)
    assert {t for t in asyncio.all_tasks() - tasks_before if not t.done()} == set()


async def test_recorders_constructed_without_io_create_tables_on_first_use(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    class Things(PostgresTrackingRecorder):
        def __init__(self, datastore: PostgresDatastore, **kwargs: Any) -> None:
            super().__init__(datastore, **kwargs)
            self.things = self._qualified("things")
            self.sql_create_statements.append(
                f"CREATE TABLE IF NOT EXISTS {self.things} (n int)"
            )

    async with factory(postgres_env, pg_schema) as f:
        # As an application and a projection runner construct them: no IO.
        recorder = f.construct_application_recorder()
        things = f.construct_tracking_recorder(Things)
        assert isinstance(things, Things)
        # Concurrent first uses: each waits for the tables.
        results = await asyncio.gather(
            recorder.insert_events([event(uuid4(), 1)]),
            recorder.max_notification_id(),
            things.max_tracking_id("upstream"),
        )
        assert results[0] == [1]
        # A view's own table, used through the datastore directly.
        async with things.datastore.transaction(commit=True) as conn:
            await things._insert_tracking(conn, Tracking("upstream", 1))
            await conn.execute(f"INSERT INTO {things.things} VALUES (1)")
        assert await things.max_tracking_id("upstream") == 1


async def test_lock_timeout_bounds_the_wait_for_the_table_lock(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    async with factory(postgres_env, pg_schema, POSTGRES_LOCK_TIMEOUT="1") as f:
        recorder = await f.application_recorder()
        table = f"{quote(pg_schema)}.stored_events"
        async with admin_connection(postgres_env) as admin, admin.transaction():
            await admin.execute(f"LOCK TABLE {table} IN EXCLUSIVE MODE")
            started = time.monotonic()
            with pytest.raises(OperationalError) as info:
                await recorder.insert_events([event(uuid4(), 1)])
            assert 0.9 < time.monotonic() - started < 5
            assert isinstance(info.value.__cause__, asyncpg.LockNotAvailableError)
        # Reading is not blocked by the lock, and the failed insert left nothing.
        assert await recorder.max_notification_id() is None


async def test_reconnection_backs_off_while_the_server_refuses(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    async with (
        factory(postgres_env, pg_schema, **NO_POLL) as ours,
        factory(postgres_env, pg_schema) as other,
    ):
        view = await ours.tracking_recorder()
        other_view = await other.tracking_recorder()
        waiting = asyncio.create_task(view.wait("upstream", 1, timeout=10))
        await asyncio.sleep(0.1)
        listener = ours.datastore.listener
        connect = listener._connect
        attempts: list[float] = []

        async def refused_twice() -> Any:
            attempts.append(time.monotonic())
            if len(attempts) <= 2:
                msg = "refused"
                raise ConnectionRefusedError(msg)
            return await connect()

        listener._connect = refused_twice
        async with admin_connection(postgres_env) as admin:
            await admin.fetchval("SELECT pg_terminate_backend($1)", listener.server_pid)
        await other_view.insert_tracking(
            Tracking("upstream", 1)
        )  # Announced to no one.
        await asyncio.wait_for(waiting, 5)
        assert len(attempts) == 3
        # Immediately, then after growing delays.
        assert attempts[1] - attempts[0] >= 0.04
        assert attempts[2] - attempts[1] >= attempts[1] - attempts[0]
        assert listener.reconnections == 1


@contextlib.asynccontextmanager
async def role_of_its_own(
    postgres_env: dict[str, str],
) -> AsyncIterator[dict[str, str]]:
    """A new superuser role, for connections that a test can lock out alone.

    Yields the ``POSTGRES_USER`` and ``POSTGRES_PASSWORD`` of the role; the
    role is dropped afterwards (it owns nothing: tables are created by the
    tests' usual role).
    """
    role, password = f"test_{uuid4().hex[:12]}", uuid4().hex
    async with admin_connection(postgres_env) as admin:
        await admin.execute(
            f"CREATE ROLE {quote(role)} LOGIN SUPERUSER PASSWORD '{password}'"
        )
    try:
        yield {"POSTGRES_USER": role, "POSTGRES_PASSWORD": password}
    finally:
        async with admin_connection(postgres_env) as admin:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE usename = $1",
                role,
            )
            await admin.execute(f"DROP ROLE {quote(role)}")


async def test_the_poll_goes_on_while_the_listener_cannot_reconnect(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    # The waiting side logs in as a role of its own, which is then refused
    # new logins: its LISTEN connection, once killed, cannot be re-opened,
    # while its pooled connections, already open, still read.
    async with role_of_its_own(postgres_env) as role:
        waiting_env = {**role, "POSTGRES_POLL_INTERVAL": "0.5", "CREATE_TABLE": "false"}
        async with (
            factory(postgres_env, pg_schema) as writing_side,
            factory(postgres_env, pg_schema, **waiting_env) as waiting_side,
            admin_connection(postgres_env) as admin,
        ):
            writer = await writing_side.tracking_recorder()
            await writer.insert_tracking(Tracking("upstream", 1))
            view = await waiting_side.tracking_recorder()
            await view.wait("upstream", 1, timeout=5)  # Listening, and polling.
            listener = waiting_side.datastore.listener
            assert listener.is_connected

            role_name = quote(role["POSTGRES_USER"])
            await admin.execute(f"ALTER ROLE {role_name} NOLOGIN")
            await admin.fetchval(
                "SELECT pg_terminate_backend($1, 5000)", listener.server_pid
            )
            for _ in range(100):
                if not listener.is_connected:
                    break
                await asyncio.sleep(0.01)
            assert not listener.is_connected
            # Recorded while the listener is down: announced to no one.
            await writer.insert_tracking(Tracking("upstream", 2))

            started = time.monotonic()
            await view.wait("upstream", 2, timeout=5)
            # Within a poll interval or so, while the listener still tries
            # to reconnect.
            assert time.monotonic() - started < 1.5
            assert not listener.is_connected
            await admin.execute(f"ALTER ROLE {role_name} LOGIN")
