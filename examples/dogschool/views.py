"""The counters view: its interface, and the in-memory implementation."""

from __future__ import annotations

from abc import abstractmethod

from asyncsourcing.persistence import Tracking, TrackingRecorder
from asyncsourcing.popo import POPOTrackingRecorder


class CountersView(TrackingRecorder):
    """Named counts, each increment recorded with the tracking of its event."""

    @abstractmethod
    async def get_count(self, name: str) -> int: ...

    @abstractmethod
    async def incr_count(self, name: str, tracking: Tracking) -> None: ...


class POPOCounters(POPOTrackingRecorder, CountersView):
    def __init__(self) -> None:
        super().__init__()
        self._counts: dict[str, int] = {}

    async def get_count(self, name: str) -> int:
        return self._counts.get(name, 0)

    async def incr_count(self, name: str, tracking: Tracking) -> None:
        async with self.database_lock:
            self.assert_tracking_uniqueness(tracking)
            self.record_tracking(tracking)
            self._counts[name] = self._counts.get(name, 0) + 1
