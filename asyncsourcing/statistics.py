"""What a projection runner has done: counters kept in memory, read as a snapshot."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = ["RunnerCounters", "RunnerStatistics"]


@dataclass(frozen=True)
class RunnerStatistics:
    """A snapshot of a projection runner, from ``await runner.statistics()``."""

    application_name: str
    projection_name: str
    is_running: bool
    position: int | None
    """The view's position: the last notification id processed, by this
    runner or (while it stands by) by the leader."""
    lag: int | None
    """The application's max notification id minus :attr:`position`: events
    not processed yet (those of other topics included). None if unknown
    (the application's database cannot be read)."""
    events_processed: int
    """Events processed since start: updated the view, skipped or parked."""
    events_per_second: float
    """:attr:`events_processed` over the time since start."""
    errors: int
    """Errors met since start, handled (retried, skipped, parked) or not."""
    retries: int
    """Attempts to process an event again (the ``retry`` policy)."""
    skipped: int
    parked: int
    reconnections: int
    """Resubscriptions after database connection errors."""
    last_error: str | None
    """``repr()`` of the last error, handled or not."""
    last_error_at: datetime | None
    started_at: datetime | None
    role: str = "leader"
    """"leader" (processes the events) or "standby" (waits to take over)."""
    owner: str | None = None
    """This runner's name in leases (host:pid:suffix); None in memory."""
    epoch: int | None = None
    """The epoch of the lease this runner holds, while it leads."""
    role_since: datetime | None = None
    """When the runner took its :attr:`role`."""


class RunnerCounters:
    """Mutable counters: plain attribute updates, no IO per event."""

    def __init__(self) -> None:
        self.started_at: datetime | None = None
        self._started_monotonic: float | None = None
        self.position: int | None = None
        self.processed = 0
        self.errors = 0
        self.retries = 0
        self.skipped = 0
        self.parked = 0
        self.reconnections = 0
        self.last_error: str | None = None
        self.last_error_at: datetime | None = None

    def start(self, position: int | None) -> None:
        self.started_at = datetime.now(UTC)
        self._started_monotonic = time.monotonic()
        self.position = position

    def processed_up_to(self, position: int, count: int = 1) -> None:
        self.processed += count
        self.position = position

    def error(self, error: BaseException) -> None:
        self.errors += 1
        self.last_error = repr(error)
        self.last_error_at = datetime.now(UTC)

    def events_per_second(self) -> float:
        if self._started_monotonic is None:
            return 0.0
        elapsed = time.monotonic() - self._started_monotonic
        return self.processed / elapsed if elapsed > 0 else 0.0
