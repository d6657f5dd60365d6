"""Partition leadership: the runners of a partitioned projection share its
partitions, a lease per partition, and rebalance as runners come and go.

Each :class:`PartitionLeadership` here stands for a process: its own
datastore (so its own connections, and on PostgreSQL its own lock session).
A watcher checks, at every change and every few milliseconds, that no
partition is ever owned by two live runners at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from asyncsourcing.leases import (
    FencedError,
    Leases,
    LeaseSettings,
    partition_lease_name,
)
from asyncsourcing.postgres.leases import PostgresLeases
from asyncsourcing.projection.partition_leadership import PartitionLeadership
from asyncsourcing.sqlite.datastore import SQLiteDatastore
from asyncsourcing.sqlite.leases import SQLiteLeases
from tests.support.paths import ROOT
from tests.support.postgres import admin_connection, datastore, factory_env

APP, PROJECTION, N = "app", "counters", 8
ALL = frozenset(range(N))


class Backend:
    """Makes the leases of one "process" on a database, and closes them."""

    def __init__(self, name: str, env: dict[str, str], path: Path) -> None:
        self.name, self.env, self.path = name, env, path
        self.closers: list[Callable[[], Any]] = []

    def leases(self) -> Leases:
        if self.name == "sqlite":
            store = SQLiteDatastore(str(self.path))
            self.closers.append(store.close)
            return SQLiteLeases(store)
        pg = datastore(self.env, self.env["POSTGRES_SCHEMA"])
        self.closers.append(pg.close)
        return PostgresLeases(pg)

    async def close(self) -> None:
        for close in self.closers:
            await close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    env: dict[str, str] = {}
    if request.param == "postgres":
        postgres_env = request.getfixturevalue("postgres_env")
        env = factory_env(postgres_env, request.getfixturevalue("pg_schema"))
    return Backend(request.param, env, tmp_path / "leases.sqlite")


@pytest.fixture
async def backend(database: Backend) -> AsyncIterator[Backend]:
    try:
        yield database
    finally:
        await database.close()


class Member:
    """A runner: its leadership, and the partitions it was told to process."""

    def __init__(self, group: Group, ttl: float) -> None:
        self.group = group
        self.leases = group.backend.leases()
        self.leadership = PartitionLeadership(
            self.leases, APP, PROJECTION, group.partitions, LeaseSettings(ttl=ttl)
        )
        self.processing: set[int] = set()
        self.changes: list[tuple[frozenset[int], frozenset[int]]] = []
        self.task: asyncio.Task[None] | None = None

    async def on_change(self, gained: frozenset[int], lost: frozenset[int]) -> None:
        assert lost <= self.processing and not gained & self.processing
        self.processing -= lost
        for other in self.group.live():
            if other is not self and gained & other.processing:
                self.group.overlaps.append(f"{sorted(gained & other.processing)}")
        self.processing |= gained
        self.changes.append((gained, lost))

    @property
    def owned(self) -> frozenset[int]:
        return self.leadership.owned

    async def start(self) -> None:
        await self.leadership.create_table()
        self.task = asyncio.create_task(self.leadership.run(self.on_change))

    async def cancel(self) -> None:
        """Stop running without giving anything back (a crash, as seen from
        the database while the lock's session lasts)."""
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None

    async def stop(self) -> None:
        """A clean stop: the workers stop, then the leases are given back."""
        await self.cancel()
        self.processing.clear()
        await self.leadership.release()


class Group:
    """Runners of one projection, and a watch that no partition is owned, or
    processed, by two live ones at once."""

    def __init__(self, backend: Backend, partitions: int) -> None:
        self.backend = backend
        self.partitions = partitions
        self.members: list[Member] = []
        self.overlaps: list[str] = []

    def live(self) -> list[Member]:
        return [m for m in self.members if m.task is not None]

    async def start(self, ttl: float = 1.0) -> Member:
        member = Member(self, ttl)
        self.members.append(member)
        await member.start()
        return member

    def check(self) -> None:
        seen: set[int] = set()
        for member in self.live():
            if member.task is not None and member.task.done():
                member.task.result()  # Raise its error.
            both = seen & (member.owned | member.processing)
            if both:
                self.overlaps.append(f"owned twice: {sorted(both)}")
            seen |= member.owned | member.processing

    async def watch(self) -> None:
        while True:
            self.check()
            await asyncio.sleep(0.005)

    async def until(self, condition: Callable[[], bool], timeout: float = 8.0) -> float:
        """Seconds until ``condition()``; fails at ``timeout`` or an overlap."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        while not condition():
            self.check()
            assert not self.overlaps, self.overlaps
            shares = [sorted(m.owned) for m in self.live()]
            assert loop.time() - started < timeout, f"timed out: {shares}"
            await asyncio.sleep(0.01)
        assert not self.overlaps, self.overlaps
        return loop.time() - started

    def shared(self, *sizes: int) -> bool:
        """Whether the live runners own all the partitions, in these numbers,
        and process what they own."""
        live = self.live()
        owned = [m.owned for m in live]
        return (
            sorted(map(len, owned)) == sorted(sizes)
            and frozenset().union(*owned) == frozenset(range(self.partitions))
            and all(m.processing == m.owned for m in live)
        )


@contextlib.asynccontextmanager
async def group_of(backend: Backend, partitions: int = N) -> AsyncIterator[Group]:
    group = Group(backend, partitions)
    watch = asyncio.create_task(group.watch())
    try:
        yield group
    finally:
        watch.cancel()
        for member in group.members:
            await member.stop()
    assert not group.overlaps, group.overlaps


async def test_a_single_runner_owns_all_the_partitions(backend: Backend) -> None:
    async with group_of(backend) as group:
        only = await group.start()
        await group.until(lambda: group.shared(N))
        status = only.leadership.describe()
        assert status.owned == tuple(range(N)) and set(status.epochs.values()) == {1}
        lease = only.leadership.lease(3)
        assert lease is not None and lease.projection_name == "counters[3]"
        assert lease.owner == only.leadership.owner
        # Its presence says what it holds, from the step that claimed them
        # on (which records it after the claims: read until it has).
        expected = [(only.leadership.owner, "partitions 0,1,2,3,4,5,6,7")]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while True:
            present = await only.leases.present(APP, PROJECTION)
            if [(p.owner, p.role) for p in present] == expected:
                break
            assert loop.time() < deadline, present
            await asyncio.sleep(0.01)
    # Stopped cleanly: nothing is held, nobody is present.
    states = await only.leases.survey(APP, [partition_lease_name(PROJECTION, 0)])
    assert [s.expired for s in states] == [True]
    assert await only.leases.present(APP, PROJECTION) == []


@pytest.mark.parametrize("enabled", [False, True])
async def test_without_leases_a_runner_owns_all_partitions_at_once(
    enabled: bool,
) -> None:
    # In memory (no leases), or LEADERSHIP=false: nothing to share.
    settings = LeaseSettings(enabled=enabled)
    leadership = PartitionLeadership(None, APP, PROJECTION, N, settings)
    assert leadership.owned == ALL and leadership.lease(0) is None
    changes: list[tuple[frozenset[int], frozenset[int]]] = []

    async def on_change(gained: frozenset[int], lost: frozenset[int]) -> None:
        changes.append((gained, lost))

    task = asyncio.create_task(leadership.run(on_change))
    await asyncio.sleep(0.1)
    assert changes == [(ALL, frozenset())] and not task.done()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await leadership.release()
    assert leadership.describe().owned == tuple(range(N))


async def test_runners_joining_take_a_share_without_a_reshuffle(
    backend: Backend,
) -> None:
    async with group_of(backend) as group:
        first = await group.start()
        await group.until(lambda: group.shared(8))
        second = await group.start()
        await group.until(lambda: group.shared(4, 4))
        before = {m: m.owned for m in group.members}
        third = await group.start()
        await group.until(lambda: group.shared(3, 3, 2))
        # The others only gave partitions up: none moved between them.
        assert first.owned <= before[first] and second.owned <= before[second]
        assert len(third.owned) in (2, 3)
        # And it stays so for a while (no churn).
        settled = {m: m.owned for m in group.members}
        await asyncio.sleep(1.0)
        assert {m: m.owned for m in group.members} == settled


@pytest.mark.parametrize(("partitions", "shares"), [(4, (2, 1, 1)), (2, (1, 1, 0))])
async def test_the_shares_differ_by_one_at_most(
    backend: Backend, partitions: int, shares: tuple[int, ...]
) -> None:
    # ceil(4 / 3) each would leave the third runner idle (2, 2, 0).
    async with group_of(backend, partitions) as group:
        for _ in shares:
            await group.start()
        await group.until(lambda: group.shared(*shares))


async def test_a_runner_stopping_cleanly_is_taken_over_at_once(
    backend: Backend,
) -> None:
    # A time to live long enough that expiry cannot be what hands them over.
    async with group_of(backend) as group:
        members = [await group.start(ttl=3.0) for _ in range(3)]
        await group.until(lambda: group.shared(3, 3, 2))
        leaving = members[0]
        given = leaving.owned
        await leaving.stop()
        took = await group.until(lambda: group.shared(4, 4))
        assert took < 2.5  # Within about a renewal interval (1 s), not a ttl.
        epochs = [
            lease.epoch
            for m in members[1:]
            for lease in m.leadership.leases_held.values()
        ]
        assert given and max(epochs) >= 2  # Taken over at a new epoch.


async def test_a_killed_runners_partitions_are_taken_over(backend: Backend) -> None:
    async with group_of(backend) as group:
        survivor = await group.start(ttl=2.0)
        killed = await group.start(ttl=2.0)
        await group.until(lambda: group.shared(4, 4))
        lock_pid = next(iter(killed.leadership.leases_held.values())).holder_pid
        await killed.cancel()  # Its leases stay, unreleased.
        lost = sorted(killed.owned)
        names = [partition_lease_name(PROJECTION, p) for p in lost]
        expiring = {
            s.lease.projection_name: s.lease.expires_at
            for s in await survivor.leases.survey(APP, names)
        }
        if backend.name == "postgres":
            # Its process dies: its lock's session ends with it.
            assert lock_pid is not None
            async with admin_connection(backend.env) as admin:
                await admin.execute("SELECT pg_terminate_backend($1)", lock_pid)
        await group.until(lambda: group.shared(8))
        taken = {
            name: lease.acquired_at
            for lease in survivor.leadership.leases_held.values()
            if (name := lease.projection_name) in expiring
        }
        assert taken.keys() == expiring.keys()
        if backend.name == "postgres":  # The fast path: before expiry.
            assert all(taken[name] < expiring[name] for name in taken)
        else:  # In this process, its "process" has not exited: at expiry.
            assert all(taken[name] >= expiring[name] for name in taken)


async def test_a_partition_taken_by_another_is_reported_lost(backend: Backend) -> None:
    async with group_of(backend) as group:
        first = await group.start()
        second = await group.start()
        await group.until(lambda: group.shared(4, 4))
        partition = min(first.owned)
        lease = first.leadership.lease(partition)
        assert lease is not None
        # Another moves its epoch on (as a takeover after a pause of the
        # owner past its expiry would): the owner's view transactions of
        # that partition are fenced off...
        leases: Any = first.leases  # Both backends' leases have a datastore.
        async with leases.datastore.transaction(commit=True) as conn:
            await leases.fence_out(conn, APP, lease.projection_name)
        with pytest.raises(FencedError, match=r"counters\[\d\].*epoch"):
            async with leases.datastore.transaction(commit=True) as conn:
                await leases.check_fence(conn, lease)
        # ... and it finds that out by itself, and reports it lost.
        await group.until(lambda: partition not in first.processing)
        assert (frozenset(), frozenset({partition})) in first.changes
        # lost(): a fenced view transaction tells it directly.
        other = min(first.owned)
        first.leadership.lost(other, "a view transaction was fenced off")
        assert other not in first.owned and first.leadership.lease(other) is None
        await group.until(lambda: other not in first.processing, timeout=2)
        # Both leases expire, unrenewed: the runners share all again.
        await group.until(lambda: group.shared(4, 4))
        assert second.task is not None


async def test_partitions_left_free_by_a_miscounted_runner_are_claimed(
    backend: Backend,
) -> None:
    # A runner counted but not claiming (a dead one whose presence has not
    # expired yet): the targets (4 each) leave 4 partitions free, which the
    # live runner takes beyond its target after a renewal interval, and
    # keeps while the count stays the same (no give and take again).
    async with group_of(backend) as group:
        leases = backend.leases()
        await leases.create_table()
        await leases.announce(APP, PROJECTION, "ghost", "partitions none", 60)
        only = await group.start()
        await group.until(lambda: len(only.owned) == 4)
        await group.until(lambda: group.shared(8))
        changes = len(only.changes)
        await asyncio.sleep(1.0)  # Three renewal intervals.
        assert len(only.changes) == changes and only.owned == ALL


# A runner in a process of its own, for the SIGKILL test.
RUNNER = """
import asyncio, os, sys
from asyncsourcing.leases import LeaseSettings
from asyncsourcing.projection.partition_leadership import PartitionLeadership

async def main():
    if sys.argv[1] == "sqlite":
        from asyncsourcing.sqlite.datastore import SQLiteDatastore
        from asyncsourcing.sqlite.leases import SQLiteLeases
        leases = SQLiteLeases(SQLiteDatastore(sys.argv[2]))
    else:
        from asyncsourcing.postgres import PostgresDatastore
        from asyncsourcing.postgres.leases import PostgresLeases
        leases = PostgresLeases(PostgresDatastore.from_env(os.environ))
    leadership = PartitionLeadership(leases, "app", "counters", 8, LeaseSettings(ttl=3))
    await leadership.create_table()

    async def on_change(gained, lost):
        print(sorted(leadership.owned), flush=True)

    await leadership.run(on_change)

asyncio.run(main())
"""


async def test_a_sigkilled_process_is_taken_over_before_expiry(
    backend: Backend,
) -> None:
    # SQLite: its process has exited on this host; PostgreSQL: its sessions
    # ended. Either way, the survivor need not wait for the leases' expiry.
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        RUNNER,
        backend.name,
        str(backend.path),
        cwd=ROOT,
        env={**os.environ, **backend.env},
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 10)
        assert json.loads(line)  # It owns some (all, until the other starts).
        async with group_of(backend) as group:
            survivor = await group.start(ttl=3.0)
            await group.until(lambda: len(survivor.owned) == 4, timeout=10)
            others = sorted(ALL - survivor.owned)
            names = [partition_lease_name(PROJECTION, p) for p in others]
            states = await survivor.leases.survey(APP, names)
            assert len(states) == 4 and all(not s.expired for s in states)
            process.send_signal(signal.SIGKILL)
            await process.wait()
            expiring = {s.lease.projection_name: s.lease.expires_at for s in states}
            await group.until(lambda: group.shared(8))
            for lease in survivor.leadership.leases_held.values():
                expires_at = expiring.get(lease.projection_name)
                assert expires_at is None or lease.acquired_at < expires_at
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
