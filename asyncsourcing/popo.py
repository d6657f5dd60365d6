"""The in-memory backend: plain Python objects, for tests and examples.

Each recorder is its own database. Writes are serialised by the recorder's
:attr:`~POPORecorder.database_lock` (an :class:`asyncio.Lock`);
subscriptions and waiters are woken directly by the writes, with no polling.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from eventsourcing.utils import reversed_keys

from asyncsourcing.partitions import (
    check_partitions,
    least_position,
    mismatch_error,
    unclaimed_error,
    unpartitioned_error,
)
from asyncsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    InfrastructureFactory,
    IntegrityError,
    Notification,
    ParkedEvent,
    PartitionTracking,
    ProcessRecorder,
    StoredEvent,
    Subscription,
    Tracking,
    TrackingRecorder,
    describe_tracking,
    position_key,
)

if TYPE_CHECKING:
    from asyncsourcing.leases import Lease

__all__ = [
    "POPOAggregateRecorder",
    "POPOApplicationRecorder",
    "POPOFactory",
    "POPOProcessRecorder",
    "POPORecorder",
    "POPOSubscription",
    "POPOTrackingRecorder",
]


class POPORecorder:
    """The base of the in-memory recorders: the lock that serialises writes."""

    def __init__(self) -> None:
        self.database_lock = asyncio.Lock()
        """Held by every write of the recorder: a view holds it around its
        update and the tracking it records with it."""

    @property
    def _database_lock(self) -> asyncio.Lock:
        """:attr:`database_lock`, by its former name (eventsourcing's): an
        alias kept for the views that use it."""
        return self.database_lock


class POPOAggregateRecorder(POPORecorder, AggregateRecorder):
    def __init__(self) -> None:
        super().__init__()
        self._stored_events: list[StoredEvent] = []
        self._stored_events_index: dict[str, dict[int, int]] = defaultdict(dict)

    async def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        async with self.database_lock:
            self._assert_uniqueness(stored_events, **kwargs)
            return self._update_table(stored_events, **kwargs)

    def _assert_uniqueness(
        self, stored_events: Sequence[StoredEvent], **_: Any
    ) -> None:
        new = set()
        for s in stored_events:
            if s.originator_version in self._stored_events_index[str(s.originator_id)]:
                msg = (
                    f"Stored event already recorded: originator "
                    f"{s.originator_id} version {s.originator_version}"
                )
                raise IntegrityError(msg)
            new.add((str(s.originator_id), s.originator_version))
        if len(new) < len(stored_events):
            msg = "Stored events are not unique: the same version appears twice"
            raise IntegrityError(msg)

    def _update_table(
        self, stored_events: Sequence[StoredEvent], **_: Any
    ) -> Sequence[int]:
        notification_ids = []
        for s in stored_events:
            self._stored_events.append(s)
            position = len(self._stored_events)
            self._stored_events_index[str(s.originator_id)][s.originator_version] = (
                position - 1
            )
            notification_ids.append(position)
        return notification_ids

    async def select_events(
        self,
        originator_id: UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Sequence[StoredEvent]:
        results = []
        index = self._stored_events_index.get(str(originator_id), {})
        versions: Iterable[int] = reversed_keys(index) if desc else index.keys()
        for version in versions:
            if gt is not None and version <= gt:
                continue
            if lte is not None and version > lte:
                continue
            results.append(self._stored_events[index[version]])
            if len(results) == limit:
                break
        return results


class POPOApplicationRecorder(POPOAggregateRecorder, ApplicationRecorder):
    def __init__(self) -> None:
        super().__init__()
        self._subscriptions: set[Subscription[Any]] = set()

    async def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        notification_ids = await super().insert_events(stored_events, **kwargs)
        for subscription in self._subscriptions:
            subscription.notify()
        return notification_ids

    async def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Notification]:
        if start is None:
            start, inclusive_of_start = 1, True
        first = max(start if inclusive_of_start else start + 1, 1)
        last = len(self._stored_events) if stop is None else stop
        results: list[Notification] = []
        for notification_id in range(first, min(last, len(self._stored_events)) + 1):
            s = self._stored_events[notification_id - 1]
            if topics and s.topic not in topics:
                continue
            results.append(
                Notification(
                    id=notification_id,
                    originator_id=s.originator_id,
                    originator_version=s.originator_version,
                    topic=s.topic,
                    state=s.state,
                )
            )
            if len(results) == limit:
                break
        return results

    async def max_notification_id(self) -> int | None:
        return len(self._stored_events) or None

    def subscribe(
        self, gt: int | None = None, topics: Sequence[str] = ()
    ) -> Subscription[ApplicationRecorder]:
        return POPOSubscription(self, gt=gt, topics=topics)


class POPOSubscription(Subscription[POPOApplicationRecorder]):
    """Woken directly by the recorder's ``insert_events()``."""

    async def _start_listening(self) -> None:
        await super()._start_listening()
        self._recorder._subscriptions.add(self)

    async def _stop_listening(self) -> None:
        self._recorder._subscriptions.discard(self)


class POPOTrackingRecorder(POPORecorder, TrackingRecorder):
    """Positions of processed events, in memory.

    A view subclasses it, and in its command methods records tracking with
    its update, under the recorder's lock::

        async with self.database_lock:
            self.assert_tracking_uniqueness(tracking)
            self.record_tracking(tracking)
            ...  # The view's update.

    (``_database_lock``, ``_assert_tracking_uniqueness`` and
    ``_insert_tracking``, eventsourcing's names, stay as aliases.)

    The positions of a partitioned projection are kept per partition
    (:meth:`claim_partitions`); the view records :class:`PartitionTracking`
    as it records :class:`Tracking`.
    """

    _IN_MEMORY = "in memory"  # Where the positions are, for messages.

    def __init__(self) -> None:
        super().__init__()
        self._max_tracking_ids: dict[str, int] = {}
        # The position of each partition of the applications that have them.
        self._partition_positions: dict[str, dict[int, int | None]] = {}
        self._parked: list[ParkedEvent] = []

    def assert_tracking_uniqueness(self, tracking: Tracking) -> None:
        """Raise :class:`IntegrityError` unless ``tracking`` is ahead of the
        recorded position of its application (call it under
        :attr:`database_lock`, before the update)."""
        self._assert_tracking_uniqueness(tracking)

    def record_tracking(self, tracking: Tracking) -> None:
        """Record ``tracking``, checked by :meth:`assert_tracking_uniqueness`
        (under :attr:`database_lock`), and wake its waiters."""
        self._insert_tracking(tracking)

    # eventsourcing's names of the two, kept for the views that use them.
    # The public names call them, so that a subclass overriding one, as
    # views written for eventsourcing may, changes both.

    def _assert_tracking_uniqueness(self, tracking: Tracking) -> None:
        max_tracking_id = self._recorded(tracking)
        if max_tracking_id is not None and max_tracking_id >= tracking.notification_id:
            msg = (
                f"Tracking notification ID {tracking.notification_id} "
                f"not greater than current max tracking ID {max_tracking_id} "
                f"for {describe_tracking(tracking)}"
            )
            raise IntegrityError(msg)

    def _insert_tracking(self, tracking: Tracking) -> None:
        if isinstance(tracking, PartitionTracking):
            self._partition_positions[tracking.application_name][tracking.partition] = (
                tracking.notification_id
            )
        else:
            self._max_tracking_ids[tracking.application_name] = tracking.notification_id
        self.position_board.advance(position_key(tracking), tracking.notification_id)

    def _recorded(self, tracking: Tracking) -> int | None:
        """The recorded position of ``tracking``'s application, or partition
        (raising :class:`~asyncsourcing.partitions.PartitionError` if it was
        never claimed)."""
        name = tracking.application_name
        if not isinstance(tracking, PartitionTracking):
            return self._max_tracking_ids.get(name)
        positions = self._partition_positions.get(name, {})
        if tracking.partition not in positions:
            raise unclaimed_error(self._IN_MEMORY, name, tracking.partition)
        return positions[tracking.partition]

    async def insert_tracking(self, tracking: Tracking) -> None:
        async with self.database_lock:
            self.assert_tracking_uniqueness(tracking)
            self.record_tracking(tracking)

    async def max_tracking_id(self, application_name: str) -> int | None:
        positions = self._partition_positions.get(application_name)
        if positions is not None:
            return least_position(positions)
        return self._max_tracking_ids.get(application_name)

    async def claim_partitions(self, application_name: str, partitions: int) -> None:
        check_partitions(partitions)
        async with self.database_lock:
            position = self._max_tracking_ids.get(application_name)
            if position is not None:
                raise unpartitioned_error(self._IN_MEMORY, application_name, position)
            positions = self._partition_positions.setdefault(
                application_name, dict.fromkeys(range(partitions))
            )
            if len(positions) != partitions:
                raise mismatch_error(
                    self._IN_MEMORY, application_name, len(positions), partitions
                )
            self.position_board.advance_partitions(application_name, positions)

    async def partition_positions(self, application_name: str) -> dict[int, int | None]:
        return dict(self._partition_positions.get(application_name, {}))

    async def record_partition_marks(
        self,
        application_name: str,
        marks: Mapping[int, int],
        fences: Sequence[Lease] = (),
    ) -> None:
        """As :meth:`TrackingRecorder.record_partition_marks
        <asyncsourcing.persistence.TrackingRecorder.record_partition_marks>`;
        ``fences`` are not checked: runners in memory share no leases."""
        async with self.database_lock:
            trackings = [
                PartitionTracking(application_name, mark, partition)
                for partition, mark in marks.items()
            ]
            for tracking in trackings:
                self._recorded(tracking)  # Each claimed, before any is moved.
            for tracking in trackings:
                recorded = self._recorded(tracking)
                if recorded is None or recorded < tracking.notification_id:
                    self._insert_tracking(tracking)

    async def park(
        self, tracking: Tracking, topic: str, state: bytes, error: str
    ) -> None:
        async with self.database_lock:
            self.assert_tracking_uniqueness(tracking)
            self._parked.append(
                ParkedEvent(
                    tracking.application_name,
                    tracking.notification_id,
                    topic,
                    state,
                    error,
                    datetime.now(UTC),
                )
            )
            self.record_tracking(tracking)

    async def parked(self, application_name: str) -> list[ParkedEvent]:
        return [p for p in self._parked if p.application_name == application_name]


class POPOProcessRecorder(
    POPOTrackingRecorder, POPOApplicationRecorder, ProcessRecorder
):
    def _assert_uniqueness(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> None:
        super()._assert_uniqueness(stored_events, **kwargs)
        tracking: Tracking | None = kwargs.get("tracking")
        if tracking is not None:
            self.assert_tracking_uniqueness(tracking)

    def _update_table(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int]:
        notification_ids = super()._update_table(stored_events, **kwargs)
        tracking: Tracking | None = kwargs.get("tracking")
        if tracking is not None:
            self.record_tracking(tracking)
        return notification_ids


class POPOFactory(InfrastructureFactory[POPOTrackingRecorder]):
    """Every recorder it makes is a separate in-memory database."""

    def construct_aggregate_recorder(
        self, purpose: str = "events"
    ) -> AggregateRecorder:
        return POPOAggregateRecorder()

    def construct_application_recorder(self) -> ApplicationRecorder:
        cls = self._resolve_recorder_class(
            self.APPLICATION_RECORDER_TOPIC, POPOApplicationRecorder
        )
        recorder: ApplicationRecorder = cls()
        return recorder

    def construct_tracking_recorder(
        self, tracking_recorder_class: type[POPOTrackingRecorder] | None = None
    ) -> POPOTrackingRecorder:
        cls = self._resolve_recorder_class(
            self.TRACKING_RECORDER_TOPIC, POPOTrackingRecorder, tracking_recorder_class
        )
        recorder: POPOTrackingRecorder = cls()
        return recorder

    def construct_process_recorder(self) -> ProcessRecorder:
        cls = self._resolve_recorder_class(
            self.PROCESS_RECORDER_TOPIC, POPOProcessRecorder
        )
        recorder: ProcessRecorder = cls()
        return recorder
