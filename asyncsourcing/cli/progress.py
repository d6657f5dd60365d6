"""Progress of a projection: samples, rates, and the line that shows them."""

from __future__ import annotations

import logging
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from asyncsourcing.application import Application
from asyncsourcing.persistence import TrackingRecorder
from asyncsourcing.projection import RebuildProgress

__all__ = [
    "ProgressLine",
    "RateMeter",
    "Sample",
    "configure_logging",
    "count",
    "format_clock",
    "format_duration",
    "format_progress",
    "format_rebuild",
    "take_sample",
]

# The rate behind the lag estimate is taken over this many seconds, so one
# slow interval (a big batch committing) does not make the estimate jump.
RATE_WINDOW = 10.0
TTY_INTERVAL = 1.0
# A log file or a pipe gets fewer lines than a terminal gets refreshes.
PIPE_INTERVAL = 5.0


# --- measuring -----------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """Where a view stands against its application at one moment."""

    time: float
    position: int
    """The last position the view has recorded (0 when none)."""
    head: int
    """The application's last notification id (0 when none)."""
    lag: int
    """Notifications after ``position`` up to ``head``; 0 when none of them
    has one of the projection's topics (nothing is left to process)."""


async def take_sample(
    app: Application[Any], recorder: TrackingRecorder, topics: Sequence[str]
) -> Sample:
    """Read the view's position and the application's head."""
    position = await recorder.max_tracking_id(app.name) or 0
    head = await app.recorder.max_notification_id() or 0
    lag = max(head - position, 0)
    if lag and topics:
        # A runner records the position of the events its topics filter
        # out only once caught up, and at most every so often (a view that
        # eventsourcing runs, never): events it will never see would count
        # as lag meanwhile. Check that something it wants is pending.
        pending = await app.recorder.select_notifications(
            position, 1, topics=topics, inclusive_of_start=False
        )
        if not pending:
            lag = 0
    return Sample(time.monotonic(), position, head, lag)


class RateMeter:
    """Events per second, from successive samples of a view's position."""

    def __init__(self, window: float = RATE_WINDOW) -> None:
        self.window = window
        self._samples: deque[Sample] = deque()

    def add(self, sample: Sample) -> None:
        self._samples.append(sample)
        # Keep one sample older than the window, to measure across all of it.
        while len(self._samples) > 2 and (
            sample.time - self._samples[1].time >= self.window
        ):
            self._samples.popleft()

    def last_interval(self) -> float | None:
        """The rate between the last two samples; None before two samples."""
        if len(self._samples) < 2:
            return None
        return _rate(self._samples[-2], self._samples[-1])

    def recent(self) -> float | None:
        """The rate over about :attr:`window` seconds, for the lag estimate."""
        if len(self._samples) < 2:
            return None
        return _rate(self._samples[0], self._samples[-1])


def _rate(earlier: Sample, later: Sample) -> float:
    elapsed = later.time - earlier.time
    return max(later.position - earlier.position, 0) / elapsed if elapsed > 0 else 0


def count(number: int | str, noun: str) -> str:
    """``number`` and ``noun``, plural unless the number is one.

    ``count(1, "event")`` is ``"1 event"``, ``count(1200, "event")`` is
    ``"1,200 events"``; a number already formatted as text (``"1"``, ``"-"``)
    is used as it is.
    """
    text = f"{number:,}" if isinstance(number, int) else number
    return f"{text} {noun}" if text == "1" else f"{text} {noun}s"


def format_duration(seconds: float) -> str:
    """``0.4s``, ``12s``, ``3m05s``, ``2h07m``."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def format_progress(sample: Sample, meter: RateMeter) -> str:
    """The progress line: position, lag in events and seconds, events/s.

    Its parts are separated by `` | ``, in the order of :data:`PROGRESS_PARTS`.
    """
    return " | ".join(part(sample, meter) for part in PROGRESS_PARTS)


def _position_part(sample: Sample, meter: RateMeter) -> str:
    return f"position {sample.position:,} of {sample.head:,}"


def _lag_part(sample: Sample, meter: RateMeter) -> str:
    if sample.lag == 0:
        eta = "0s"
    else:
        recent = meter.recent()
        # Nothing processed lately: no honest estimate.
        eta = f"~{format_duration(sample.lag / recent)}" if recent else "?"
    return f"lag {count(sample.lag, 'event')}, {eta}"


def _rate_part(sample: Sample, meter: RateMeter) -> str:
    rate = meter.last_interval()
    return f"{count('-' if rate is None else f'{rate:,.0f}', 'event')}/s"


PROGRESS_PARTS: tuple[Callable[[Sample, RateMeter], str], ...] = (
    _position_part,
    _lag_part,
    _rate_part,
)
"""The parts of the progress line, each a function of the sample and meter."""


def format_clock(seconds: float) -> str:
    """``0:00:09``, ``1:02:03``: hours, minutes and seconds, for an ETA."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


BAR_WIDTH = 20


def format_rebuild(progress: RebuildProgress, width: int = BAR_WIDTH) -> str:
    """The progress line of a rebuild: a bar, the share done, the events
    done of the application's, the rate, the ETA and the runner's role.

    ``version 2: [############--------] 61% 612,000/1,000,000 events,
    41,230 ev/s, ETA 0:00:09 (leader)``; the rate is ``-`` and the ETA
    ``?`` until they are known (the rate after half a second).
    """
    # Rounded down: 100% is done, not nearly done.
    filled = int(progress.fraction * width)
    bar = "#" * filled + "-" * (width - filled)
    percent = int(progress.fraction * 100)
    rate = "-" if progress.rate is None else f"{progress.rate:,.0f}"
    if progress.lag == 0:
        eta = format_clock(0)
    else:
        eta = "?" if progress.eta is None else format_clock(progress.eta)
    return (
        f"version {progress.version}: [{bar}] {percent}% "
        f"{progress.position:,}/{count(progress.head, 'event')}, {rate} ev/s, "
        f"ETA {eta} ({progress.role})"
    )


# --- output --------------------------------------------------------------


class ProgressLine:
    """The CLI's progress output on a stream.

    On a terminal, one line rewritten in place; otherwise a line per
    :meth:`show`. Log records go through :meth:`clear` first (see
    :class:`_ProgressAwareHandler`) so they don't land in the middle of it.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.is_tty = stream.isatty()
        self._is_drawn = False

    def show(self, text: str) -> None:
        if self.is_tty:
            # Clear to the end of the line: the new text may be shorter.
            self.stream.write(f"\r{text}\x1b[K")
            self._is_drawn = True
        else:
            self.stream.write(f"{text}\n")
        self.stream.flush()

    def clear(self) -> None:
        """Erase the line in place, if one is drawn."""
        if self._is_drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._is_drawn = False

    def finish(self) -> None:
        """Leave the last line drawn on screen, and move below it."""
        if self._is_drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._is_drawn = False


class _ProgressAwareHandler(logging.StreamHandler[TextIO]):
    def __init__(self, stream: TextIO, progress: ProgressLine) -> None:
        super().__init__(stream)
        self.progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        self.progress.clear()
        super().emit(record)


def configure_logging(
    level: str, progress: ProgressLine, names: Iterable[str] = ()
) -> None:
    """Log to stderr, around the progress line, at ``level`` for some loggers.

    ``level`` applies to the ``asyncsourcing`` loggers and to the loggers
    ``names`` (the CLI passes the top-level packages of the given topics);
    all other loggers (asyncio's, aiosqlite's, asyncpg's, ...) stay at
    WARNING, or at ``level`` if it is higher, so ``DEBUG`` shows the
    library's and the project's debug messages only.
    """
    handler = _ProgressAwareHandler(sys.stderr, progress)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    numeric_level = logging.getLevelNamesMapping()[level]
    logging.basicConfig(
        level=max(numeric_level, logging.WARNING), handlers=[handler], force=True
    )
    for name in {"asyncsourcing", *names}:
        logging.getLogger(name).setLevel(numeric_level)
