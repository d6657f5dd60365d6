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
from typing import Any, ClassVar
from uuid import UUID

import pytest

from asyncsourcing.application import Application
from asyncsourcing.asgi import PositionNotReachedError, wait_for_position
from asyncsourcing.domain import Aggregate
from asyncsourcing.leases import partition_lease_name
from asyncsourcing.partitions import PartitionError, partition_of
from asyncsourcing.persistence import PartitionTracking, Tracking
from asyncsourcing.projection import ProjectionRunner, ProjectionVersions
from asyncsourcing.versions import VersionStatus
from examples.auditlog.postgres import PostgresAuditLog
from examples.auditlog.projection import AuditLogProjection
from examples.auditlog.sqlite import SQLiteAuditLog
from examples.auditlog.views import AuditEntry
from examples.eventcounters.projection import SpannerThrown, SpannerThrownError
from tests.support.postgres import factory_env

VIEWS: dict[str, type[Any]] = {"sqlite": SQLiteAuditLog, "postgres": PostgresAuditLog}

Runner = ProjectionRunner[Application[UUID], Any]


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
    audit_backend: tuple[str, dict[str, str]],
) -> None:
    async with runner(audit_backend) as audit:
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
        # So do web services' waits (asyncsourcing.asgi).
        state: Any = {"application": audit.app, "view": audit.view, "runner": audit}
        position = recording.notification.id
        await wait_for_position(state, position, 10, originator_id=aggregate.id)
        with pytest.raises(PositionNotReachedError):
            await wait_for_position(state, position, 0.3)
        Blocked.released.set()
        await audit.wait(recording.notification.id, timeout=10)
        check_exactly_once_in_order(await audit.view.entries(), 2)


async def test_two_runners_share_the_partitions_and_one_takes_over_when_the_other_stops(
    audit_backend: tuple[str, dict[str, str]],
) -> None:
    async with runner(audit_backend) as first, runner(audit_backend) as second:
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
    audit_backend: tuple[str, dict[str, str]],
) -> None:
    async with runner(audit_backend) as audit:
        await save_events(audit.app, aggregates=2, events=1)

    class EightPartitions(AuditLogProjection):
        name = "auditlog"
        partitions = 8

    with pytest.raises(PartitionError, match=r"4.*8|8.*4"):
        async with runner(audit_backend, EightPartitions):
            pass


async def test_an_error_in_one_partition_stops_the_runner_with_it(
    audit_backend: tuple[str, dict[str, str]],
) -> None:
    class Failing(AuditLogProjection):
        name = "auditlog"

        async def process_event(self, domain_event: Any, tracking: Tracking) -> None:
            if isinstance(domain_event, SpannerThrown):
                msg = "This is a deliberate bug"
                raise SpannerThrownError(msg)
            await super().process_event(domain_event, tracking)

    audit = runner(audit_backend, Failing)
    await save_events(audit.app, aggregates=8, events=2)
    spanner = Aggregate()
    spanner.trigger_event(SpannerThrown)
    [*_, failing] = await audit.app.save(spanner)
    with pytest.raises(SpannerThrownError):
        await audit.run_forever(timeout=20)
    # The failing event's partition stopped before it; nothing recorded it
    # (read by a runner of its own: run_forever() closed the one it ran).
    reader = runner(audit_backend)
    try:
        positions = await reader.view.partition_positions(reader.app_name)
        entries = await reader.view.entries()
    finally:
        await reader.close()
    partition = partition_of(spanner.id, 4)
    assert (positions[partition] or 0) < failing.notification.id
    assert failing.notification.id not in {e.notification_id for e in entries}
    assert spanner.id not in {e.originator_id for e in entries}


async def test_a_new_version_rebuilds_and_switches_from_a_partitioned_one(
    audit_backend: tuple[str, dict[str, str]],
) -> None:
    class AuditLogV2(AuditLogProjection):
        name = "auditlog"
        version = 2
        partitions = 2  # A new version may have another count.

    name, env = audit_backend
    async with runner(audit_backend) as first:
        await save_events(first.app, aggregates=6, events=3)
        last = await first.app.recorder.max_notification_id()
        await first.wait(last, timeout=10)
        async with ProjectionVersions(
            application_class=Application[UUID],
            projection_class=AuditLogV2,
            view_class=VIEWS[name],
            env=env,
        ) as versions:
            record = await versions.rebuild(max_lag=0)
            # The mark is where every partition of version 1 had got to.
            assert (record.version, record.replay_until) == (2, last)
            assert record.status is VersionStatus.SERVING
            view = await versions.serving_view()
            check_exactly_once_in_order(await view.entries(), last)
            assert await view.partition_positions(first.app_name) == {0: last, 1: last}
        # Version 1's runner was fenced off in each partition: it lets them go.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while first.partitions_owned:
            assert loop.time() < deadline, first.partitions_owned
            await asyncio.sleep(0.05)


async def test_a_fenced_off_partition_is_let_go_and_nothing_is_processed_twice(
    audit_backend: tuple[str, dict[str, str]],
) -> None:
    async with runner(audit_backend) as audit:
        await save_events(audit.app, aggregates=12, events=2)
        view = audit.view
        # Another runner's takeover of partition 2, as a switch does it: the
        # lease's epoch moves on, so the runner's next transaction there is
        # fenced off, and it lets the partition go.
        async with view.datastore.transaction(commit=True) as conn:
            await view.leases.fence_out(
                conn, audit.app_name, partition_lease_name(AuditLogProjection.name, 2)
            )
        writing = asyncio.create_task(save_events(audit.app, aggregates=12, events=4))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while 2 in audit.partitions_owned:
            assert loop.time() < deadline
            await asyncio.sleep(0.02)
        await writing
        # The runner takes it back once its lease expires, and goes on.
        last = await audit.app.recorder.max_notification_id()
        assert last is not None
        await audit.wait(last, timeout=20)
        assert audit.partitions_owned == {0, 1, 2, 3}
        check_exactly_once_in_order(await view.entries(), last)


async def test_a_projection_run_without_its_partitions_is_refused(
    audit_backend: tuple[str, dict[str, str]],
) -> None:
    async with runner(audit_backend) as audit:
        await save_events(audit.app, aggregates=4, events=1)
        await audit.wait(4, timeout=10)

    class Unpartitioned(AuditLogProjection):
        """The same projection, its partitions forgotten."""

        name = "auditlog"
        partitions = 1

    with pytest.raises(PartitionError, match=r"has 4 partitions .* declares 1"):
        async with runner(audit_backend, Unpartitioned):
            pass
