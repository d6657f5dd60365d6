"""Partitioned projections: the events processed in partitions, by one runner
or shared between several, each event once, each aggregate's in order.

The projection is the audit log of ``examples/auditlog``: it appends an
entry per event, keyed by the event's notification id (an event processed
twice would fail the runner), with a sequence number that shows the order
in which the entries were appended.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar
from uuid import UUID

import pytest

from asyncsourcing.application import Application
from asyncsourcing.domain import Aggregate
from asyncsourcing.partitions import PartitionError, partition_of
from asyncsourcing.persistence import PartitionTracking, Tracking
from asyncsourcing.projection import ProjectionRunner
from examples.auditlog.postgres import PostgresAuditLog
from examples.auditlog.projection import AuditLogProjection
from examples.auditlog.sqlite import SQLiteAuditLog
from examples.auditlog.views import AuditEntry
from tests.support.postgres import factory_env

SQL_BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]

VIEWS: dict[str, type[Any]] = {"sqlite": SQLiteAuditLog, "postgres": PostgresAuditLog}

Runner = ProjectionRunner[Application[UUID], Any]


@pytest.fixture(params=SQL_BACKENDS)
def backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> tuple[str, dict[str, str]]:
    name: str = request.param
    if name == "sqlite":
        return name, {
            "PERSISTENCE_MODULE": "asyncsourcing.sqlite",
            "SQLITE_DBNAME": str(tmp_path / "app.sqlite"),
            "AUDITLOG_SQLITE_DBNAME": str(tmp_path / "view.sqlite"),
            "LEASE_TTL": "1",
        }
    env = factory_env(
        request.getfixturevalue("postgres_env"), request.getfixturevalue("pg_schema")
    )
    return name, {**env, "LEASE_TTL": "1"}


def runner(
    backend: tuple[str, dict[str, str]],
    projection_class: type[AuditLogProjection] = AuditLogProjection,
    **env: str,
) -> Runner:
    name, backend_env = backend
    return ProjectionRunner(
        application_class=Application[UUID],
        projection_class=projection_class,
        view_class=VIEWS[name],
        env={**backend_env, **env},
    )


async def save_events(
    app: Application[UUID], aggregates: int, events: int
) -> list[Aggregate]:
    """``aggregates`` aggregates, saved ``events`` times each, interleaved."""
    saved = [Aggregate() for _ in range(aggregates)]
    for _ in range(events):
        for aggregate in saved:
            aggregate.trigger_event(Aggregate.Event)
        await app.save(*saved)
    return saved


def check_exactly_once_in_order(entries: Sequence[AuditEntry], last: int) -> None:
    """Every notification up to ``last`` has one entry (the view's key makes
    a second fail), and each aggregate's entries were appended in the order
    of its events."""
    assert [e.notification_id for e in entries] == list(range(1, last + 1))
    by_aggregate: dict[str, list[AuditEntry]] = defaultdict(list)
    for entry in entries:
        by_aggregate[str(entry.originator_id)].append(entry)
    for aggregate_entries in by_aggregate.values():
        in_sequence = sorted(aggregate_entries, key=lambda e: e.sequence)
        versions = [e.originator_version for e in in_sequence]
        assert versions == sorted(versions)


async def test_one_runner_processes_every_partition(
    backend: tuple[str, dict[str, str]],
) -> None:
    async with runner(backend) as audit:
        saved = await save_events(audit.app, aggregates=12, events=5)
        last = await audit.app.recorder.max_notification_id()
        assert last == 12 * 6
        await audit.wait(last, timeout=10)
        assert audit.partitions == 4
        assert audit.partitions_owned == {0, 1, 2, 3}
        check_exactly_once_in_order(await audit.view.entries(), last)
        # Each partition has passed the last position, even one whose
        # aggregates have no event there.
        positions = await audit.view.partition_positions(audit.app_name)
        assert positions == {p: last for p in range(4)}
        assert await audit.view.max_tracking_id(audit.app_name) == last
        # The partitions are the aggregates' own.
        partitions = {partition_of(a.id, 4) for a in saved}
        assert len(partitions) > 1


@pytest.mark.postgres
async def test_waiting_for_an_aggregates_partition(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    # On PostgreSQL: a view transaction of SQLite holds the database's
    # write lock, so there a blocked partition would block all the others.
    backend = ("postgres", {**factory_env(postgres_env, pg_schema), "LEASE_TTL": "1"})

    class Blocked(AuditLogProjection):
        """Holds every partition but one aggregate's until released."""

        name = "auditlog"
        released = asyncio.Event()
        free: ClassVar[int] = -1

        async def process_event(self, domain_event: Any, tracking: Tracking) -> None:
            assert isinstance(tracking, PartitionTracking)
            if tracking.partition != self.free:
                await self.released.wait()
            await super().process_event(domain_event, tracking)

    async with runner(backend, Blocked) as audit:
        aggregate = Aggregate()
        Blocked.free = partition_of(aggregate.id, 4)
        other = Aggregate()
        while partition_of(other.id, 4) == Blocked.free:
            other = Aggregate()
        [*_, recording] = await audit.app.save(other, aggregate)
        # Only the aggregate's partition has passed its event.
        await audit.wait(
            recording.notification.id, timeout=10, originator_id=aggregate.id
        )
        with pytest.raises(TimeoutError):
            await audit.wait(recording.notification.id, timeout=0.3)
        Blocked.released.set()
        await audit.wait(recording.notification.id, timeout=10)
        check_exactly_once_in_order(await audit.view.entries(), 2)


async def test_two_runners_share_the_partitions_and_one_takes_over_when_the_other_stops(
    backend: tuple[str, dict[str, str]],
) -> None:
    async with runner(backend) as first, runner(backend) as second:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while loop.time() < deadline:
            owned = (first.partitions_owned, second.partitions_owned)
            assert not owned[0] & owned[1], owned  # Never one partition twice.
            if owned[0] | owned[1] == {0, 1, 2, 3} and all(owned):
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail(f"not shared: {owned}")
        await save_events(first.app, aggregates=10, events=4)
        first.stop()
        await first.run_forever()
        await save_events(second.app, aggregates=10, events=4)
        last = await second.app.recorder.max_notification_id()
        assert last is not None
        await second.wait(last, timeout=20)
        assert second.partitions_owned == {0, 1, 2, 3}
        check_exactly_once_in_order(await second.view.entries(), last)


async def test_the_partition_count_is_fixed_when_first_run(
    backend: tuple[str, dict[str, str]],
) -> None:
    async with runner(backend) as audit:
        await save_events(audit.app, aggregates=2, events=1)

    class EightPartitions(AuditLogProjection):
        name = "auditlog"
        partitions = 8

    with pytest.raises(PartitionError, match=r"4.*8|8.*4"):
        async with runner(backend, EightPartitions):
            pass
