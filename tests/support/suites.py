"""Recorder test suites, written once and run against every backend.

A backend's test module subclasses these suites and provides a ``factory``
fixture yielding a ready :class:`InfrastructureFactory` on a fresh, empty
database (closing it afterwards).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from uuid import UUID, uuid4

import pytest

from asyncsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    InfrastructureFactory,
    IntegrityError,
    Notification,
    ProcessRecorder,
    StoredEvent,
    Tracking,
    TrackingRecorder,
    WaitInterruptedError,
)

TOPIC_A = "tests.topics:A"
TOPIC_B = "tests.topics:B"


def stored(originator_id: UUID, version: int, topic: str = TOPIC_A) -> StoredEvent:
    return StoredEvent(
        originator_id=originator_id,
        originator_version=version,
        topic=topic,
        state=f'{{"n": {version}}}'.encode(),
    )


async def take(subscription: Any, n: int, timeout: float = 5.0) -> list[Notification]:
    """The next ``n`` notifications of ``subscription``."""
    taken: list[Notification] = []

    async def read() -> None:
        async for notification in subscription:
            taken.append(notification)
            if len(taken) == n:
                return

    await asyncio.wait_for(read(), timeout)
    return taken


class AggregateRecorderSuite:
    """What every aggregate recorder does."""

    @pytest.fixture
    async def recorder(self, factory: InfrastructureFactory[Any]) -> AggregateRecorder:
        return await factory.aggregate_recorder()

    async def test_insert_and_select_events(self, recorder: AggregateRecorder) -> None:
        originator_id = uuid4()
        assert await recorder.select_events(originator_id) == []

        await recorder.insert_events([stored(originator_id, 1)])
        await recorder.insert_events(
            [stored(originator_id, 2), stored(originator_id, 3)]
        )

        events = await recorder.select_events(originator_id)
        assert [e.originator_version for e in events] == [1, 2, 3]
        assert events[0] == stored(originator_id, 1)
        assert isinstance(events[0].originator_id, UUID)

    async def test_select_events_gt_lte_desc_limit(
        self, recorder: AggregateRecorder
    ) -> None:
        originator_id = uuid4()
        await recorder.insert_events([stored(originator_id, v) for v in range(1, 6)])

        async def versions(**kwargs: Any) -> list[int]:
            events = await recorder.select_events(originator_id, **kwargs)
            return [e.originator_version for e in events]

        assert await versions(gt=2) == [3, 4, 5]
        assert await versions(lte=2) == [1, 2]
        assert await versions(gt=1, lte=4) == [2, 3, 4]
        assert await versions(desc=True) == [5, 4, 3, 2, 1]
        assert await versions(desc=True, limit=2) == [5, 4]
        assert await versions(limit=2) == [1, 2]
        assert await versions(desc=True, lte=3, limit=1) == [3]

    async def test_conflicting_version_records_nothing(
        self, recorder: AggregateRecorder
    ) -> None:
        originator_id = uuid4()
        await recorder.insert_events([stored(originator_id, 1)])

        with pytest.raises(IntegrityError):
            await recorder.insert_events(
                [stored(originator_id, 2), stored(originator_id, 1)]
            )

        events = await recorder.select_events(originator_id)
        assert [e.originator_version for e in events] == [1]

    async def test_duplicate_version_in_one_batch_records_nothing(
        self, recorder: AggregateRecorder
    ) -> None:
        originator_id = uuid4()
        with pytest.raises(IntegrityError):
            await recorder.insert_events(
                [stored(originator_id, 1), stored(originator_id, 1)]
            )
        assert await recorder.select_events(originator_id) == []


class ApplicationRecorderSuite(AggregateRecorderSuite):
    """What every application recorder does, on top of an aggregate recorder."""

    @pytest.fixture
    async def recorder(
        self, factory: InfrastructureFactory[Any]
    ) -> ApplicationRecorder:
        return await factory.application_recorder()

    async def test_notification_ids_follow_insertion_order(
        self, recorder: ApplicationRecorder
    ) -> None:
        assert await recorder.max_notification_id() is None
        a, b = uuid4(), uuid4()
        ids1 = await recorder.insert_events([stored(a, 1), stored(b, 1)])
        ids2 = await recorder.insert_events([stored(a, 2)])
        assert ids1 is not None and ids2 is not None
        assert len(ids1) == 2 and len(ids2) == 1
        assert ids1[0] < ids1[1] < ids2[0]
        assert await recorder.max_notification_id() == ids2[0]

        notifications = await recorder.select_notifications(start=None, limit=10)
        assert [n.id for n in notifications] == [*ids1, *ids2]
        assert [(n.originator_id, n.originator_version) for n in notifications] == [
            (a, 1),
            (b, 1),
            (a, 2),
        ]

    async def test_select_notifications_range_and_topics(
        self, recorder: ApplicationRecorder
    ) -> None:
        a = uuid4()
        topics = [TOPIC_A, TOPIC_B, TOPIC_A, TOPIC_B, TOPIC_A]
        ids = await recorder.insert_events(
            [stored(a, v, t) for v, t in enumerate(topics, start=1)]
        )
        assert ids is not None

        async def selected(*args: Any, **kwargs: Any) -> list[int]:
            return [n.id for n in await recorder.select_notifications(*args, **kwargs)]

        assert await selected(ids[0], 2) == ids[:2]
        assert await selected(ids[1], 10) == ids[1:]
        assert await selected(ids[1], 10, inclusive_of_start=False) == ids[2:]
        assert await selected(ids[0], 10, stop=ids[2]) == ids[:3]
        assert await selected(ids[0], 10, topics=[TOPIC_B]) == [ids[1], ids[3]]
        assert await selected(ids[0], 1, topics=[TOPIC_B]) == [ids[1]]
        assert await selected(ids[-1], 10, inclusive_of_start=False) == []

    async def test_conflict_leaves_the_application_sequence_unchanged(
        self, recorder: ApplicationRecorder
    ) -> None:
        a = uuid4()
        await recorder.insert_events([stored(a, 1)])
        with pytest.raises(IntegrityError):
            await recorder.insert_events([stored(uuid4(), 1), stored(a, 1)])
        assert len(await recorder.select_notifications(None, 10)) == 1
        ids = await recorder.insert_events([stored(a, 2)])
        assert ids is not None
        assert [
            n.originator_version for n in await recorder.select_notifications(None, 10)
        ] == [1, 2]

    async def test_subscription_catches_up_then_follows(
        self, recorder: ApplicationRecorder
    ) -> None:
        a = uuid4()
        await recorder.insert_events([stored(a, 1), stored(a, 2)])
        async with recorder.subscribe() as subscription:
            caught_up = await take(subscription, 2)
            assert [n.originator_version for n in caught_up] == [1, 2]

            later = asyncio.create_task(take(subscription, 2))
            await asyncio.sleep(0.05)
            assert not later.done()
            await recorder.insert_events([stored(a, 3)])
            await recorder.insert_events([stored(a, 4)])
            followed = await later
            assert [n.originator_version for n in followed] == [3, 4]
            assert [n.id for n in caught_up + followed] == sorted(
                n.id for n in caught_up + followed
            )

    async def test_subscription_resumes_after_gt(
        self, recorder: ApplicationRecorder
    ) -> None:
        a = uuid4()
        ids = await recorder.insert_events([stored(a, v) for v in range(1, 5)])
        assert ids is not None
        async with recorder.subscribe(gt=ids[1]) as subscription:
            resumed = await take(subscription, 2)
        assert [n.id for n in resumed] == ids[2:]

    async def test_subscription_filters_topics(
        self, recorder: ApplicationRecorder
    ) -> None:
        a = uuid4()
        await recorder.insert_events([stored(a, 1, TOPIC_A), stored(a, 2, TOPIC_B)])
        async with recorder.subscribe(topics=[TOPIC_B]) as subscription:
            first = await take(subscription, 1)
            await recorder.insert_events([stored(a, 3, TOPIC_A), stored(a, 4, TOPIC_B)])
            second = await take(subscription, 1)
        assert [n.originator_version for n in first + second] == [2, 4]

    async def test_subscription_stop_ends_iteration(
        self, recorder: ApplicationRecorder
    ) -> None:
        async with recorder.subscribe() as subscription:
            waiting = asyncio.create_task(take(subscription, 1))
            await asyncio.sleep(0.05)
            subscription.stop()
            # The iteration ends without yielding anything.
            assert await asyncio.wait_for(waiting, 2) == []

    async def test_subscription_sees_concurrent_writers_in_order(
        self, recorder: ApplicationRecorder
    ) -> None:
        writers, per_writer = 4, 25

        async def write(n: int) -> None:
            originator_id = uuid4()
            for version in range(1, per_writer + 1):
                await recorder.insert_events([stored(originator_id, version)])

        async with recorder.subscribe() as subscription:
            reading = asyncio.create_task(take(subscription, writers * per_writer, 20))
            await asyncio.gather(*(write(n) for n in range(writers)))
            seen = await reading
        ids = [n.id for n in seen]
        assert ids == sorted(set(ids))
        assert len(ids) == writers * per_writer

    async def test_concurrent_inserts_each_get_their_own_ids(
        self, recorder: ApplicationRecorder
    ) -> None:
        writes = [[stored(a, 1), stored(a, 2)] for a in (uuid4() for _ in range(64))]
        results = await asyncio.gather(*(recorder.insert_events(w) for w in writes))

        notifications = {
            n.id: n for n in await recorder.select_notifications(None, 200)
        }
        assert len(notifications) == 128
        for write, ids in zip(writes, results, strict=True):
            # Each insert's ids are its own events', in order, and consecutive.
            assert ids is not None
            assert [notifications[i].originator_id for i in ids] == [
                e.originator_id for e in write
            ]
            assert list(ids) == [ids[0], ids[0] + 1]

    async def test_a_conflict_fails_only_its_own_concurrent_insert(
        self, recorder: ApplicationRecorder
    ) -> None:
        taken = uuid4()
        await recorder.insert_events([stored(taken, 1)])
        writes = [[stored(uuid4(), 1)] for _ in range(20)]
        writes.insert(7, [stored(uuid4(), 1), stored(taken, 1)])  # Conflicts.

        results = await asyncio.gather(
            *(recorder.insert_events(w) for w in writes), return_exceptions=True
        )

        failed = [i for i, r in enumerate(results) if isinstance(r, BaseException)]
        assert failed == [7]
        assert isinstance(results[7], IntegrityError)
        notifications = await recorder.select_notifications(None, 100)
        assert len(notifications) == 1 + 20  # None of the conflicting insert's.


class TrackingRecorderSuite:
    """What every tracking recorder does."""

    @pytest.fixture
    async def recorder(self, factory: InfrastructureFactory[Any]) -> TrackingRecorder:
        return await factory.tracking_recorder()

    async def test_positions_only_move_forward(
        self, recorder: TrackingRecorder
    ) -> None:
        assert await recorder.max_tracking_id("upstream") is None
        assert await recorder.has_tracking_id("upstream", None)
        assert not await recorder.has_tracking_id("upstream", 1)

        await recorder.insert_tracking(Tracking("upstream", 1))
        await recorder.insert_tracking(Tracking("upstream", 5))
        assert await recorder.max_tracking_id("upstream") == 5
        assert await recorder.has_tracking_id("upstream", 4)
        assert await recorder.has_tracking_id("upstream", 5)
        assert not await recorder.has_tracking_id("upstream", 6)

        for position in (5, 3):
            with pytest.raises(IntegrityError):
                await recorder.insert_tracking(Tracking("upstream", position))
        assert await recorder.max_tracking_id("upstream") == 5

        # Application names are tracked independently.
        assert await recorder.max_tracking_id("other") is None
        await recorder.insert_tracking(Tracking("other", 2))
        assert await recorder.max_tracking_id("other") == 2
        assert await recorder.max_tracking_id("upstream") == 5

    async def test_wait_returns_for_recorded_and_times_out_otherwise(
        self, recorder: TrackingRecorder
    ) -> None:
        await recorder.wait("upstream", None)
        await recorder.insert_tracking(Tracking("upstream", 3))
        await recorder.wait("upstream", 3)
        await recorder.wait("upstream", 2)
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="notification 4"):
            await recorder.wait("upstream", 4, timeout=0.2)
        assert time.monotonic() - started >= 0.19

    async def test_wait_is_woken_by_the_insert(
        self, recorder: TrackingRecorder
    ) -> None:
        await recorder.insert_tracking(Tracking("upstream", 1))

        async def waiter() -> None:
            await recorder.wait("upstream", 2, timeout=5)

        task = asyncio.create_task(waiter())
        await asyncio.sleep(0.1)
        assert not task.done()
        await recorder.insert_tracking(Tracking("upstream", 2))
        # Woken by the insert, not by a poll: as soon as the insert returns,
        # before any read, the waiters' board knows the new position.
        assert recorder.position_board.known("upstream") == 2
        await task

    async def test_many_waiters_are_all_woken(self, recorder: TrackingRecorder) -> None:
        waiters = [
            asyncio.create_task(recorder.wait("upstream", n % 3 + 1, timeout=5))
            for n in range(200)
        ]
        await asyncio.sleep(0.05)
        assert not any(w.done() for w in waiters)
        await recorder.insert_tracking(Tracking("upstream", 3))
        await asyncio.wait_for(asyncio.gather(*waiters), 2)

    async def test_wait_interrupted(self, recorder: TrackingRecorder) -> None:
        interrupt = asyncio.Event()
        task = asyncio.create_task(
            recorder.wait("upstream", 1, timeout=5, interrupt=interrupt)
        )
        await asyncio.sleep(0.05)
        interrupt.set()
        with pytest.raises(WaitInterruptedError):
            await asyncio.wait_for(task, 1)

    async def test_cancelled_waiter_leaves_no_task(
        self, recorder: TrackingRecorder
    ) -> None:
        before = asyncio.all_tasks()
        task = asyncio.create_task(recorder.wait("upstream", 1, timeout=5))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.05)
        left = {t for t in asyncio.all_tasks() - before if not t.done()}
        # A backend may keep one listener task per datastore, never one per waiter.
        assert len(left) <= 1
        # A later waiter is still woken.
        later = asyncio.create_task(recorder.wait("upstream", 1, timeout=5))
        await recorder.insert_tracking(Tracking("upstream", 1))
        await asyncio.wait_for(later, 2)

    async def test_batch_transaction_checks_each_position_and_commits_the_last(
        self, recorder: TrackingRecorder
    ) -> None:
        if recorder.batch_transaction() is None:
            pytest.skip("the backend does not batch")
        await recorder.insert_tracking(Tracking("upstream", 1))
        waiter = asyncio.create_task(recorder.wait("upstream", 3, timeout=5))

        batch = recorder.batch_transaction()
        assert batch is not None
        async with batch:
            await recorder.insert_tracking(Tracking("upstream", 2))
            await recorder.insert_tracking(Tracking("upstream", 3))
            # Checked at once, against the recorded and the batch's positions.
            for position in (1, 3):
                with pytest.raises(IntegrityError):
                    await recorder.insert_tracking(Tracking("upstream", position))
            await asyncio.sleep(0.05)
            assert not waiter.done()  # Nothing is committed yet.
        await asyncio.wait_for(waiter, 2)
        assert await recorder.max_tracking_id("upstream") == 3

        # A batch that fails records nothing.
        async def failing_batch() -> None:
            batch = recorder.batch_transaction()
            assert batch is not None
            async with batch:
                await recorder.insert_tracking(Tracking("upstream", 4))
                raise RuntimeError("the view failed")

        with pytest.raises(RuntimeError):
            await failing_batch()
        assert await recorder.max_tracking_id("upstream") == 3


class ProcessRecorderSuite(ApplicationRecorderSuite, TrackingRecorderSuite):
    """What every process recorder does: events and tracking, together or not at all."""

    @pytest.fixture
    async def recorder(self, factory: InfrastructureFactory[Any]) -> ProcessRecorder:
        return await factory.process_recorder()

    async def test_events_and_tracking_are_recorded_together(
        self, recorder: ProcessRecorder
    ) -> None:
        a = uuid4()
        await recorder.insert_events([stored(a, 1)], tracking=Tracking("upstream", 1))
        assert await recorder.max_tracking_id("upstream") == 1

        # A tracking conflict records no events.
        with pytest.raises(IntegrityError):
            await recorder.insert_events(
                [stored(a, 2)], tracking=Tracking("upstream", 1)
            )
        assert len(await recorder.select_events(a)) == 1

        # An event conflict records no tracking.
        with pytest.raises(IntegrityError):
            await recorder.insert_events(
                [stored(a, 1)], tracking=Tracking("upstream", 2)
            )
        assert await recorder.max_tracking_id("upstream") == 1

        # Tracking without new events is recorded too.
        await recorder.insert_events([], tracking=Tracking("upstream", 2))
        assert await recorder.max_tracking_id("upstream") == 2

    async def test_wait_is_woken_by_insert_events_with_tracking(
        self, recorder: ProcessRecorder
    ) -> None:
        task = asyncio.create_task(recorder.wait("upstream", 1, timeout=5))
        await asyncio.sleep(0.05)
        await recorder.insert_events(
            [stored(uuid4(), 1)], tracking=Tracking("upstream", 1)
        )
        await asyncio.wait_for(task, 1)
