"""The ``asyncsourcing`` command, run for real as ``python -m asyncsourcing``.

The dog school example is the projection under test, on an SQLite file in
the test's temporary directory. Events are written in the test, by the
example's application, and the view is queried afterwards with its class.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from uuid import UUID

import pytest

from asyncsourcing.application import Application
from asyncsourcing.cli.config import UsageError, compose_env, read_env_file
from asyncsourcing.cli.progress import (
    RateMeter,
    Sample,
    count,
    format_duration,
    format_progress,
)
from asyncsourcing.domain import Aggregate
from asyncsourcing.persistence import InfrastructureFactory
from asyncsourcing.utils import Environment
from examples.dogschool.application import DogSchool
from examples.dogschool.projections import DOGS, TRICKS, DogCountersProjection
from examples.dogschool.sqlite import SQLiteCounters
from examples.eventcounters.projection import SpannerThrown
from tests.support.paths import ROOT

DOGSCHOOL = [
    "--app",
    "examples.dogschool.application:DogSchool",
    "--projection",
    "examples.dogschool.projections:DogCountersProjection",
    "--view",
    "examples.dogschool.sqlite:SQLiteCounters",
]
# Frequent progress lines, so the tests see the position soon.
FAST = ["--interval", "0.1"]
TIMEOUT = 15


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The process environment, on an SQLite file of the test's own."""
    environ = {
        k: v
        for k, v in os.environ.items()
        # Settings of the developer's shell must not redirect the test.
        if not k.endswith(("PERSISTENCE_MODULE", "SQLITE_DBNAME"))
    }
    return {
        **environ,
        "PERSISTENCE_MODULE": "asyncsourcing.sqlite",
        "SQLITE_DBNAME": str(tmp_path / "school.sqlite"),
    }


def asyncsourcing(
    *args: str, env: dict[str, str], timeout: float = TIMEOUT, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asyncsourcing", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class Running:
    """A command running in the background, its stderr read line by line."""

    def __init__(self, *args: str, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "asyncsourcing", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        # A thread, because a pipe read has no timeout.
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.put(line)

    def wait_for(self, pattern: str, timeout: float = TIMEOUT) -> str:
        """The first new stderr line that matches ``pattern``."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            self.stderr.append(line)
            if re.search(pattern, line):
                return line
        self.process.kill()
        pytest.fail(f"no line matching {pattern!r} in stderr: {self.stderr}")

    def finish(self, timeout: float = TIMEOUT) -> int:
        """The exit status, once the command has exited; all stderr is read."""
        try:
            code = self.process.wait(timeout)
        finally:
            self.process.kill()
        self._reader.join(timeout)
        while not self.lines.empty():
            self.stderr.append(self.lines.get())
        return code


def write_dogs(env: dict[str, str], dogs: int, tricks: int = 1) -> int:
    """Register dogs and teach them tricks; the last notification id."""

    async def write() -> int:
        position = 0
        async with DogSchool(env) as school:
            for n in range(dogs):
                dog_id, position = await school.register_dog(f"dog {n}")
                for t in range(tricks):
                    position = await school.add_trick(dog_id, f"trick {t}")
        return position

    return asyncio.run(write())


def view_counts(env: dict[str, str]) -> tuple[int | None, int, int]:
    """The view's position and its counts of dogs and tricks."""

    async def read() -> tuple[int | None, int, int]:
        factory = InfrastructureFactory[SQLiteCounters].construct(
            Environment(DogCountersProjection.name, env)
        )
        async with factory:
            view = await factory.tracking_recorder(SQLiteCounters)
            return (
                await view.max_tracking_id(DogSchool.name),
                await view.get_count(DOGS),
                await view.get_count(TRICKS),
            )

    return asyncio.run(read())


@pytest.mark.parametrize("command", [[], ["run"], ["status"]])
def test_help(command: list[str], env: dict[str, str]) -> None:
    result = asyncsourcing(*command, "--help", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: {' '.join(['asyncsourcing', *command])}")
    if command:
        assert "--app MODULE:CLASS" in result.stdout
        assert "--env-file PATH" in result.stdout


def test_version(env: dict[str, str]) -> None:
    result = asyncsourcing("--version", env=env)
    assert result.returncode == 0
    assert re.fullmatch(r"asyncsourcing \d+\.\d+\S*\n", result.stdout)


def test_no_command_is_a_usage_error(env: dict[str, str]) -> None:
    result = asyncsourcing(env=env)
    assert result.returncode == 2
    assert "usage: asyncsourcing" in result.stderr


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_run_processes_events_until_a_signal(
    stop: signal.Signals, env: dict[str, str]
) -> None:
    position = write_dogs(env, dogs=10, tricks=2)
    assert position == 30
    command = Running("run", *DOGSCHOOL, *FAST, env=env)
    command.wait_for(r"position 30 of 30 \| lag 0 events, 0s \|")
    # Events written while it runs are processed too.
    assert write_dogs(env, dogs=2) == 34
    command.wait_for(r"position 34 of 34")
    command.process.send_signal(stop)
    assert command.finish() == 0, command.stderr
    assert "stopped at position 34, lag 0 events\n" in command.stderr
    assert not [line for line in command.stderr if "Traceback" in line]
    assert view_counts(env) == (34, 12, 22)


def test_run_resumes_and_returns_at_its_timeout(env: dict[str, str]) -> None:
    write_dogs(env, dogs=3)
    first = asyncsourcing("run", *DOGSCHOOL, "--timeout", "0.3", env=env)
    assert first.returncode == 0, first.stderr
    assert view_counts(env) == (6, 3, 3)
    write_dogs(env, dogs=2)
    second = asyncsourcing("run", *DOGSCHOOL, "--timeout", "0.3", *FAST, env=env)
    assert second.returncode == 0, second.stderr
    # It resumed from position 6: nothing is counted twice.
    assert second.stderr.startswith("position 6 of 10 | lag 4 events")
    assert "stopped at position 10, lag 0 events" in second.stderr
    assert view_counts(env) == (10, 5, 5)


def test_no_progress(env: dict[str, str]) -> None:
    write_dogs(env, dogs=1)
    result = asyncsourcing(
        "run", *DOGSCHOOL, "--timeout", "0.2", "--no-progress", env=env
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert view_counts(env) == (2, 1, 1)


@pytest.mark.parametrize(
    ("option", "topic", "message"),
    [
        ("--app", "examples.nosuchmodule:DogSchool", "No module named"),
        ("--projection", "examples.dogschool.projections:Nope", "no attribute 'Nope'"),
        ("--view", "examples.dogschool.projections:DOGS", "not a subclass of"),
        ("--view", "examples.dogschool.sqlite", "expected a topic"),
    ],
)
def test_bad_topic(option: str, topic: str, message: str, env: dict[str, str]) -> None:
    args = list(DOGSCHOOL)
    args[args.index(option) + 1] = topic
    result = asyncsourcing("run", *args, env=env)
    assert result.returncode == 2
    assert f"{option}" in result.stderr
    assert repr(topic) in result.stderr
    assert message in result.stderr


@pytest.mark.parametrize("command", ["run", "status"])
def test_view_of_another_backend_than_the_default(
    command: str, env: dict[str, str]
) -> None:
    # No PERSISTENCE_MODULE, no env file: the in-memory default.
    del env["PERSISTENCE_MODULE"]
    result = asyncsourcing(command, *DOGSCHOOL, env=env)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        f"asyncsourcing {command}: error: --view "
        "'examples.dogschool.sqlite:SQLiteCounters' is a view for the SQLite "
        "backend (asyncsourcing.sqlite), but the backend is the in-memory "
        "default (PERSISTENCE_MODULE is not set): set "
        "PERSISTENCE_MODULE=asyncsourcing.sqlite and SQLITE_DBNAME in the "
        "environment or an --env-file, or give a --view for the in-memory "
        "backend\n"
    )


@pytest.mark.parametrize(
    ("variable", "topic"),
    [
        ("PERSISTENCE_MODULE", "asyncsourcing.popo"),
        # The projection's own setting, as a factory class.
        ("DOGCOUNTERS_PERSISTENCE_MODULE", "asyncsourcing.popo:POPOFactory"),
    ],
)
def test_view_of_another_backend_than_the_configured_one(
    variable: str, topic: str, env: dict[str, str]
) -> None:
    result = asyncsourcing("status", *DOGSCHOOL, env={**env, variable: topic})
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert (
        f"but the backend is {variable}={topic}: "
        f"set {variable}=asyncsourcing.sqlite and SQLITE_DBNAME"
    ) in result.stderr


def test_postgres_view_on_sqlite(env: dict[str, str]) -> None:
    args = [*DOGSCHOOL[:-1], "examples.dogschool.postgres:PostgresCounters"]
    result = asyncsourcing("run", *args, env=env)
    assert result.returncode == 2
    assert result.stderr == (
        "asyncsourcing run: error: --view "
        "'examples.dogschool.postgres:PostgresCounters' is a view for the "
        "PostgreSQL backend (asyncsourcing.postgres), but the backend is "
        "PERSISTENCE_MODULE=asyncsourcing.sqlite: set "
        "PERSISTENCE_MODULE=asyncsourcing.postgres and the POSTGRES_* settings "
        "in the environment or an --env-file, or give a --view for the SQLite "
        "backend\n"
    )


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("SQLITE_DBNAME", "", "SQLite database name not found in environment"),
        ("SQLITE_LOCK_TIMEOUT", "soon", "Invalid DOGCOUNTERS_SQLITE_LOCK_TIMEOUT"),
        ("PERSISTENCE_MODULE", "nosuchmodule", "Cannot import persistence module"),
    ],
)
def test_bad_setting(
    variable: str, value: str, message: str, env: dict[str, str]
) -> None:
    env = {**env, variable: value}
    result = asyncsourcing("status", *DOGSCHOOL, env=env)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith(f"asyncsourcing status: error: {message}")
    backend = env["PERSISTENCE_MODULE"]
    assert result.stderr.endswith(f" (backend: PERSISTENCE_MODULE={backend})\n")
    assert len(result.stderr.splitlines()) == 1, result.stderr


def test_projection_error(env: dict[str, str]) -> None:
    async def write() -> None:
        async with Application[UUID](env) as app:
            aggregate = Aggregate()
            aggregate.trigger_event(Aggregate.Event)
            aggregate.trigger_event(SpannerThrown)
            await app.save(aggregate)

    asyncio.run(write())
    result = asyncsourcing(
        "run",
        "--app",
        "asyncsourcing.application:Application",
        "--projection",
        "examples.eventcounters.projection:EventCountersProjection",
        "--view",
        "examples.eventcounters.sqlite:SQLiteEventCounters",
        "--no-progress",
        "--timeout",
        "10",
        env=env,
    )
    assert result.returncode == 1
    assert result.stderr.endswith(
        "asyncsourcing run: error: SpannerThrownError: This is a deliberate bug\n"
    )
    # The runner's own log record, with the traceback, comes first.
    assert "stopped by an error" in result.stderr


def test_status(env: dict[str, str]) -> None:
    write_dogs(env, dogs=2)
    before = asyncsourcing("status", *DOGSCHOOL, env=env)
    assert before.returncode == 0, before.stderr
    assert before.stdout == (
        "application: DogSchool (last notification 4)\n"
        "projection:  dogcounters\n"
        "leader:      none\n"
        "standbys:    none\n"
        "position:    0\n"
        "lag:         4 events\n"
    )
    # Status processes nothing.
    assert view_counts(env) == (None, 0, 0)
    assert asyncsourcing("run", *DOGSCHOOL, "--timeout", "0.2", env=env).returncode == 0
    after = asyncsourcing("status", *DOGSCHOOL, env=env)
    assert "position:    4\nlag:         0 events\n" in after.stdout


def test_status_json(env: dict[str, str]) -> None:
    write_dogs(env, dogs=2)
    before = asyncsourcing("status", *DOGSCHOOL, "--json", env=env)
    assert before.returncode == 0, before.stderr
    assert (before.stdout.count("\n"), before.stderr) == (1, "")
    # The documented keys, in their order.
    assert json.loads(before.stdout) == {
        "application": "DogSchool",
        "projection": "dogcounters",
        "position": 0,
        "max_notification_id": 4,
        "lag": 4,
        "leader": None,
        "epoch": None,
        "standbys": [],
        "partitions": [],
    }
    assert list(json.loads(before.stdout)) == [
        "application",
        "projection",
        "position",
        "max_notification_id",
        "lag",
        "leader",
        "epoch",
        "standbys",
        "partitions",
    ]
    assert asyncsourcing("run", *DOGSCHOOL, "--timeout", "0.2", env=env).returncode == 0
    after = asyncsourcing("status", *DOGSCHOOL, "--json", env=env)
    status = json.loads(after.stdout)
    assert (status["position"], status["max_notification_id"], status["lag"]) == (
        4,
        4,
        0,
    )


def test_status_of_a_partitioned_projection(env: dict[str, str]) -> None:
    audit = [
        "--app",
        "asyncsourcing.application:Application",
        "--projection",
        "examples.auditlog.projection:AuditLogProjection",
        "--view",
        "examples.auditlog.sqlite:SQLiteAuditLog",
    ]

    async def write() -> None:
        async with Application[UUID](env) as app:
            await app.save(*(Aggregate() for _ in range(10)))

    asyncio.run(write())
    runner = Running("run", *audit, *FAST, env=env)
    try:
        runner.wait_for(r"position 10 of 10")
        status = json.loads(asyncsourcing("status", *audit, "--json", env=env).stdout)
        text = asyncsourcing("status", *audit, env=env).stdout
    finally:
        runner.process.send_signal(signal.SIGINT)
        runner.finish()
    assert (status["position"], status["lag"], status["leader"]) == (10, 0, None)
    # One runner holds the 4 partitions, each past every event.
    [owner] = {p["owner"] for p in status["partitions"]}
    assert owner is not None
    assert [
        (p["partition"], p["position"], p["lag"]) for p in status["partitions"]
    ] == [(p, 10, 0) for p in range(4)]
    assert status["standbys"] == []
    assert "leader:      none (partitioned: see each partition)" in text
    assert f"partition 3: {owner} (epoch " in text


def test_two_runs_of_one_projection_one_leads_the_other_stands_by(
    env: dict[str, str],
) -> None:
    write_dogs(env, dogs=2)
    first = Running("run", *DOGSCHOOL, *FAST, env=env)
    first.wait_for(r"^position 4 of 4")
    second = Running("run", *DOGSCHOOL, *FAST, env=env)
    try:
        # The second stands by, and says so; its position is the leader's.
        second.wait_for(r"^standby \| position 4 of 4 \| lag 0 events")
        status = json.loads(
            asyncsourcing("status", *DOGSCHOOL, "--json", env=env).stdout
        )
        leader, epoch = status["leader"], status["epoch"]
        assert leader.split(":")[1] == str(first.process.pid)
        assert epoch == 1
        [standby] = status["standbys"]
        assert standby.split(":")[1] == str(second.process.pid)
        text = asyncsourcing("status", *DOGSCHOOL, env=env).stdout
        assert f"leader:      {leader} (epoch 1)\nstandbys:    {standby}\n" in text

        # The leader stops: the standby takes over and processes what follows.
        first.process.send_signal(signal.SIGINT)
        assert first.finish() == 0, first.stderr
        second.wait_for(r"^position 4 of 4")  # No longer "standby".
        write_dogs(env, dogs=1)
        second.wait_for(r"^position 6 of 6")
        status = json.loads(
            asyncsourcing("status", *DOGSCHOOL, "--json", env=env).stdout
        )
        assert (status["leader"], status["epoch"], status["standbys"]) == (
            standby,
            2,
            [],
        )
    finally:
        for running in (first, second):
            running.process.send_signal(signal.SIGINT)
            running.finish()
    # Both stopped cleanly: no leader, no standby is left on record.
    status = json.loads(asyncsourcing("status", *DOGSCHOOL, "--json", env=env).stdout)
    assert (status["leader"], status["standbys"]) == (None, [])
    assert view_counts(env) == (6, 3, 3)


def test_json_is_for_status_only(env: dict[str, str]) -> None:
    result = asyncsourcing("run", *DOGSCHOOL, "--json", env=env)
    assert result.returncode == 2
    assert "unrecognized arguments: --json" in result.stderr


def test_one_event_is_singular(env: dict[str, str]) -> None:
    # One dog, no trick: one event.
    assert write_dogs(env, dogs=1, tricks=0) == 1
    status = asyncsourcing("status", *DOGSCHOOL, env=env)
    assert status.stdout.endswith("lag:         1 event\n"), status.stdout
    # The first progress line, before the view has processed it.
    run = asyncsourcing("run", *DOGSCHOOL, "--timeout", "0.3", *FAST, env=env)
    assert run.returncode == 0, run.stderr
    assert run.stderr.startswith("position 0 of 1 | lag 1 event, ? | - events/s\n")
    write_dogs(env, dogs=1, tricks=0)
    status = asyncsourcing("status", *DOGSCHOOL, env=env)
    assert status.stdout.endswith("position:    1\nlag:         1 event\n")


def test_event_sourced_projection_needs_no_view(
    env: dict[str, str], tmp_path: Path
) -> None:
    write_dogs(env, dogs=2)
    # Its own database: SQLite table names are fixed.
    env = {**env, "DOGCOUNTERS_SQLITE_DBNAME": str(tmp_path / "counters.sqlite")}
    args = [*DOGSCHOOL[:3], "examples.dogschool.projections:DogCounters"]
    result = asyncsourcing("run", *args, "--timeout", "0.3", *FAST, env=env)
    assert result.returncode == 0, result.stderr
    assert "stopped at position 4, lag 0 events" in result.stderr
    with_view = asyncsourcing("status", *args, *DOGSCHOOL[4:], env=env)
    assert with_view.returncode == 2
    assert "omit --view" in with_view.stderr


# A project of the user's: a module in the current directory, that logs.
SCHOOL_MODULE = """
import logging

from examples.dogschool.sqlite import SQLiteCounters

logger = logging.getLogger(__name__)


class Counters(SQLiteCounters):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        logger.debug("the project's debug message")
        logger.info("the project's info message")
"""
BROKEN_MODULE = """
from examples.dogschool.sqlite import SQLiteCounters


class Counters(SQLiteCounters):
    def __init__(self, *args, **kwargs):
        raise RuntimeError("the view's bug")
"""


def project(tmp_path: Path, env: dict[str, str], source: str) -> dict[str, str]:
    """A module ``school`` in ``tmp_path``, and an env that finds ``examples``."""
    (tmp_path / "school.py").write_text(source)
    return {**env, "PYTHONPATH": str(ROOT)}


def test_console_script(env: dict[str, str], tmp_path: Path) -> None:
    # The installed entry point, which, unlike `python -m`, must put the
    # current directory on sys.path itself to find the project's modules.
    script = Path(sys.executable).parent / "asyncsourcing"
    if not script.exists():
        pytest.skip("the console script is not installed (pip install -e .)")
    result = subprocess.run(
        [script, "status", *DOGSCHOOL[:-1], "school:Counters"],
        cwd=tmp_path,
        env=project(tmp_path, env, SCHOOL_MODULE),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "position:    0\n" in result.stdout


def test_log_level_is_for_the_library_and_the_project(
    env: dict[str, str], tmp_path: Path
) -> None:
    write_dogs(env, dogs=1)
    args = [*DOGSCHOOL[:-1], "school:Counters", "--timeout", "0.3"]
    env = project(tmp_path, env, SCHOOL_MODULE)
    debug = asyncsourcing("run", *args, "--log-level", "DEBUG", env=env, cwd=tmp_path)
    assert debug.returncode == 0, debug.stderr
    loggers = {
        line.split(" ", 2)[1].rstrip(":")
        for line in debug.stderr.splitlines()
        if line.startswith(("DEBUG ", "INFO ", "WARNING ", "ERROR "))
    }
    # Not asyncio's ("Using selector") nor aiosqlite's (each statement).
    assert all(
        name == "school" or name.startswith("asyncsourcing.") for name in loggers
    ), debug.stderr
    assert "DEBUG school: the project's debug message" in debug.stderr
    assert "INFO asyncsourcing.cli.commands: Running dogcounters" in debug.stderr
    assert "aiosqlite" not in debug.stderr
    info = asyncsourcing("run", *args, "--log-level", "info", env=env, cwd=tmp_path)
    assert "INFO school: the project's info message" in info.stderr
    assert "DEBUG" not in info.stderr


def test_constructor_error(env: dict[str, str], tmp_path: Path) -> None:
    args = [*DOGSCHOOL[:-1], "school:Counters"]
    env = project(tmp_path, env, BROKEN_MODULE)
    result = asyncsourcing("status", *args, env=env, cwd=tmp_path)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        "asyncsourcing status: error: RuntimeError: the view's bug\n"
    )
    # The traceback is there for who asks for it.
    debug = asyncsourcing(
        "status", *args, "--log-level", "DEBUG", env=env, cwd=tmp_path
    )
    assert debug.returncode == 1
    assert "DEBUG asyncsourcing.cli: asyncsourcing status failed\n" in debug.stderr
    assert 'in __init__\n    raise RuntimeError("the view\'s bug")' in debug.stderr


def test_env_file_supplies_settings(env: dict[str, str], tmp_path: Path) -> None:
    write_dogs(env, dogs=1)
    env_file = tmp_path / "school.env"
    env_file.write_text(
        "# the school's database\n"
        f"export SQLITE_DBNAME='{env['SQLITE_DBNAME']}'\n"
        'PERSISTENCE_MODULE="asyncsourcing.popo"  # the process env wins\n'
    )
    without_dbname = {k: v for k, v in env.items() if k != "SQLITE_DBNAME"}
    result = asyncsourcing(
        "status", *DOGSCHOOL, "--env-file", str(env_file), env=without_dbname
    )
    assert result.returncode == 0, result.stderr
    assert "lag:         2 events" in result.stdout


def test_env_file_errors(env: dict[str, str], tmp_path: Path) -> None:
    missing = asyncsourcing(
        "status", *DOGSCHOOL, "--env-file", str(tmp_path / "nope.env"), env=env
    )
    assert missing.returncode == 2
    assert "cannot read env file" in missing.stderr
    bad = tmp_path / "bad.env"
    bad.write_text("GOOD=1\nthis is not a setting\n")
    malformed = asyncsourcing("status", *DOGSCHOOL, "--env-file", str(bad), env=env)
    assert malformed.returncode == 2
    assert f"{bad}:2: expected KEY=VALUE" in malformed.stderr


# In-process tests of the parts.


def test_read_env_file(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_text(
        "\n"
        "  # a comment\n"
        "A=1\n"
        "export B = two words  # a comment\n"
        "C='single # quoted'\n"
        'D="double"  # a comment\n'
        "E=\n"
        "F=a#b\n"
    )
    assert read_env_file(path) == {
        "A": "1",
        "B": "two words",
        "C": "single # quoted",
        "D": "double",
        "E": "",
        "F": "a#b",
    }


@pytest.mark.parametrize("line", ["NOEQUALS", "1A=x", "A='unclosed", "A='x' junk"])
def test_read_env_file_rejects(line: str, tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_text(f"{line}\n")
    with pytest.raises(UsageError, match=r"\.env:1: expected KEY=VALUE"):
        read_env_file(path)


def test_process_environment_wins_over_the_file() -> None:
    assert compose_env({"A": "file", "B": "file"}, {"A": "process"}) == {"B": "file"}


def test_progress_line() -> None:
    meter = RateMeter(window=10)
    first = Sample(time=0.0, position=0, head=1000, lag=1000)
    meter.add(first)
    assert format_progress(first, meter) == (
        "position 0 of 1,000 | lag 1,000 events, ? | - events/s"
    )
    second = Sample(time=1.0, position=200, head=1000, lag=800)
    meter.add(second)
    assert format_progress(second, meter) == (
        "position 200 of 1,000 | lag 800 events, ~4.0s | 200 events/s"
    )
    done = Sample(time=2.0, position=1000, head=1000, lag=0)
    meter.add(done)
    assert format_progress(done, meter).endswith("lag 0 events, 0s | 800 events/s")


def test_progress_line_of_one_event() -> None:
    meter = RateMeter(window=10)
    meter.add(Sample(time=0.0, position=0, head=2, lag=2))
    one = Sample(time=1.0, position=1, head=2, lag=1)
    meter.add(one)
    assert format_progress(one, meter) == (
        "position 1 of 2 | lag 1 event, ~1.0s | 1 event/s"
    )


@pytest.mark.parametrize(
    ("number", "text"),
    [(0, "0 events"), (1, "1 event"), (2, "2 events"), (1200, "1,200 events")],
)
def test_count(number: int, text: str) -> None:
    assert count(number, "event") == text


def test_rate_meter_window() -> None:
    meter = RateMeter(window=2)
    for t in range(6):
        meter.add(Sample(time=float(t), position=t * t, head=100, lag=100))
    # Over the last 2 s (from t=3 to t=5), not since t=0.
    assert meter.recent() == (25 - 9) / 2
    assert meter.last_interval() == 25 - 16


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.04, "0.0s"), (9.94, "9.9s"), (12.4, "12s"), (185, "3m05s"), (7620, "2h07m")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
