"""The positions of a partitioned projection, in memory, in SQLite and in PostgreSQL.

A runner claims an application's partitions (a row each, in a table beside
the tracking table, made on demand); each partition's worker records the
positions of its events as :class:`PartitionTracking`, in batch
transactions that lock that partition only; marks move idle partitions on.
The application's position is the least of the partitions'. Waiters wait
for every partition, or, given an aggregate's id, for its partition only,
woken by commits of any recorder instance (on PostgreSQL, through NOTIFY).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest

from asyncsourcing.leases import FencedError
from asyncsourcing.partitions import PartitionError, partition_of
from asyncsourcing.persistence import (
    IntegrityError,
    PartitionTracking,
    Tracking,
    TrackingRecorder,
)
from asyncsourcing.popo import POPOTrackingRecorder
from asyncsourcing.postgres import PostgresTrackingRecorder
from asyncsourcing.sql.tracking import SQLTrackingRecorder
from asyncsourcing.sqlite import SQLiteDatastore, SQLiteTrackingRecorder
from tests.support.paths import ROOT
from tests.support.postgres import datastore

BACKENDS = ["popo", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
SQL_BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]

APP = "upstream"
TRACKING_TABLE = "audit_tracking"


class Views:
    """Recorder instances of one view's tables: ``new()`` makes another, on
    a datastore of its own, as another process would have (in memory, the
    one recorder there is)."""

    def __init__(self, new: Callable[[], TrackingRecorder]) -> None:
        self._new = new
        self.made: list[TrackingRecorder] = []

    def new(self) -> Any:
        recorder = self._new()
        self.made.append(recorder)
        return recorder

    async def close(self) -> None:
        for recorder in self.made:
            if isinstance(recorder, SQLTrackingRecorder):
                await recorder.datastore.close()


def views_of(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Views:
    if backend == "popo":
        recorder = POPOTrackingRecorder()
        return Views(lambda: recorder)
    if backend == "sqlite":
        path = str(tmp_path / "views.sqlite")
        return Views(
            lambda: SQLiteTrackingRecorder(
                # Polling every 30 s: only the commits themselves wake waiters.
                SQLiteDatastore(path, poll_interval=30),
                tracking_table_name=TRACKING_TABLE,
            )
        )
    postgres_env = request.getfixturevalue("postgres_env")
    schema = request.getfixturevalue("pg_schema")
    return Views(
        lambda: PostgresTrackingRecorder(
            # Polling every 30 s: only NOTIFY wakes waiters.
            datastore(postgres_env, schema, POSTGRES_POLL_INTERVAL="30"),
            tracking_table_name=TRACKING_TABLE,
        )
    )


# Sync fixtures, which may get the PostgreSQL fixtures by name, and async
# ones that close the datastores.


@pytest.fixture(params=BACKENDS)
def any_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Views:
    return views_of(request.param, request, tmp_path)


@pytest.fixture(params=SQL_BACKENDS)
def sql_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Views:
    return views_of(request.param, request, tmp_path)


@pytest.fixture
async def views(any_backend: Views) -> AsyncIterator[Views]:
    try:
        yield any_backend
    finally:
        await any_backend.close()


@pytest.fixture
async def sql_views(sql_backend: Views) -> AsyncIterator[Views]:
    """As :func:`views`, without the in-memory backend."""
    try:
        yield sql_backend
    finally:
        await sql_backend.close()


def ids_in_partitions(partitions: int) -> list[UUID]:
    """An originator id in each partition, in order."""
    found: dict[int, UUID] = {}
    while len(found) < partitions:
        originator_id = uuid4()
        found.setdefault(partition_of(originator_id, partitions), originator_id)
    return [found[p] for p in range(partitions)]


def tracking(partition: int, position: int) -> PartitionTracking:
    return PartitionTracking(APP, position, partition)


# Claiming.


async def test_claiming_makes_a_position_per_partition_once(views: Views) -> None:
    view = views.new()
    assert await view.partition_positions(APP) == {}
    if isinstance(view, SQLTrackingRecorder):
        # eventsourcing's tables stay as they are until partitions are claimed.
        assert "audit_partitions" not in " ".join(view.created_tables())

    await view.claim_partitions(APP, 4)
    await view.claim_partitions(APP, 4)  # Idempotent.
    assert await view.partition_positions(APP) == dict.fromkeys(range(4))
    assert await view.max_tracking_id(APP) is None
    assert await view.partition_positions("other") == {}
    if isinstance(view, SQLTrackingRecorder):
        assert "audit_partitions" in " ".join(view.created_tables())


async def test_another_number_of_partitions_is_refused(views: Views) -> None:
    view = views.new()
    await view.claim_partitions(APP, 4)
    with pytest.raises(PartitionError) as raised:
        await views.new().claim_partitions(APP, 8)
    message = str(raised.value)
    assert "4 partitions" in message
    assert "declares 8" in message
    assert "new version of the projection" in message
    if isinstance(view, SQLTrackingRecorder):
        assert "audit_tracking and audit_partitions" in message
    # Nothing changed.
    assert await view.partition_positions(APP) == dict.fromkeys(range(4))


async def test_an_application_tracked_without_partitions_is_refused(
    views: Views,
) -> None:
    view = views.new()
    await view.insert_tracking(Tracking(APP, 5))
    with pytest.raises(PartitionError, match=r"position 5.*without partitions"):
        await view.claim_partitions(APP, 2)
    assert await view.partition_positions(APP) == {}
    assert await view.max_tracking_id(APP) == 5


async def test_claims_racing_in_two_processes_agree(sql_views: Views) -> None:
    first, second = sql_views.new(), sql_views.new()
    await asyncio.gather(
        first.claim_partitions(APP, 3), second.claim_partitions(APP, 3)
    )
    assert await first.partition_positions(APP) == dict.fromkeys(range(3))

    results = await asyncio.gather(
        first.claim_partitions("other", 2),
        second.claim_partitions("other", 5),
        return_exceptions=True,
    )
    # Whichever came first made the rows; the other one was refused.
    assert [isinstance(r, PartitionError) for r in results].count(True) == 1
    assert len(await first.partition_positions("other")) in (2, 5)


# Recording.


async def test_each_partition_moves_forward_on_its_own(views: Views) -> None:
    view = views.new()
    await view.claim_partitions(APP, 2)
    await view.insert_tracking(tracking(0, 3))
    # Partition 1 is behind partition 0: positions are per partition.
    await view.insert_tracking(tracking(1, 1))

    for position in (3, 2):
        with pytest.raises(IntegrityError, match="partition 0 of application"):
            await view.insert_tracking(tracking(0, position))
    assert await view.partition_positions(APP) == {0: 3, 1: 1}

    with pytest.raises(PartitionError, match="No partition 2 of application"):
        await view.insert_tracking(tracking(2, 9))


async def test_a_view_records_partition_tracking_with_its_update(
    sql_views: Views,
) -> None:
    view = sql_views.new()
    await view.claim_partitions(APP, 2)
    async with view.datastore.transaction(commit=True) as conn:
        await view.record_tracking(conn, tracking(1, 4))

    async def failing_update() -> None:
        async with view.datastore.transaction(commit=True) as conn:
            await view.record_tracking(conn, tracking(1, 5))
            raise RuntimeError("the view's update failed")

    with pytest.raises(RuntimeError):
        await failing_update()
    assert await view.partition_positions(APP) == {0: None, 1: 4}

    with pytest.raises(IntegrityError, match=r"partition 1 .*audit_partitions"):
        async with view.datastore.transaction(commit=True) as conn:
            await view.record_tracking(conn, tracking(1, 4))


async def test_the_applications_position_is_the_least_of_its_partitions(
    views: Views,
) -> None:
    view = views.new()
    await view.claim_partitions(APP, 3)
    await view.insert_tracking(tracking(0, 5))
    await view.insert_tracking(tracking(1, 7))
    # Partition 2 has no position yet: neither has the application.
    assert await view.max_tracking_id(APP) is None
    assert not await view.has_tracking_id(APP, 1)

    await view.insert_tracking(tracking(2, 2))
    assert await view.max_tracking_id(APP) == 2
    assert await view.has_tracking_id(APP, 2)
    assert not await view.has_tracking_id(APP, 3)
    # A recorder instance that knows nothing of the partitions reads the same.
    assert await views.new().max_tracking_id(APP) == 2


async def test_marks_move_partitions_forward_only(views: Views) -> None:
    view = views.new()
    await view.claim_partitions(APP, 3)
    await view.insert_tracking(tracking(0, 5))

    await view.record_partition_marks(APP, {0: 3, 1: 4, 2: 6})
    assert await view.partition_positions(APP) == {0: 5, 1: 4, 2: 6}
    await view.record_partition_marks(APP, {1: 2, 2: 6})
    assert await view.partition_positions(APP) == {0: 5, 1: 4, 2: 6}
    assert await view.max_tracking_id(APP) == 4

    # A partition marked up to a position has no event to record up to it.
    with pytest.raises(IntegrityError):
        await view.insert_tracking(tracking(1, 4))
    with pytest.raises(PartitionError):
        await view.record_partition_marks(APP, {3: 9})


async def test_marks_are_fenced_by_the_partitions_leases(sql_views: Views) -> None:
    view = sql_views.new()
    await view.claim_partitions(APP, 2)
    await view.leases.create_table()
    lease = await view.leases.acquire(APP, "audit/0", "runner-a", ttl=30)
    assert lease is not None
    await view.record_partition_marks(APP, {0: 3}, fences=[lease])

    # Another runner takes partition 0 over (its lease's epoch moves on).
    async with view.datastore.transaction(commit=True) as conn:
        await view.leases.fence_out(conn, APP, "audit/0")
    with pytest.raises(FencedError):
        await view.record_partition_marks(APP, {0: 8, 1: 8}, fences=[lease])
    # Nothing was written, not even partition 1's mark.
    assert await view.partition_positions(APP) == {0: 3, 1: None}


# Batch transactions.


async def test_a_batch_of_a_partition_locks_and_writes_that_partition(
    sql_views: Views,
) -> None:
    view, elsewhere = sql_views.new(), sql_views.new()
    await view.claim_partitions(APP, 2)
    await view.insert_tracking(tracking(0, 1))
    await elsewhere.create_table()

    async with view.batch_transaction(APP, partition=0) as batch:
        assert (batch.application_name, batch.partition) == (APP, 0)
        assert batch.position == 1
        await view.insert_tracking(tracking(0, 2))
        await view.insert_tracking(tracking(0, 3))
        # Checked at once, against the recorded and the batch's positions.
        for position in (1, 3):
            with pytest.raises(IntegrityError, match="partition 0"):
                await view.insert_tracking(tracking(0, position))
        # Not written before the batch commits.
        assert await elsewhere.partition_positions(APP) == {0: 1, 1: None}
    assert await view.partition_positions(APP) == {0: 3, 1: None}

    with pytest.raises(PartitionError, match="No partition 5"):
        async with view.batch_transaction(APP, partition=5):
            pass


@pytest.mark.postgres
async def test_batches_of_two_partitions_run_at_once(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    first, second = (
        PostgresTrackingRecorder(
            datastore(postgres_env, pg_schema), tracking_table_name=TRACKING_TABLE
        )
        for _ in range(2)
    )
    try:
        await first.claim_partitions(APP, 2)
        async with first.batch_transaction(APP, partition=0):
            await first.insert_tracking(tracking(0, 10))

            async def other_partition() -> None:
                async with second.batch_transaction(APP, partition=1) as batch:
                    assert batch.position is None
                    await second.insert_tracking(tracking(1, 11))

            # Committed while partition 0's batch is still open: not blocked.
            await asyncio.wait_for(other_partition(), 2)
        assert await first.partition_positions(APP) == {0: 10, 1: 11}
    finally:
        await first.datastore.close()
        await second.datastore.close()


async def test_a_batch_of_the_same_partition_waits_and_sees_the_first(
    sql_views: Views,
) -> None:
    first, second = sql_views.new(), sql_views.new()
    await first.claim_partitions(APP, 2)
    positions_seen: list[int | None] = []

    async def second_batch() -> None:
        async with second.batch_transaction(APP, partition=0) as batch:
            positions_seen.append(batch.position)

    async with first.batch_transaction(APP, partition=0):
        await first.insert_tracking(tracking(0, 7))
        waiting = asyncio.create_task(second_batch())
        await asyncio.sleep(0.2)
        assert not waiting.done()  # It waits for the partition's lock.
    await asyncio.wait_for(waiting, 5)
    assert positions_seen == [7]


# Waiting.


async def test_waiting_for_all_partitions_or_for_an_aggregates(
    views: Views,
) -> None:
    waiting_view = views.new()  # A web handler's, say: it never claims.
    runner_view = views.new()  # The runner's, in another process.
    first, second = ids_in_partitions(2)

    # Started before the partitions are claimed: the waiter learns of them.
    for_all = asyncio.create_task(waiting_view.wait(APP, 5, timeout=5))
    await asyncio.sleep(0.1)
    await runner_view.claim_partitions(APP, 2)
    for_first = asyncio.create_task(
        waiting_view.wait(APP, 5, timeout=5, originator_id=first)
    )
    await asyncio.sleep(0.1)

    await runner_view.insert_tracking(tracking(0, 5))
    await asyncio.wait_for(for_first, 2)
    await asyncio.sleep(0.1)
    assert not for_all.done()  # Partition 1 is still behind.
    # Partition 0 is enough for the first aggregate's events, not the second's.
    await waiting_view.wait(APP, 5, timeout=1, originator_id=first)
    with pytest.raises(TimeoutError, match="partition 1 of application 'upstream'"):
        await waiting_view.wait(APP, 5, timeout=0.2, originator_id=second)

    await runner_view.record_partition_marks(APP, {1: 6})
    await asyncio.wait_for(for_all, 2)
    await waiting_view.wait(APP, 6, timeout=1, originator_id=second)


async def test_a_waiter_started_before_the_claim_learns_of_the_partitions(
    views: Views,
) -> None:
    waiting_view, runner_view = views.new(), views.new()
    waiter = asyncio.create_task(waiting_view.wait(APP, 5, timeout=5))
    await asyncio.sleep(0.1)  # It has read: no position, no partitions.

    await runner_view.claim_partitions(APP, 2)
    await runner_view.insert_tracking(tracking(1, 7))
    await asyncio.sleep(0.1)
    assert not waiter.done()
    await runner_view.insert_tracking(tracking(0, 5))
    await asyncio.wait_for(waiter, 2)


# Records the position of partition 1, then marks partition 0, in a process
# of its own.
RUNNER_SCRIPT = """
import asyncio, sys
from asyncsourcing.persistence import PartitionTracking
from asyncsourcing.sqlite import SQLiteDatastore, SQLiteTrackingRecorder

async def main(path):
    async with SQLiteDatastore(path) as store:
        view = SQLiteTrackingRecorder(store, tracking_table_name="audit_tracking")
        await view.claim_partitions("upstream", 2)
        await view.insert_tracking(PartitionTracking("upstream", 4, 1))
        await view.record_partition_marks("upstream", {0: 4})

asyncio.run(main(sys.argv[1]))
"""


async def test_sqlite_finds_another_processs_positions_by_polling(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "views.sqlite")
    first, second = ids_in_partitions(2)
    async with SQLiteDatastore(path, poll_interval=0.05) as store:
        view = SQLiteTrackingRecorder(store, tracking_table_name=TRACKING_TABLE)
        waiters = [
            asyncio.create_task(view.wait(APP, 4, timeout=10)),
            asyncio.create_task(view.wait(APP, 4, timeout=10, originator_id=second)),
        ]
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            RUNNER_SCRIPT,
            path,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await process.communicate()
        assert process.returncode == 0, stderr.decode()
        await asyncio.wait_for(asyncio.gather(*waiters), 2)
        await view.wait(APP, 4, timeout=1, originator_id=first)


async def test_an_originator_id_changes_nothing_without_partitions(
    views: Views,
) -> None:
    view = views.new()
    waiter = asyncio.create_task(view.wait(APP, 2, timeout=5, originator_id=uuid4()))
    await asyncio.sleep(0.1)
    await views.new().insert_tracking(Tracking(APP, 2))
    await asyncio.wait_for(waiter, 2)


async def test_a_thousand_waiters_of_partitions_share_their_reads(
    views: Views,
) -> None:
    runner_view = views.new()
    await runner_view.claim_partitions(APP, 4)
    ids = ids_in_partitions(4)
    waiting_view = views.new()
    fetched: list[str] = []
    fetch = waiting_view._fetch_position

    async def counting_fetch(key: str) -> int | None:
        fetched.append(key)
        position: int | None = await fetch(key)
        return position

    waiting_view._fetch_position = counting_fetch
    waiters = [
        asyncio.create_task(
            waiting_view.wait(APP, 3, timeout=5, originator_id=ids[n % 4])
        )
        for n in range(1000)
    ]
    await asyncio.sleep(0.2)
    assert not any(w.done() for w in waiters)
    await runner_view.record_partition_marks(APP, dict.fromkeys(range(4), 3))
    await asyncio.wait_for(asyncio.gather(*waiters), 5)
    # The number of partitions, read once; a partition's position, at most
    # once each.
    assert len(fetched) <= 5, fetched


# Dropping.


async def test_drop_tables_drops_the_partitions(sql_views: Views) -> None:
    view = sql_views.new()
    await view.claim_partitions(APP, 4)
    await view.drop_tables()
    await view.create_table()
    assert await view.partition_positions(APP) == {}
    # A new number may be claimed now, as a rebuilt version would.
    await view.claim_partitions(APP, 2)
    assert await view.partition_positions(APP) == dict.fromkeys(range(2))
