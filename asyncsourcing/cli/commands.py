"""The ``run`` and ``status`` commands."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from asyncsourcing.cli.progress import (
    PIPE_INTERVAL,
    TTY_INTERVAL,
    ProgressLine,
    RateMeter,
    count,
    format_progress,
    take_sample,
)
from asyncsourcing.cli.signals import stopped_by_signals
from asyncsourcing.leases import Leases, partition_lease_name
from asyncsourcing.persistence import PersistenceError, TrackingRecorder
from asyncsourcing.projection import BaseProjectionRunner, Role

__all__ = [
    "PartitionState",
    "Status",
    "describe",
    "read_status",
    "run_command",
    "status_command",
]

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
# 128 + SIGINT, the shell's status for a command killed by Ctrl-C.
EXIT_INTERRUPTED = 130


async def report_progress(
    runner: BaseProjectionRunner[Any],
    recorder: TrackingRecorder,
    topics: Sequence[str],
    progress: ProgressLine,
    interval: float,
) -> None:
    """Show the progress every ``interval`` seconds, until cancelled."""
    meter = RateMeter()
    while True:
        try:
            sample = await take_sample(runner.app, recorder, topics)
        except Exception as error:
            # Progress is a courtesy: a failed read must not stop the runner,
            # whose own errors surface from run_forever().
            logger.warning("Cannot read the progress: %s", error)
        else:
            meter.add(sample)
            line = format_progress(sample, meter)
            if runner.role is Role.STANDBY:
                # Another process leads: the position is the leader's.
                line = f"standby | {line}"
            progress.show(line)
        await asyncio.sleep(interval)


async def run_command(
    args: argparse.Namespace,
    runner: BaseProjectionRunner[Any],
    progress: ProgressLine,
) -> int:
    """Run the projection until a signal, the timeout or an error."""
    interval = args.interval or (TTY_INTERVAL if progress.is_tty else PIPE_INTERVAL)

    def stop(signum: signal.Signals) -> None:
        logger.info("%s received: stopping after the event in hand", signum.name)
        runner.stop()

    with stopped_by_signals(stop, asyncio.current_task()):
        return await _run(args, runner, progress, interval)


async def _run(
    args: argparse.Namespace,
    runner: BaseProjectionRunner[Any],
    progress: ProgressLine,
    interval: float,
) -> int:
    """The body of :func:`run_command`, under its signal handlers."""
    recorder, topics = runner.tracking_recorder, runner.topics
    try:
        async with runner:
            logger.info("Running %s of %s", runner.projection_name, runner.app_name)
            reporter = None
            if args.progress:
                reporter = asyncio.create_task(
                    report_progress(runner, recorder, topics, progress, interval)
                )
            try:
                await runner.run_forever(timeout=args.timeout)
            finally:
                if reporter is not None:
                    reporter.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await reporter
                    # The last word, after an error too: where the view stopped.
                    with contextlib.suppress(Exception):
                        sample = await take_sample(runner.app, recorder, topics)
                        progress.show(
                            f"stopped at position {sample.position:,}, "
                            f"lag {count(sample.lag, 'event')}"
                        )
    except asyncio.CancelledError:
        progress.finish()
        return EXIT_INTERRUPTED
    except Exception as error:
        progress.finish()
        logger.debug("asyncsourcing run failed", exc_info=error)
        print(f"asyncsourcing run: error: {describe(error)}", file=sys.stderr)
        return EXIT_ERROR
    progress.finish()
    return EXIT_OK


@dataclass(frozen=True)
class PartitionState:
    """A partition of a partitioned projection, in :class:`Status`."""

    partition: int
    owner: str | None
    """The runner that holds the partition's lease, or None (free, expired)."""
    epoch: int | None
    position: int
    """The partition's recorded position; 0 when none."""
    lag: int
    """Notifications after ``position`` up to the application's last one."""

    def text(self) -> str:
        owner = (
            "no owner" if self.owner is None else f"{self.owner} (epoch {self.epoch})"
        )
        return f"{owner}, position {self.position:,}, lag {count(self.lag, 'event')}"


@dataclass(frozen=True)
class Status:
    """What ``asyncsourcing status`` reports.

    The fields, in this order, are the keys of ``status --json``; a key may
    be added, none is renamed or removed.
    """

    application: str
    """The application's name."""
    projection: str
    """The projection's name."""
    position: int
    """The last notification id that the view has recorded; 0 when none."""
    max_notification_id: int
    """The application's last notification id; 0 when it has none."""
    lag: int
    """Notifications after ``position`` up to ``max_notification_id``; 0 when
    none of them has one of the projection's topics."""
    leader: str | None = None
    """The runner that holds the projection's lease, or None when none does
    (none has run, the last one stopped, or its lease expired)."""
    epoch: int | None = None
    """The leader's epoch: how many times the lease has changed owner."""
    standbys: list[str] = dataclasses.field(default_factory=list)
    """The runners that stand by, ready to take over, by owner."""
    partitions: list[PartitionState] = dataclasses.field(default_factory=list)
    """Of a partitioned projection: each partition's owner, position and
    lag, by partition (empty for one that is not partitioned)."""

    def as_dict(self) -> dict[str, Any]:
        """The fields by name: the JSON object of ``status --json``."""
        return dataclasses.asdict(self)

    def rows(self) -> list[tuple[str, str]]:
        """The labels and values of the text output, in order."""
        leader = "none"
        if self.leader is not None:
            leader = f"{self.leader} (epoch {self.epoch})"
        if self.partitions and self.leader is None:
            leader = "none (partitioned: see each partition)"
        return [
            (
                "application",
                f"{self.application} (last notification {self.max_notification_id:,})",
            ),
            ("projection", self.projection),
            ("leader", leader),
            ("standbys", ", ".join(self.standbys) or "none"),
            ("position", f"{self.position:,}"),
            ("lag", count(self.lag, "event")),
            *((f"partition {p.partition}", p.text()) for p in self.partitions),
        ]

    def text(self) -> str:
        """The text output: a ``label: value`` line per row, values aligned."""
        rows = self.rows()
        width = max(len(label) for label, _ in rows) + 2
        return "".join(f"{label + ':':<{width}}{value}\n" for label, value in rows)


async def read_partitions(
    runner: BaseProjectionRunner[Any], leases: Leases | None, head: int
) -> list[PartitionState]:
    """Each partition's owner, position and lag (none if not partitioned)."""
    if runner.partitions <= 1:
        return []
    positions = await runner.tracking_recorder.partition_positions(runner.app_name)
    now = datetime.now(UTC)
    states = []
    for partition in range(runner.partitions):
        lease = None
        if leases is not None:
            name = partition_lease_name(runner.projection_name, partition)
            lease = await leases.read(runner.app_name, name)
        live = lease is not None and lease.expires_at > now
        position = positions.get(partition) or 0
        states.append(
            PartitionState(
                partition,
                lease.owner if lease is not None and live else None,
                lease.epoch if lease is not None and live else None,
                position,
                max(0, head - position),
            )
        )
    return states


async def read_status(runner: BaseProjectionRunner[Any]) -> Status:
    """The status of the projection of ``runner``, processing nothing."""
    recorder = runner.tracking_recorder
    sample = await take_sample(runner.app, recorder, runner.topics)
    status = Status(
        application=runner.app_name,
        projection=runner.projection_name,
        position=sample.position,
        max_notification_id=sample.head,
        lag=sample.lag,
    )
    leases = recorder.leases
    if leases is None:
        # In memory: no runner of another process to name.
        partitions = await read_partitions(runner, None, sample.head)
        return dataclasses.replace(status, partitions=partitions)
    try:
        lease = await leases.read(runner.app_name, runner.projection_name)
        present = await leases.present(runner.app_name, runner.projection_name)
        partitions = await read_partitions(runner, leases, sample.head)
    except PersistenceError as error:
        # No runner with leadership has run here: the tables do not exist.
        logger.debug("Cannot read the projection's lease: %s", error)
        return status
    if lease is not None and lease.expires_at > datetime.now(UTC):
        status = dataclasses.replace(status, leader=lease.owner, epoch=lease.epoch)
    owners = {state.owner for state in partitions}
    standbys = [
        p.owner for p in present if p.owner != status.leader and p.owner not in owners
    ]
    return dataclasses.replace(status, standbys=standbys, partitions=partitions)


async def status_command(
    runner: BaseProjectionRunner[Any], *, as_json: bool = False
) -> int:
    """Print the view's position and lag, processing nothing.

    ``runner`` is never started: it constructs the app and the view exactly
    as ``run`` does, from the same environment; it is closed here.
    """
    try:
        status = await read_status(runner)
    except Exception as error:
        logger.debug("asyncsourcing status failed", exc_info=error)
        print(f"asyncsourcing status: error: {describe(error)}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        await runner.close()
    if as_json:
        print(json.dumps(status.as_dict()))
    else:
        print(status.text(), end="")
    return EXIT_OK


def describe(error: BaseException) -> str:
    """``Type: message``, the one line that the CLI prints for an error."""
    return f"{type(error).__name__}: {error}"
