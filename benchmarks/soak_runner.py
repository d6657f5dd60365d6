"""A replica of ``python -m benchmarks.soak``: runs one projection, reports.

    python -m benchmarks.soak_runner POLICY

Started (and SIGKILLed, and restarted) by :mod:`benchmarks.soak`, several
times per policy: the replicas of one projection coordinate by its lease, one
leads, the others stand by. Its configuration comes from the environment
(``POSTGRES_*`` of the soak's runner role, ``POSTGRES_SCHEMA``,
``POSTGRES_APPLICATION_NAME``, ``CREATE_TABLE=false``, ...).

It runs a :class:`~asyncsourcing.projection.ProjectionRunner` of the policy's
projection (:func:`projection_class`), restarting it when an error stops it
(a policy that does not reconnect stops on database errors), and prints a
JSON line of its counters every half second and when it ends, on stdout:
the runners' own counters (``RunnerCounters``, summed over the runners it
started), its restarts and their errors, and what its leadership did
(leases taken, lost, fenced: counted from the leadership's log records).

Signals: ``SIGTERM`` stops it cleanly (the lease is given back); ``SIGUSR1``
makes the next event pause, inside its view transaction, for the seconds
given in ``SOAK_PAUSE_SECONDS`` (longer than the idle-in-transaction
timeout: the server ends the session); ``SIGUSR2`` makes the next event
pause ``SOAK_SHORT_PAUSE_SECONDS`` (for the soak to terminate its backend
meanwhile).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from typing import Any

from asyncsourcing.persistence import Tracking
from asyncsourcing.policies import Backoff, ErrorPolicy
from asyncsourcing.projection import ProjectionRunner
from asyncsourcing.statistics import RunnerStatistics
from tests.support.faults import Counters, PostgresRecordingView, RecordingProjection

__all__ = ["POLICIES", "projection_class", "projection_name"]

#: The error policies soaked, by key. Only database errors are injected: none
#: of them may skip or park an event.
POLICIES: dict[str, ErrorPolicy] = {
    "retry": ErrorPolicy.of("retry"),
    "skip": ErrorPolicy.of("skip"),
    "park": ErrorPolicy.of("park"),
    "skip+reconnect": ErrorPolicy.skip(reconnect=True),
    "park+reconnect": ErrorPolicy.park(reconnect=True),
    "retry+park": ErrorPolicy.retry(
        max_attempts=3,
        then="park",
        reconnect=Backoff(initial_delay=0.05, max_delay=2.0, max_attempts=None),
    ),
}


def projection_name(policy: str) -> str:
    """The projection's name (its view's tables are prefixed with it)."""
    return "soak_" + policy.replace("+", "_")


class _Pauses:
    """Pauses requested by signals, taken by the next event processed."""

    def __init__(self) -> None:
        self.requested = 0.0
        self.taken = 0


PAUSES = _Pauses()


class SoakProjection(RecordingProjection):
    """Records every event (tests/support/faults.py), pausing when asked."""

    async def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        if PAUSES.requested:
            # Inside the runner's view transaction (its first statement has
            # locked the tracking row): the session is idle in transaction.
            seconds, PAUSES.requested = PAUSES.requested, 0.0
            PAUSES.taken += 1
            await asyncio.sleep(seconds)
        await self.view.record(tracking)


def projection_class(policy: str) -> type[SoakProjection]:
    return type(
        "SoakProjection",
        (SoakProjection,),
        {"name": projection_name(policy), "error_policy": POLICIES[policy]},
    )


class _LeadershipLog(logging.Handler):
    """Counts the leadership's changes from its log records."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.led = 0
        self.lost = 0
        self.fenced = 0
        self.expired = 0

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if " is now leader " in message:
            self.led += 1
        elif " lost the lease of projection " in message:
            self.lost += 1
            # FencedError's text names the runner that lost the lease; the
            # renewals' own reasons do not.
            if "could not be renewed" in message:
                self.expired += 1
            elif "another runner took it over" not in message:
                self.fenced += 1


def add_counts(counts: dict[str, int], snapshot: RunnerStatistics) -> None:
    """Add a runner's counters (``runner.counters()``) to ``counts``."""
    counts["processed"] += snapshot.events_processed
    for name in ("errors", "retries", "skipped", "parked", "reconnections"):
        counts[name] += getattr(snapshot, name)


async def _run(policy: str) -> None:
    cls = projection_class(policy)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    loop.add_signal_handler(signal.SIGINT, stopping.set)
    pause = float(os.environ.get("SOAK_PAUSE_SECONDS", "2"))
    short_pause = float(os.environ.get("SOAK_SHORT_PAUSE_SECONDS", "1"))
    loop.add_signal_handler(signal.SIGUSR1, lambda: setattr(PAUSES, "requested", pause))
    loop.add_signal_handler(
        signal.SIGUSR2, lambda: setattr(PAUSES, "requested", short_pause)
    )
    leadership = _LeadershipLog()
    leadership_logger = logging.getLogger("asyncsourcing.projection.leadership")
    leadership_logger.addHandler(leadership)
    leadership_logger.setLevel(logging.INFO)

    totals = dict.fromkeys(
        ("processed", "errors", "retries", "skipped", "parked", "reconnections"), 0
    )
    restarts: list[str] = []
    runner: ProjectionRunner[Any, Any] | None = None

    def report(final: bool = False) -> None:
        counts = dict(totals)
        snapshot = None if runner is None else runner.counters()  # No IO.
        if snapshot is not None:
            add_counts(counts, snapshot)
        line = {
            "pid": os.getpid(),
            "final": final,
            "role": None if snapshot is None else snapshot.role,
            "owner": None if snapshot is None else snapshot.owner,
            **counts,
            "restarts": len(restarts),
            "restart_errors": restarts[-20:],
            "led": leadership.led,
            "lost": leadership.lost,
            "fenced": leadership.fenced,
            "expired": leadership.expired,
            "pauses": PAUSES.taken,
        }
        print(json.dumps(line), flush=True)

    async def reporting() -> None:
        while True:
            report()
            await asyncio.sleep(0.5)

    reporter = asyncio.create_task(reporting())
    try:
        while not stopping.is_set():
            runner = ProjectionRunner(
                application_class=Counters,
                projection_class=cls,
                view_class=PostgresRecordingView,
            )
            try:
                async with runner:
                    running = asyncio.create_task(runner.run_forever())
                    stop = asyncio.create_task(stopping.wait())
                    await asyncio.wait(
                        {running, stop}, return_when=asyncio.FIRST_COMPLETED
                    )
                    stop.cancel()
                    runner.stop()
                    await running
            except Exception as error:
                restarts.append(f"{type(error).__name__}: {error}"[:300])
                logging.getLogger("soak").warning("runner stopped by %r", error)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), 0.2)
            finally:
                add_counts(totals, runner.counters())
                runner = None
    finally:
        reporter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporter
        report(final=True)


def main(argv: list[str]) -> None:
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
    )
    asyncio.run(_run(argv[0]))


if __name__ == "__main__":
    # Run as "python -m": use this module's importable twin, so that the
    # projection classes are the ones the soak names.
    from benchmarks.soak_runner import main as _twin

    _twin(sys.argv[1:])
