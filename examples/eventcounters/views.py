"""The event counters view: its interface, and the in-memory implementation."""

from __future__ import annotations

from abc import abstractmethod

from asyncsourcing.persistence import Tracking, TrackingRecorder
from asyncsourcing.popo import POPOTrackingRecorder


class EventCountersView(TrackingRecorder):
    """Counts "created" events and subsequent events of an application."""

    @abstractmethod
    async def get_created_event_counter(self) -> int: ...

    @abstractmethod
    async def get_subsequent_event_counter(self) -> int: ...

    @abstractmethod
    async def incr_created_event_counter(self, tracking: Tracking) -> None: ...

    @abstractmethod
    async def incr_subsequent_event_counter(self, tracking: Tracking) -> None: ...


class BulkEventCountersView(EventCountersView):
    """An :class:`EventCountersView` that also counts many events at once.

    The tutorial's interface is :class:`EventCountersView`; this one adds the
    command of :class:`~examples.eventcounters.projection.BulkEventCountersProjection`.
    """

    @abstractmethod
    async def add_to_counters(
        self, created: int, subsequent: int, tracking: Tracking
    ) -> None:
        """Add ``created`` and ``subsequent`` to the counters, recording
        ``tracking`` (that of the last event counted) in the same transaction.

        Either count may be zero; with both zero only ``tracking`` is recorded.
        """


class POPOEventCounters(POPOTrackingRecorder, BulkEventCountersView):
    def __init__(self) -> None:
        super().__init__()
        self._created_event_counter = 0
        self._subsequent_event_counter = 0

    async def get_created_event_counter(self) -> int:
        return self._created_event_counter

    async def get_subsequent_event_counter(self) -> int:
        return self._subsequent_event_counter

    async def incr_created_event_counter(self, tracking: Tracking) -> None:
        async with self.database_lock:
            self.assert_tracking_uniqueness(tracking)
            self.record_tracking(tracking)
            self._created_event_counter += 1

    async def incr_subsequent_event_counter(self, tracking: Tracking) -> None:
        async with self.database_lock:
            self.assert_tracking_uniqueness(tracking)
            self.record_tracking(tracking)
            self._subsequent_event_counter += 1

    async def add_to_counters(
        self, created: int, subsequent: int, tracking: Tracking
    ) -> None:
        async with self.database_lock:
            self.assert_tracking_uniqueness(tracking)
            self.record_tracking(tracking)
            self._created_event_counter += created
            self._subsequent_event_counter += subsequent
