"""The ``versions``, ``rebuild`` and ``reset`` commands, run for real as
``python -m asyncsourcing``.

The event counters example is the projection under test: version 1 is
:class:`~examples.eventcounters.projection.EventCountersProjection`, version
2 its subclass in tests/support/versions.py. Events are written in the test
by a plain application; the views are read afterwards with
:class:`~asyncsourcing.projection.ProjectionVersions`.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from asyncsourcing.application import Application
from asyncsourcing.cli.progress import format_clock, format_rebuild
from asyncsourcing.cli.versions import VersionRow, versions_text
from asyncsourcing.domain import Aggregate
from asyncsourcing.projection import ProjectionVersions, RebuildProgress
from asyncsourcing.utils import resolve_topic
from examples.eventcounters.projection import SpannerThrown
from tests.support.postgres import factory_env
from tests.tools.test_cli import Running, asyncsourcing

APP = ["--app", "asyncsourcing.application:Application"]
V1 = "examples.eventcounters.projection:EventCountersProjection"
V2 = "tests.support.versions:EventCountersV2"
SLOW_V2 = "tests.support.versions:SlowEventCountersV2"
VIEWS = {
    "sqlite": "examples.eventcounters.sqlite:SQLiteEventCounters",
    "postgres": "examples.eventcounters.postgres:PostgresEventCounters",
}
FAST = ["--interval", "0.1"]


@dataclass
class Setup:
    """The process environment of the commands, and their options."""

    env: dict[str, str]
    view: str
    tables: str
    """The tables of version 1's view, as ``reset`` names them."""

    def args(self, projection: str = V1) -> list[str]:
        return [*APP, "--projection", projection, "--view", self.view]

    def run(self, command: str, *args: str, projection: str = V1) -> Any:
        return asyncsourcing(command, *self.args(projection), *args, env=self.env)

    def listing(self, projection: str = V1) -> list[dict[str, Any]]:
        """``versions --json``, parsed."""
        result = self.run("versions", "--json", projection=projection)
        assert result.returncode == 0, result.stderr
        rows: list[dict[str, Any]] = json.loads(result.stdout)
        return rows


def _environ() -> dict[str, str]:
    # Settings of the developer's shell must not redirect the test.
    return {
        k: v
        for k, v in os.environ.items()
        if not k.endswith(("PERSISTENCE_MODULE", "SQLITE_DBNAME"))
    }


@pytest.fixture
def sqlite(tmp_path: Path) -> Setup:
    env = {
        **_environ(),
        "PERSISTENCE_MODULE": "asyncsourcing.sqlite",
        "SQLITE_DBNAME": str(tmp_path / "counters.sqlite"),
    }
    return Setup(
        env,
        VIEWS["sqlite"],
        '"eventcounters_tracking", eventcounters_counters and '
        "eventcounters_parked (dead letters)",
    )


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def setup(request: pytest.FixtureRequest, sqlite: Setup) -> Setup:
    if request.param == "sqlite":
        return sqlite
    postgres_env: dict[str, str] = request.getfixturevalue("postgres_env")
    schema: str = request.getfixturevalue("pg_schema")
    # Qualified; the Postgres example's counters table is "eventcounters".
    return Setup(
        {**_environ(), **factory_env(postgres_env, schema)},
        VIEWS["postgres"],
        f'"{schema}"."eventcounters_tracking", "{schema}"."eventcounters" and '
        "eventcounters_parked (dead letters)",
    )


def write_events(setup: Setup, n: int, *extra: type[Aggregate.Event]) -> int:
    """Save ``n`` aggregates (one Created event each), then one with the
    ``extra`` events; the last notification id."""

    async def write() -> int:
        position = 0
        async with Application[UUID](setup.env) as app:
            for start in range(0, n, 100):
                batch = [Aggregate() for _ in range(min(100, n - start))]
                position = (await app.save(*batch))[-1].notification.id
            if extra:
                aggregate = Aggregate()
                for event_class in extra:
                    aggregate.trigger_event(event_class)
                position = (await app.save(aggregate))[-1].notification.id
        return position

    return asyncio.run(write())


def read_view(setup: Setup, version: int) -> tuple[int | None, int]:
    """The position of ``version``'s view and its count of created events."""

    async def read() -> tuple[int | None, int]:
        versions = ProjectionVersions[Any, Any](
            application_class=Application[UUID],
            projection_class=resolve_topic(V2),
            view_class=resolve_topic(setup.view),
            env=setup.env,
        )
        async with versions:
            view = await versions.view(version)
            return (
                await view.max_tracking_id("Application"),
                await view.get_created_event_counter(),
            )

    return asyncio.run(read())


def without_times(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for row in rows:
        datetime.fromisoformat(row.pop("created_at"))
        switched = row.pop("switched_at")
        assert switched is None or datetime.fromisoformat(switched)
    return rows


def row(version: int, status: str, declared: bool, **fields: Any) -> dict[str, Any]:
    return {
        "projection": "eventcounters",
        "version": version,
        "status": status,
        "declared": declared,
        "application": "Application",
        "position": 0,
        "lag": 0,
        "replay_until": None,
        **fields,
    }


@pytest.mark.parametrize("command", ["versions", "rebuild", "reset"])
def test_help(command: str, sqlite: Setup) -> None:
    result = asyncsourcing(command, "--help", env=sqlite.env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: asyncsourcing {command}")
    assert "--env-file PATH" in result.stdout


def test_versions_rebuild_and_reset(setup: Setup) -> None:
    assert write_events(setup, 30) == 30
    nothing = setup.run("versions")
    assert (nothing.returncode, nothing.stderr) == (0, "")
    assert nothing.stdout == (
        "no version of eventcounters is recorded: the first one run "
        "(asyncsourcing run or rebuild) serves, version 1 with this code\n"
    )
    assert setup.listing() == []

    # The first version run serves at once.
    first = setup.run("rebuild", "--max-lag", "0", *FAST)
    assert first.returncode == 0, first.stderr
    assert first.stdout == (
        "version 1 of eventcounters serves, the first version run here, at "
        "position 30\n"
        "the runners of version 1 (asyncsourcing run with its code) keep it "
        "current\n"
    )
    listed = setup.run("versions")
    lines = listed.stdout.splitlines()
    assert re.fullmatch(
        r"version  status   position  lag  replay mark  created \(UTC\) +"
        r"switched \(UTC\)",
        lines[0],
    )
    assert re.fullmatch(
        r"1\*       serving        30    0            -  \S+ \S+  \S+ \S+", lines[1]
    )
    assert lines[2:] == ["* the version that the projection class declares"]

    # The code of version 2: not recorded yet.
    before = setup.run("versions", projection=V2)
    assert before.stdout.splitlines()[1].startswith("1        serving")
    assert before.stdout.endswith(
        "version 2, which the projection class declares, is not recorded: "
        "asyncsourcing rebuild builds it\n"
    )

    rebuild = setup.run("rebuild", "--max-lag", "0", *FAST, projection=V2)
    assert rebuild.returncode == 0, rebuild.stderr
    assert rebuild.stdout == (
        "switched eventcounters to version 2 at position 30 (replay mark 30); "
        "version 1 is retired\n"
        "stop the runners of version 1 now: the switch fenced its leader off, "
        "and they only replay\n"
        "the runners of version 2 (asyncsourcing run with its code) keep it "
        "current\n"
    )
    # The progress, a line per report to a pipe, ends done.
    progress = rebuild.stderr.splitlines()
    assert all(line.startswith("version 2: [") for line in progress), progress
    assert progress[-1] == (
        "version 2: [####################] 100% 30/30 events, "
        f"{progress[-1].split(', ')[1]}, ETA 0:00:00 (leader)"
    )
    assert without_times(setup.listing(V2)) == [
        row(1, "retired", False, position=30),
        row(2, "serving", True, position=30, replay_until=30),
    ]
    assert read_view(setup, 2) == (30, 30)

    # Reset: without --yes, nothing is dropped.
    refused = setup.run("reset", "--version", "1", projection=V2)
    assert (refused.returncode, refused.stdout) == (2, "")
    assert len(refused.stderr.splitlines()) == 1, refused.stderr
    assert refused.stderr == (
        "asyncsourcing reset: error: reset would drop version 1 of "
        f"eventcounters (retired, at position 30): its tables {setup.tables}; "
        "version 1 would be forgotten. Add --yes to drop them\n"
    )
    assert len(setup.listing(V2)) == 2
    assert read_view(setup, 1) == (30, 30)

    reset = setup.run("reset", "--version", "1", "--yes", projection=V2)
    assert reset.returncode == 0, reset.stderr
    assert reset.stdout == (
        "dropped version 1 of eventcounters (retired, at position 30): its "
        f"tables {setup.tables}\nversion 1 is forgotten\n"
    )
    assert [r["version"] for r in setup.listing(V2)] == [2]
    # Its tracking is gone (the tables read here are new, empty).
    assert read_view(setup, 1) == (None, 0)
    assert read_view(setup, 2) == (30, 30)


def test_reset_of_the_serving_version_replays_up_to_where_it_was(
    sqlite: Setup,
) -> None:
    write_events(sqlite, 5)
    assert sqlite.run("rebuild", "--max-lag", "0").returncode == 0
    result = sqlite.run("reset", "--version", "1", "--yes")
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith(
        "\nversion 1 still serves: its runners process every event again, as "
        "replays up to position 5\n"
    )
    assert without_times(sqlite.listing()) == [
        row(1, "serving", True, lag=5, replay_until=5)
    ]


def test_rebuild_without_switching(sqlite: Setup) -> None:
    write_events(sqlite, 5)
    assert sqlite.run("rebuild", "--max-lag", "0").returncode == 0
    write_events(sqlite, 3)
    result = sqlite.run(
        "rebuild", "--max-lag", "0", "--no-switch", "--no-progress", projection=V2
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith(
        "built version 2 of eventcounters up to position 8, not switched: "
        "version 1 serves\n"
    )
    assert without_times(sqlite.listing(V2)) == [
        row(1, "serving", False, position=5, lag=3),
        row(2, "building", True, position=8),
    ]


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_the_rebuild_and_the_next_goes_on_from_there(
    stop: signal.Signals, sqlite: Setup
) -> None:
    write_events(sqlite, 2500)
    assert sqlite.run("rebuild", "--max-lag", "0").returncode == 0
    # Half a second a batch of up to 500 events.
    command = Running(
        "rebuild", *sqlite.args(SLOW_V2), "--max-lag", "0", *FAST, env=sqlite.env
    )
    command.wait_for(r"^version 2: \[#+-+\] \d+% [1-9][\d,]*/2,500 events")
    command.process.send_signal(stop)
    assert command.finish() == 0, command.stderr
    assert command.process.stdout is not None
    assert command.process.stdout.read() == ""
    last = command.stderr[-1]
    match = re.fullmatch(
        rf"version 2: stopped by {stop.name} at position ([\d,]+), lag [\d,]+ "
        r"events; not switched: asyncsourcing rebuild goes on from there\n",
        last,
    )
    assert match, command.stderr
    position = int(match.group(1).replace(",", ""))
    assert 0 < position < 2500
    [_, building] = sqlite.listing(V2)
    assert (building["status"], building["position"]) == ("building", position)

    # The next rebuild starts where this one stopped.
    again = sqlite.run("rebuild", "--max-lag", "0", *FAST, projection=V2)
    assert again.returncode == 0, again.stderr
    assert again.stderr.startswith("version 2: [")
    first_position = re.search(r"% ([\d,]+)/", again.stderr)
    assert first_position is not None
    assert int(first_position.group(1).replace(",", "")) >= position
    assert again.stdout.startswith("switched eventcounters to version 2")
    assert read_view(sqlite, 2) == (2500, 2500)


def test_error_of_the_projection(sqlite: Setup) -> None:
    write_events(sqlite, 3, Aggregate.Event, SpannerThrown)
    # Lag 0: with the default, 3 events are under the lag of a switch, and
    # the rebuild may end before the runner reaches the failing event.
    result = sqlite.run("rebuild", "--max-lag", "0", "--no-progress")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.endswith(
        "asyncsourcing rebuild: error: SpannerThrownError: This is a deliberate bug\n"
    )


def test_unknown_version(sqlite: Setup) -> None:
    write_events(sqlite, 1)
    assert sqlite.run("rebuild").returncode == 0
    for extra in ([], ["--yes"]):
        result = sqlite.run("reset", "--version", "3", *extra)
        assert (result.returncode, result.stdout) == (1, "")
        assert result.stderr == (
            "asyncsourcing reset: error: VersionError: Projection "
            "'eventcounters' has no version 3\n"
        )


def test_reset_refused_while_a_runner_runs_the_version(sqlite: Setup) -> None:
    write_events(sqlite, 2)
    runner = Running("run", *sqlite.args(), *FAST, env=sqlite.env)
    try:
        runner.wait_for(r"^position 2 of 2")
        result = sqlite.run("reset", "--version", "1", "--yes")
    finally:
        runner.process.send_signal(signal.SIGINT)
        runner.finish()
    assert result.returncode == 1
    assert re.fullmatch(
        r"asyncsourcing reset: error: VersionError: Projection 'eventcounters' "
        r"version 1 is being run \(lease held by \S+\): stop its runners first\n",
        result.stderr,
    )
    assert read_view(sqlite, 1) == (2, 2)


def test_versions_need_a_view_in_a_database(sqlite: Setup) -> None:
    env = {**sqlite.env, "PERSISTENCE_MODULE": "asyncsourcing.popo"}
    args = [*APP, "--projection", V1]
    popo = asyncsourcing(
        "versions",
        *args,
        "--view",
        "examples.eventcounters.views:POPOEventCounters",
        env=env,
    )
    assert (popo.returncode, popo.stdout) == (2, "")
    assert popo.stderr == (
        "asyncsourcing versions: error: --view "
        "'examples.eventcounters.views:POPOEventCounters' keeps no versions: "
        "they need the view in a database (SQLite, PostgreSQL), not in memory "
        "(backend: PERSISTENCE_MODULE=asyncsourcing.popo)\n"
    )
    event_sourced = asyncsourcing(
        "rebuild",
        *APP,
        "--projection",
        "examples.dogschool.projections:DogCounters",
        env=sqlite.env,
    )
    assert event_sourced.returncode == 2
    assert event_sourced.stderr == (
        "asyncsourcing rebuild: error: --projection "
        "'examples.dogschool.projections:DogCounters' is an event-sourced "
        "projection, which has no versions: they need a Projection with a "
        "view in a database (SQLite, PostgreSQL)\n"
    )


@pytest.mark.parametrize(
    "args",
    [["reset"], ["reset", "--version", "0"], ["rebuild", "--max-lag", "-1"]],
)
def test_bad_arguments(args: list[str], sqlite: Setup) -> None:
    result = asyncsourcing(args[0], *sqlite.args(), *args[1:], env=sqlite.env)
    assert (result.returncode, result.stdout) == (2, "")
    assert f"usage: asyncsourcing {args[0]}" in result.stderr


# In-process tests of the parts.


def test_rebuild_progress_line() -> None:
    report = RebuildProgress(
        version=2,
        position=612_000,
        head=1_000_000,
        started_at_position=0,
        elapsed=15.0,
        rate=41_230.4,
        role="leader",
    )
    assert format_rebuild(report) == (
        "version 2: [############--------] 61% 612,000/1,000,000 events, "
        "41,230 ev/s, ETA 0:00:09 (leader)"
    )
    start = RebuildProgress(2, 0, 1, 0, 0.0, None, "standby")
    assert format_rebuild(start, width=4) == (
        "version 2: [----] 0% 0/1 event, - ev/s, ETA ? (standby)"
    )
    nothing = RebuildProgress(3, 0, 0, 0, 0.0, None, "leader")
    assert format_rebuild(nothing, width=4) == (
        "version 3: [####] 100% 0/0 events, - ev/s, ETA 0:00:00 (leader)"
    )


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.4, "0:00:00"), (9.2, "0:00:09"), (3723, "1:02:03")]
)
def test_format_clock(seconds: float, text: str) -> None:
    assert format_clock(seconds) == text


def test_versions_text() -> None:
    rows = [
        VersionRow(
            "dogs", 1, "retired", False, "School", 1200, 0, None,
            "2025-01-02T03:04:05.678+00:00", "2025-01-03T00:00:00+00:00",
        ),
        VersionRow(
            "dogs", 2, "building", False, "School", 7, 1193, None,
            "2025-01-02T04:00:00+00:00", None,
        ),
    ]  # fmt: skip
    assert versions_text(rows, "dogs", 3) == (
        "version  status    position    lag  replay mark  created (UTC)        "
        "switched (UTC)\n"
        "1        retired      1,200      0            -  2025-01-02 03:04:05  "
        "2025-01-03 00:00:00\n"
        "2        building         7  1,193            -  2025-01-02 04:00:00  -\n"
        "version 3, which the projection class declares, is not recorded: "
        "asyncsourcing rebuild builds it\n"
    )
