"""The ``versions``, ``rebuild`` and ``reset`` commands: a projection's versions.

They work with :class:`~asyncsourcing.projection.ProjectionVersions`, whose
records are in the view's database (``asyncsourcing_versions``): a view in
memory keeps none, and an event-sourced projection has none (exit status 2).
A :class:`~asyncsourcing.versions.VersionError` (a version that does not
exist, a runner that still runs the version to reset) is an error of the
database's state, not of the command line: exit status 1, as any error of
the projection or its database.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from asyncsourcing.cli.commands import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    describe,
)
from asyncsourcing.cli.config import (
    Target,
    UsageError,
    configuration_error,
    construct_versions,
    no_versions_error,
)
from asyncsourcing.cli.progress import (
    PIPE_INTERVAL,
    TTY_INTERVAL,
    ProgressLine,
    count,
    format_rebuild,
)
from asyncsourcing.cli.signals import stopped_by_signals
from asyncsourcing.persistence import InfrastructureFactoryError
from asyncsourcing.projection import (
    ProjectionVersions,
    RebuildProgress,
    VersionInfo,
)
from asyncsourcing.sql.tracking import SQLTrackingRecorder
from asyncsourcing.versions import VersionRecord, VersionStatus, find_version

__all__ = [
    "VERSION_COMMANDS",
    "VersionRow",
    "rebuild_command",
    "reset_command",
    "version_rows",
    "versions_command",
    "versions_main",
]

logger = logging.getLogger(__name__)

Versions = ProjectionVersions[Any, Any]


# --- versions ------------------------------------------------------------


@dataclass(frozen=True)
class VersionRow:
    """A version of a projection, as ``asyncsourcing versions`` reports it.

    The fields, in this order, are the keys of each object of ``versions
    --json``; a key may be added, none is renamed or removed.
    """

    projection: str
    """The projection's name."""
    version: int
    status: str
    """``serving``, ``building`` or ``retired``."""
    declared: bool
    """Whether the projection class declares this version (the code's)."""
    application: str
    """The name of the application it follows."""
    position: int
    """The last notification id its view has recorded; 0 when none."""
    lag: int
    """The application's notifications after ``position``."""
    replay_until: int | None
    """Its replay mark: the events up to it are replays; None when none."""
    created_at: str
    """When it was first run: ISO 8601, UTC."""
    switched_at: str | None
    """When it last started or stopped serving: ISO 8601, UTC; None if never."""

    @classmethod
    def of(cls, info: VersionInfo, declared: int) -> VersionRow:
        record = info.record
        return cls(
            projection=record.projection_name,
            version=record.version,
            status=str(record.status),
            declared=record.version == declared,
            application=record.application_name,
            position=info.position or 0,
            lag=info.lag,
            replay_until=record.replay_until,
            created_at=record.created_at.astimezone(UTC).isoformat(),
            switched_at=(
                None
                if record.switched_at is None
                else record.switched_at.astimezone(UTC).isoformat()
            ),
        )

    def as_dict(self) -> dict[str, Any]:
        """The fields by name: an object of ``versions --json``."""
        return dataclasses.asdict(self)


VERSION_COLUMNS = (
    "version",
    "status",
    "position",
    "lag",
    "replay mark",
    "created (UTC)",
    "switched (UTC)",
)
# Numbers are aligned right, words left.
_RIGHT = {"position", "lag", "replay mark"}


def _timestamp(iso: str | None) -> str:
    if iso is None:
        return "-"
    return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M:%S")


def versions_text(rows: Sequence[VersionRow], name: str, declared: int) -> str:
    """The text output of ``versions``: a table, a row per version; the
    class's version marked ``*``, or a line saying it is not recorded."""
    lines = []
    if rows:
        cells = [
            (
                f"{row.version}*" if row.declared else f"{row.version}",
                row.status,
                f"{row.position:,}",
                f"{row.lag:,}",
                "-" if row.replay_until is None else f"{row.replay_until:,}",
                _timestamp(row.created_at),
                _timestamp(row.switched_at),
            )
            for row in rows
        ]
        widths = [
            max(len(text) for text in [header, *(row[i] for row in cells)])
            for i, header in enumerate(VERSION_COLUMNS)
        ]
        for row_cells in [VERSION_COLUMNS, *cells]:
            parts = [
                text.rjust(width) if header in _RIGHT else text.ljust(width)
                for header, text, width in zip(
                    VERSION_COLUMNS, row_cells, widths, strict=True
                )
            ]
            lines.append("  ".join(parts).rstrip())
    else:
        lines.append(
            f"no version of {name} is recorded: the first one run (asyncsourcing "
            f"run or rebuild) serves, version {declared} with this code"
        )
        return "".join(f"{line}\n" for line in lines)
    if any(row.declared for row in rows):
        lines.append("* the version that the projection class declares")
    else:
        lines.append(
            f"version {declared}, which the projection class declares, is not "
            "recorded: asyncsourcing rebuild builds it"
        )
    return "".join(f"{line}\n" for line in lines)


async def version_rows(versions: Versions) -> list[VersionRow]:
    """Every recorded version of the projection, by version."""
    declared = versions.projection_class.version
    return [VersionRow.of(info, declared) for info in await versions.list()]


async def versions_command(
    args: argparse.Namespace, versions: Versions, progress: ProgressLine
) -> int:
    """Print the versions of the projection: a table, or JSON."""
    rows = await version_rows(versions)
    if args.json:
        print(json.dumps([row.as_dict() for row in rows]))
    else:
        declared = versions.projection_class.version
        print(versions_text(rows, versions.name, declared), end="")
    return EXIT_OK


# --- rebuild -------------------------------------------------------------


class RebuildReporter:
    """Shows a rebuild's progress: every report on a terminal, where the
    line is redrawn, but at most one per ``interval`` seconds; none when
    ``interval`` is None. The last report is kept for the summary."""

    def __init__(self, progress: ProgressLine, interval: float | None) -> None:
        self.progress = progress
        self.interval = interval
        self.last: RebuildProgress | None = None
        self._shown: RebuildProgress | None = None
        self._shown_at: float | None = None

    def __call__(self, report: RebuildProgress) -> None:
        self.last = report
        if self.interval is None:
            return
        now = time.monotonic()
        if self._shown_at is None or now - self._shown_at >= self.interval:
            self._show(report, now)

    def finish(self) -> None:
        """Show the last report, if not yet shown, and end the line."""
        last = self.last
        if self.interval is not None and last is not None and last is not self._shown:
            self._show(last, time.monotonic())
        self.progress.finish()

    def _show(self, report: RebuildProgress, now: float) -> None:
        self.progress.show(format_rebuild(report))
        self._shown, self._shown_at = report, now


async def rebuild_command(
    args: argparse.Namespace, versions: Versions, progress: ProgressLine
) -> int:
    """Build the version, showing the progress, then switch to it.

    The first SIGINT or SIGTERM stops the rebuild (the batch in hand is
    rolled back; what was committed stays, and a later rebuild goes on from
    there): exit status 0. A second one cancels at once: 130.
    """
    version = args.version or versions.projection_class.version
    before = await versions.serving()
    interval = args.interval or (TTY_INTERVAL if progress.is_tty else PIPE_INTERVAL)
    # Checked at least every second, shown every `interval`.
    versions.progress_interval = min(interval, TTY_INTERVAL)
    reporter = RebuildReporter(progress, interval if args.progress else None)
    building = asyncio.create_task(
        versions.rebuild(
            version,
            max_lag=args.max_lag,
            on_progress=reporter,
            switch=args.switch,
        )
    )

    def stop(signum: signal.Signals) -> None:
        logger.info("%s received: stopping the rebuild", signum.name)
        building.cancel()

    with stopped_by_signals(stop, asyncio.current_task()) as received:
        try:
            logger.info("Rebuilding version %d of %s", version, versions.name)
            await asyncio.wait([building])
        except asyncio.CancelledError:
            building.cancel()
            with contextlib.suppress(BaseException):
                await building
            progress.finish()
            return EXIT_INTERRUPTED
    reporter.finish()
    if building.cancelled():
        await _report_stop(versions, version, received[0])
        return EXIT_OK
    record = building.result()  # The runner's error, if any.
    position = reporter.last.position if reporter.last is not None else 0
    print(_rebuilt(versions.name, record, before, position), end="")
    return EXIT_OK


async def _report_stop(versions: Versions, version: int, signame: str) -> None:
    """Say where a rebuild stopped by a signal got to (on stderr)."""
    infos = {info.version: info for info in await versions.list()}
    info = infos.get(version)
    position = 0 if info is None or info.position is None else info.position
    lag = 0 if info is None else info.lag
    line = (
        f"version {version}: stopped by {signame} at position {position:,}, "
        f"lag {count(lag, 'event')}"
    )
    if info is not None and info.status is VersionStatus.SERVING:
        line += f"; version {version} serves"
    else:
        line += "; not switched: asyncsourcing rebuild goes on from there"
    print(line, file=sys.stderr)


def _rebuilt(
    name: str, record: VersionRecord, before: VersionRecord | None, position: int
) -> str:
    """What a rebuild that ran to its end did, and what to do next."""
    version = record.version
    mark = "none" if record.replay_until is None else f"{record.replay_until:,}"
    keep_current = (
        f"the runners of version {version} (asyncsourcing run with its code) "
        "keep it current"
    )
    if record.status is not VersionStatus.SERVING:
        assert before is not None  # The first version run serves at once.
        lines = [
            f"built version {version} of {name} up to position {position:,}, "
            f"not switched: version {before.version} serves",
            f"asyncsourcing rebuild without --no-switch switches to it; "
            f"meanwhile {keep_current}",
        ]
    elif before is None:
        lines = [
            f"version {version} of {name} serves, the first version run here, "
            f"at position {position:,}",
            keep_current,
        ]
    elif before.version == version:
        lines = [
            f"version {version} of {name} serves already; it got to position "
            f"{position:,}",
            keep_current,
        ]
    else:
        lines = [
            f"switched {name} to version {version} at position {position:,} "
            f"(replay mark {mark}); version {before.version} is retired",
            f"stop the runners of version {before.version} now: the switch "
            "fenced its leader off, and they only replay",
            keep_current,
        ]
    return "".join(f"{line}\n" for line in lines)


# --- reset ---------------------------------------------------------------


def _join(names: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    if len(names) < 2:
        return "".join(names)
    return f"{', '.join(names[:-1])} and {names[-1]}"


async def reset_command(
    args: argparse.Namespace, versions: Versions, progress: ProgressLine
) -> int:
    """Drop the tables of a version, if ``--yes``; else say what it would
    drop (exit status 2)."""
    name, version = versions.name, args.version
    record = find_version(await versions.records(), name, version)
    view = await versions.view(version)
    position = await view.max_tracking_id(record.application_name) or 0
    if isinstance(view, SQLTrackingRecorder):
        parked = f"{view.parked_table_name} (dead letters)"
        tables = f"its tables {_join([*view.created_tables(), parked])}"
    else:
        tables = "its tables"
    what = (
        f"version {version} of {name} ({record.status}, at position "
        f"{position:,}): {tables}"
    )
    serving = record.status is VersionStatus.SERVING
    replays = (
        f"its runners process every event again, as replays up to position {position:,}"
    )
    if not args.yes:
        then = (
            f"version {version} would still serve: {replays}"
            if serving
            else f"version {version} would be forgotten"
        )
        msg = f"reset would drop {what}; {then}. Add --yes to drop them"
        raise UsageError(msg)
    await versions.reset(version)
    then = (
        f"version {version} still serves: {replays}"
        if serving
        else f"version {version} is forgotten"
    )
    print(f"dropped {what}\n{then}")
    return EXIT_OK


# --- running them --------------------------------------------------------

VersionCommand = Callable[[argparse.Namespace, Versions, ProgressLine], Awaitable[int]]

VERSION_COMMANDS: dict[str, VersionCommand] = {
    "versions": versions_command,
    "rebuild": rebuild_command,
    "reset": reset_command,
}
"""The commands of versions, by name."""


async def versions_main(
    args: argparse.Namespace,
    target: Target,
    env: Mapping[str, str],
    progress: ProgressLine,
) -> int:
    """Run the command of versions ``args.command`` on ``target``.

    Raises :class:`UsageError` when the configuration is wrong, or the view
    keeps no versions; reports any other error (exit status 1).
    """
    command = VERSION_COMMANDS[args.command]
    try:
        async with construct_versions(target, env) as versions:
            # The view of the class's version, where the versions are kept.
            view = await versions.view(versions.projection_class.version)
            if view.versions is None:
                raise no_versions_error(target, env)
            return await command(args, versions, progress)
    except InfrastructureFactoryError as error:
        # A setting of the views' or the application's: raised as they are
        # constructed, on first use.
        raise configuration_error(error, target, env) from error
    except UsageError:
        raise
    except Exception as error:
        progress.finish()
        logger.debug("asyncsourcing %s failed", args.command, exc_info=error)
        print(
            f"asyncsourcing {args.command}: error: {describe(error)}",
            file=sys.stderr,
        )
        return EXIT_ERROR
