"""Counters kept in memory, read as snapshots: what a projection runner has
done (:class:`RunnerCounters`), and how far the readers of an events table
written concurrently are held back (:class:`HorizonCounters`)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = [
    "HorizonCounters",
    "HorizonStatistics",
    "RunnerCounters",
    "RunnerStatistics",
]


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
    """What a runner has done, counted in memory: no IO per event.

    Each method records one thing that happened, moving every count it
    concerns in one step (:meth:`skipped` counts the skip, the event
    processed and its position), so that a :meth:`snapshot`, taken with no
    await, sees them agree.
    """

    def __init__(self) -> None:
        self._started_at: datetime | None = None
        self._started_monotonic: float | None = None
        self._position: int | None = None
        self._processed = 0
        self._errors = 0
        self._retries = 0
        self._skipped = 0
        self._parked = 0
        self._reconnections = 0
        self._last_error: str | None = None
        self._last_error_at: datetime | None = None
        # The last error counted, to count an error that stops the runner once.
        self._last_counted: BaseException | None = None

    @property
    def position(self) -> int | None:
        """The last notification id processed, as far as the runner knows."""
        return self._position

    @property
    def processed(self) -> int:
        """Events processed since start: updated the view, skipped or parked."""
        return self._processed

    def start(self, position: int | None) -> None:
        """The runner started, at ``position``: the rate is counted from now."""
        self._started_at = datetime.now(UTC)
        self._started_monotonic = time.monotonic()
        self._position = position

    def processed_up_to(self, position: int, count: int = 1) -> None:
        """``count`` events were processed, the last one at ``position``."""
        self._processed += count
        self._position = position

    def retried(self) -> None:
        """An event is to be processed again (the ``retry`` policy)."""
        self._retries += 1

    def skipped(self, position: int) -> None:
        """The event at ``position`` was skipped: processed, with no update."""
        self._skipped += 1
        self.processed_up_to(position)

    def parked(self, position: int) -> None:
        """The event at ``position`` was parked: processed, into dead letters."""
        self._parked += 1
        self.processed_up_to(position)

    def reconnected(self) -> None:
        """The database answered again after a connection error."""
        self._reconnections += 1

    def resubscribed_at(self, position: int | None) -> None:
        """The runner subscribed again after ``position``, the view's record."""
        self._position = position

    def advanced_to(self, position: int) -> None:
        """Another runner has processed up to ``position``: nothing is
        counted, and the position only moves forward."""
        self._position = max(self._position or 0, position)

    def error(self, error: BaseException) -> None:
        """Count an error, met while it is dealt with (or before it stops)."""
        self._errors += 1
        self._show(error)
        self._last_counted = error

    def stopped_by(self, error: BaseException) -> None:
        """Show the error that stopped the runner, counted unless it is, or
        was raised from, the last error counted (the stage that met it
        counted it already)."""
        counted = self._last_counted
        if counted is None or (error is not counted and error.__cause__ is not counted):
            self._errors += 1
        self._show(error)
        self._last_counted = None  # Let go of its traceback.

    def _show(self, error: BaseException) -> None:
        self._last_error = repr(error)
        self._last_error_at = datetime.now(UTC)

    def events_per_second(self) -> float:
        if self._started_monotonic is None:
            return 0.0
        elapsed = time.monotonic() - self._started_monotonic
        return self._processed / elapsed if elapsed > 0 else 0.0

    def snapshot(
        self,
        application_name: str,
        projection_name: str,
        *,
        is_running: bool,
        recorded: int | None = None,
        head: int | None = None,
        role: str = "leader",
        owner: str | None = None,
        epoch: int | None = None,
        role_since: datetime | None = None,
    ) -> RunnerStatistics:
        """The counters of this moment, with what the runner read before.

        ``recorded`` is the view's position, if read: the snapshot's
        :attr:`~RunnerStatistics.position` is the greater of it and the
        counted one. ``head`` is the application's last notification id, if
        read (0 for none): with it comes the
        :attr:`~RunnerStatistics.lag`, else the lag is None. Synchronous, so
        that nothing moves the counters while they are taken.
        """
        position = self._position
        if recorded is not None and (position is None or recorded > position):
            position = recorded
        lag = None if head is None else max(0, head - (position or 0))
        return RunnerStatistics(
            application_name=application_name,
            projection_name=projection_name,
            is_running=is_running,
            position=position,
            lag=lag,
            events_processed=self._processed,
            events_per_second=self.events_per_second(),
            errors=self._errors,
            retries=self._retries,
            skipped=self._skipped,
            parked=self._parked,
            reconnections=self._reconnections,
            last_error=self._last_error,
            last_error_at=self._last_error_at,
            started_at=self._started_at,
            role=role,
            owner=owner,
            epoch=epoch,
            role_since=role_since,
        )


@dataclass(frozen=True)
class HorizonStatistics:
    """The visibility horizon of an events table in concurrent write mode, as
    one recorder's reads found it (see :mod:`asyncsourcing.postgres.concurrent`).

    Readers pass only notification ids below the horizon, every transaction
    of which has ended. A read is *stalled* when ids at or above the horizon
    have been issued: transactions that are still open (a long one holds the
    horizon back until it ends), or that ended after the horizon was taken.
    """

    table: str
    """The events table, quoted and schema-qualified."""
    reads: int
    """Horizons computed (one per read of notifications or of the last id)."""
    stalled_reads: int
    """Of :attr:`reads`, those that found ids issued at or above the horizon."""
    horizon: int | None
    """The last horizon: ids below it may be read. None before any read."""
    last_issued: int | None
    """The last id issued when :attr:`horizon` was computed (0: none yet)."""
    held_back: int
    """Ids issued at or above the horizon at the last read: committed, still
    being written, or rolled back (the sequence cannot tell), not readable
    yet. 0 when the last read was not stalled."""
    stalled_since: datetime | None
    """Since when the horizon has stood still at its value with ids above
    it: the time of the first read that found it so. None when the last read
    was not stalled."""
    stall_seconds: float
    """How long the horizon has stood still, now, with ids above it (0.0 when
    the last read was not stalled). Under a steady load each read finds it a
    little further on, and this stays near the interval between reads; a
    transaction left open makes it grow until it ends."""


class HorizonCounters:
    """The horizons that one recorder has computed, counted in memory."""

    def __init__(self, table: str) -> None:
        self.table = table
        self._reads = 0
        self._stalled_reads = 0
        self._horizon: int | None = None
        self._last_issued: int | None = None
        self._stalled_since: datetime | None = None
        self._stalled_monotonic: float | None = None

    @property
    def is_held_back(self) -> bool:
        """Whether the last read found ids issued at or above the horizon."""
        return self._stalled_monotonic is not None

    def read(self, horizon: int, last_issued: int) -> None:
        """A read computed ``horizon``, when ``last_issued`` was the last id."""
        self._reads += 1
        if horizon <= last_issued:
            self._stalled_reads += 1
            # Still at the same value: the stall goes on.
            if self._stalled_monotonic is None or horizon != self._horizon:
                self._stalled_since = datetime.now(UTC)
                self._stalled_monotonic = time.monotonic()
        else:
            self._stalled_since = None
            self._stalled_monotonic = None
        self._horizon = horizon
        self._last_issued = last_issued

    def snapshot(self) -> HorizonStatistics:
        """The counters of this moment."""
        since = self._stalled_monotonic
        held_back = 0
        if since is not None and self._horizon is not None:
            held_back = (self._last_issued or 0) + 1 - self._horizon
        return HorizonStatistics(
            table=self.table,
            reads=self._reads,
            stalled_reads=self._stalled_reads,
            horizon=self._horizon,
            last_issued=self._last_issued,
            held_back=held_back,
            stalled_since=self._stalled_since,
            stall_seconds=0.0 if since is None else time.monotonic() - since,
        )
