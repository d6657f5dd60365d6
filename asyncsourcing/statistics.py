"""What a projection runner has done: counters kept in memory, read as a snapshot."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = ["RunnerCounters", "RunnerStatistics"]


@dataclass(frozen=True)
class RunnerStatistics:
    """A snapshot of a projection runner, from ``await runner.statistics()``.

    Consistent: the counters are all taken in one step, after the database
    reads that the snapshot needs, so they describe one moment of the runner.
    Every event counted in :attr:`events_processed` has a notification id of
    its own, after the position the runner started from and at most
    :attr:`position`: :attr:`position` minus the position it started from is
    at least :attr:`events_processed` (a runner that started on an empty view
    shows ``position >= events_processed``).
    """

    application_name: str
    projection_name: str
    is_running: bool
    position: int | None
    """The view's position: the last notification id processed, by this
    runner or (while it stands by) by the leader. The greater of the
    runner's own count and the view's record (read during the call), which
    may be ahead: it holds what was committed before the runner counted it,
    and what another runner processed. Never behind the events counted in
    :attr:`events_processed` (see above)."""
    lag: int | None
    """The application's max notification id, read during the call, minus
    :attr:`position`, and never below 0: events not processed yet (those of
    other topics included). None if unknown (the application's database
    cannot be read)."""
    events_processed: int
    """Events processed since start: updated the view, skipped or parked."""
    events_per_second: float
    """:attr:`events_processed` over the time since start."""
    errors: int
    """Errors met since start, handled (retried, skipped, parked) or not:
    those of processing an event and of recording its tracking, connection
    errors (reconnected after or not), and the error that stopped the runner,
    whatever the stage it was met in (reading the events, processing,
    tracking, leadership). Each error is counted once: an error raised on
    account of one already counted (giving up reconnecting) is not counted
    again."""
    retries: int
    """Attempts to process an event again (the ``retry`` policy)."""
    skipped: int
    parked: int
    reconnections: int
    """Resubscriptions after database connection errors."""
    last_error: str | None
    """``repr()`` of the last error, handled or not; once the runner has
    stopped by an error, that error's."""
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
    """Mutable counters: plain attribute updates, no IO per event.

    :meth:`processed_up_to` moves :attr:`position` and :attr:`processed` in
    one step; a snapshot read synchronously sees them agree.
    """

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
        # The last error counted, to count an error that stops the runner once.
        self._last_counted: BaseException | None = None

    def start(self, position: int | None) -> None:
        self.started_at = datetime.now(UTC)
        self._started_monotonic = time.monotonic()
        self.position = position

    def processed_up_to(self, position: int, count: int = 1) -> None:
        self.processed += count
        self.position = position

    def error(self, error: BaseException) -> None:
        """Count an error, met while it is dealt with (or before it stops)."""
        self.errors += 1
        self._show(error)
        self._last_counted = error

    def stopped_by(self, error: BaseException) -> None:
        """Show the error that stopped the runner, counted unless it is, or
        was raised from, the last error counted (the stage that met it
        counted it already)."""
        counted = self._last_counted
        if counted is None or (error is not counted and error.__cause__ is not counted):
            self.errors += 1
        self._show(error)
        self._last_counted = None  # Let go of its traceback.

    def _show(self, error: BaseException) -> None:
        self.last_error = repr(error)
        self.last_error_at = datetime.now(UTC)

    def events_per_second(self) -> float:
        if self._started_monotonic is None:
            return 0.0
        elapsed = time.monotonic() - self._started_monotonic
        return self.processed / elapsed if elapsed > 0 else 0.0
