"""Each projection keeps its own positions in an SQLite file (issue 15, item 1).

Views of one application may share a file with it and with each other: each
view records its positions in a tracking table named after its projection,
``<name>_tracking``, as on PostgreSQL. eventsourcing's ``tracking`` is kept
where sharing a file with eventsourcing needs it (event-sourced projections,
factories without a name). Any way left for two projections to share a
tracking row is an error that names both, raised as the second one starts,
and a file written before views had tables of their own is not silently
processed again from the start.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Mapping
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from eventsourcing import sqlite as es_sqlite

from asyncsourcing.persistence import InfrastructureFactory, ProgrammingError, Tracking
from asyncsourcing.projection import EventSourcedProjectionRunner, ProjectionRunner
from asyncsourcing.sqlite import (
    SQLiteFactory,
    SQLiteSettingsError,
    SQLiteTrackingRecorder,
    TrackingConflictError,
    TrackingUpgradeError,
)
from asyncsourcing.utils import Environment
from examples.dogschool.application import DogSchool
from examples.dogschool.projections import (
    DOGS,
    TRICKS,
    DogCounters,
    DogCountersProjection,
)
from examples.dogschool.sqlite import SQLiteCounters
from examples.dogschool.views import CountersView
from tests.support.paths import ROOT


class AuditProjection(DogCountersProjection):
    """A second plain projection of the dog school: the issue's ``audit``."""

    name = "audit"


class OtherDogCounters(DogCounters):
    """A second event-sourced projection of the dog school."""

    name = "otherdogcounters"


def sqlite_env(path: Path, **settings: str) -> dict[str, str]:
    """Everything (the application and every view) in the one file ``path``."""
    return {
        "PERSISTENCE_MODULE": "asyncsourcing.sqlite",
        "SQLITE_DBNAME": str(path),
        **settings,
    }


async def register_dogs(env: Mapping[str, str], dogs: int) -> int:
    """Register ``dogs`` dogs, each with a trick: the last notification id."""
    position = 0
    async with DogSchool(dict(env)) as school:
        for i in range(dogs):
            dog_id, _ = await school.register_dog(f"dog {i}")
            position = await school.add_trick(dog_id, "roll over")
    return position


async def run_to(
    env: Mapping[str, str],
    position: int,
    projection_class: type[DogCountersProjection] = DogCountersProjection,
) -> tuple[int, int]:
    """Run a projection until it has processed ``position``: its counts."""
    async with ProjectionRunner(
        application_class=DogSchool,
        projection_class=projection_class,
        view_class=SQLiteCounters,
        env=dict(env),
    ) as runner:
        await runner.wait(position, timeout=10)
        view = runner.view
        assert isinstance(view, SQLiteCounters)
        return await view.get_count(DOGS), await view.get_count(TRICKS)


def tables(path: Path) -> set[str]:
    with closing(sqlite3.connect(path)) as connection:
        return {
            row[0]
            for row in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'"
            )
        }


def owners(path: Path) -> set[tuple[str, str, str]]:
    if "asyncsourcing_tracking_owners" not in tables(path):
        return set()
    with closing(sqlite3.connect(path)) as connection:
        return set(
            connection.execute(
                "SELECT tracking_table, application_name, projection_name "
                "FROM asyncsourcing_tracking_owners"
            )
        )


# --- The issue: two plain projections of one application, one file ------------


async def test_second_projection_on_the_file_processes_every_event(
    tmp_path: Path,
) -> None:
    env = sqlite_env(tmp_path / "school.sqlite")
    last = await register_dogs(env, dogs=5)

    # The first projection runs to the end...
    assert await run_to(env, last, DogCountersProjection) == (5, 5)

    # ...and the second one, started afterwards, starts from the beginning
    # (it used to find the first one's position and process nothing).
    async with ProjectionRunner(
        application_class=DogSchool,
        projection_class=AuditProjection,
        view_class=SQLiteCounters,
        env=env,
    ) as audit:
        await audit.wait(last, timeout=10)
        statistics = await audit.statistics()
        assert statistics.events_processed == last
        assert await audit.view.get_count(DOGS) == 5
        assert await audit.view.get_count(TRICKS) == 5

    # Each has its own tables, and claims its own tracking rows.
    path = tmp_path / "school.sqlite"
    assert {
        "dogcounters_tracking",
        "dogcounters_counts",
        "audit_tracking",
        "audit_counts",
    } <= tables(path)
    assert "tracking" not in tables(path)
    assert owners(path) == {
        ("dogcounters_tracking", "DogSchool", "dogcounters"),
        ("audit_tracking", "DogSchool", "audit"),
    }


def asyncsourcing(
    *args: str, env: Mapping[str, str]
) -> subprocess.CompletedProcess[str]:
    environ = {
        k: v
        for k, v in os.environ.items()
        if not k.endswith(("PERSISTENCE_MODULE", "SQLITE_DBNAME", "TRACKING_TABLE"))
    }
    return subprocess.run(
        [sys.executable, "-m", "asyncsourcing", *args],
        cwd=ROOT,
        env={**environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def projection_args(projection: str) -> list[str]:
    return [
        "--app",
        "examples.dogschool.application:DogSchool",
        "--projection",
        projection,
        "--view",
        "examples.dogschool.sqlite:SQLiteCounters",
    ]


DOGCOUNTERS = projection_args("examples.dogschool.projections:DogCountersProjection")
AUDIT = projection_args("tests.sqlite.test_tracking_tables:AuditProjection")


async def test_the_issue_with_the_command_line(tmp_path: Path) -> None:
    env = sqlite_env(tmp_path / "school.sqlite")
    last = await register_dogs(env, dogs=3)
    run = ["run", "--no-progress", "--timeout", "1"]

    result = asyncsourcing(*run, *DOGCOUNTERS, env=env)
    assert result.returncode == 0, result.stderr

    # Before processing anything, audit is as far behind as it should be.
    result = asyncsourcing("status", "--json", *AUDIT, env=env)
    assert result.returncode == 0, result.stderr
    assert '"position": 0' in result.stdout
    assert f'"lag": {last}' in result.stdout

    result = asyncsourcing(*run, *AUDIT, env=env)
    assert result.returncode == 0, result.stderr
    view_env = Environment(AuditProjection.name, env)
    async with InfrastructureFactory[CountersView].construct(view_env) as factory:
        view = await factory.tracking_recorder(SQLiteCounters)
        assert await view.max_tracking_id("DogSchool") == last
        assert await view.get_count(DOGS) == 3


# --- Table names -----------------------------------------------------------------


async def test_table_names(tmp_path: Path) -> None:
    db = str(tmp_path / "names.sqlite")

    # A view's tracking table is named after its factory's environment,
    # lower-cased: a projection runner names it after the projection.
    named = SQLiteFactory(Environment("Audit", {"SQLITE_DBNAME": db}))
    view = named.construct_tracking_recorder(SQLiteCounters)
    assert view.tracking_table_name == "audit_tracking"
    assert view.parked_table_name == "audit_parked"
    assert view.owner_name == "Audit"

    # An event-sourced projection's process recorder keeps eventsourcing's
    # "tracking", which eventsourcing's process applications expect.
    process_recorder = named.construct_process_recorder()
    assert isinstance(process_recorder, SQLiteTrackingRecorder)
    assert process_recorder.tracking_table_name == "tracking"
    assert process_recorder.owner_name == "Audit"

    # So does a factory without a name, as eventsourcing's: it claims nothing.
    nameless = SQLiteFactory({"SQLITE_DBNAME": db})
    assert nameless.construct_tracking_recorder().tracking_table_name == "tracking"
    assert nameless.construct_tracking_recorder().owner_name is None

    # SQLITE_TRACKING_TABLE names it instead, prefixed or not.
    forced = SQLiteFactory(
        Environment("Audit", {"SQLITE_DBNAME": db, "AUDIT_SQLITE_TRACKING_TABLE": "t"})
    )
    assert forced.construct_tracking_recorder().tracking_table_name == "t"

    for factory in (named, nameless, forced):
        await factory.close()


def test_bad_tracking_table_names_are_clear_errors() -> None:
    # A setting that is not a plain identifier: the error names the setting.
    with pytest.raises(SQLiteSettingsError, match="AUDIT_SQLITE_TRACKING_TABLE"):
        SQLiteFactory(
            Environment(
                "Audit",
                {"SQLITE_DBNAME": ":memory:", "SQLITE_TRACKING_TABLE": "x; DROP"},
            )
        )

    # A name that gives no plain identifier: the error names the culprit and
    # the setting that would do instead.
    factory = SQLiteFactory(Environment("dog-counters", {"SQLITE_DBNAME": ":memory:"}))
    with pytest.raises(ProgrammingError) as raised:
        factory.construct_tracking_recorder(SQLiteCounters)
    assert "'dog-counters'" in str(raised.value)
    assert "DOG-COUNTERS_SQLITE_TRACKING_TABLE" in str(raised.value)


def test_a_view_that_drops_the_table_name_is_told_so() -> None:
    class Stubborn(SQLiteTrackingRecorder):
        def __init__(self, datastore: Any) -> None:
            super().__init__(datastore)

    named = SQLiteFactory(Environment("Audit", {"SQLITE_DBNAME": ":memory:"}))
    with pytest.raises(TypeError, match="tracking_table_name"):
        named.construct_tracking_recorder(Stubborn)
    # Without a name, the factory passes nothing, as it always did.
    nameless = SQLiteFactory({"SQLITE_DBNAME": ":memory:"})
    assert isinstance(nameless.construct_tracking_recorder(Stubborn), Stubborn)


# --- What is left of sharing: an error naming both projections -------------------


async def test_two_views_forced_onto_one_table_fail_as_the_second_starts(
    tmp_path: Path,
) -> None:
    env = sqlite_env(tmp_path / "school.sqlite", SQLITE_TRACKING_TABLE="views")
    last = await register_dogs(env, dogs=2)
    assert await run_to(env, last, DogCountersProjection) == (2, 2)

    with pytest.raises(TrackingConflictError) as raised:
        await run_to(env, last, AuditProjection)
    message = str(raised.value)
    assert "'audit'" in message
    assert "'dogcounters'" in message
    assert "'views'" in message
    assert "AUDIT_SQLITE_TRACKING_TABLE" in message
    assert "\n" not in message

    # The first one carries on.
    last = await register_dogs(env, dogs=1)
    assert await run_to(env, last, DogCountersProjection) == (3, 3)


async def test_names_that_differ_only_in_case_do_not_share_a_table(
    tmp_path: Path,
) -> None:
    class ShoutingAudit(DogCountersProjection):
        name = "AUDIT"

    env = sqlite_env(tmp_path / "school.sqlite")
    last = await register_dogs(env, dogs=1)
    assert await run_to(env, last, AuditProjection) == (1, 1)
    with pytest.raises(TrackingConflictError, match=r"'AUDIT'.*'audit'"):
        await run_to(env, last, ShoutingAudit)


async def test_two_event_sourced_projections_on_one_file_fail_as_the_second_starts(
    tmp_path: Path,
) -> None:
    school = sqlite_env(tmp_path / "school.sqlite")
    # Both in one file of their own: both in eventsourcing's "tracking".
    env = {
        **school,
        "DOGCOUNTERS_SQLITE_DBNAME": str(tmp_path / "counters.sqlite"),
        "OTHERDOGCOUNTERS_SQLITE_DBNAME": str(tmp_path / "counters.sqlite"),
    }
    last = await register_dogs(school, dogs=2)
    async with EventSourcedProjectionRunner(
        application_class=DogSchool, projection_class=DogCounters, env=env
    ) as runner:
        await runner.wait(last, timeout=10)

    with pytest.raises(TrackingConflictError) as raised:
        async with EventSourcedProjectionRunner(
            application_class=DogSchool, projection_class=OtherDogCounters, env=env
        ):
            pass
    message = str(raised.value)
    assert "'otherdogcounters'" in message
    assert "'DogCounters'" in message
    assert "OTHERDOGCOUNTERS_SQLITE_DBNAME" in message
    assert owners(tmp_path / "counters.sqlite") == {
        ("tracking", "DogSchool", "DogCounters")
    }


async def test_the_command_line_reports_sharing_in_one_line(tmp_path: Path) -> None:
    env = sqlite_env(tmp_path / "school.sqlite", SQLITE_TRACKING_TABLE="views")
    await register_dogs(env, dogs=1)
    run = ["run", "--no-progress", "--timeout", "1"]
    assert asyncsourcing(*run, *DOGCOUNTERS, env=env).returncode == 0

    result = asyncsourcing(*run, *AUDIT, env=env)
    assert result.returncode == 1
    errors = [
        line
        for line in result.stderr.splitlines()
        if line.startswith("asyncsourcing run: error:")
    ]
    assert len(errors) == 1, result.stderr
    assert "TrackingConflictError" in errors[0]
    assert "'audit'" in errors[0]
    assert "'dogcounters'" in errors[0]


# --- Files from before: never processed again silently ---------------------------


async def write_old_file(env: Mapping[str, str], dogs: int) -> int:
    """A file as an earlier version left it: the view's position in
    eventsourcing's shared ``tracking``, and its counts in ``counts``."""
    last = await register_dogs(env, dogs)
    async with InfrastructureFactory[CountersView].construct(dict(env)) as factory:
        view = await factory.tracking_recorder(SQLiteCounters)
        for position in range(1, last + 1):
            name = DOGS if position % 2 else TRICKS
            await view.incr_count(name, Tracking("DogSchool", position))
    return last


async def test_an_old_files_position_stops_the_view_with_instructions(
    tmp_path: Path,
) -> None:
    env = sqlite_env(tmp_path / "old.sqlite")
    last = await write_old_file(env, dogs=3)

    with pytest.raises(TrackingUpgradeError) as raised:
        await run_to(env, last, DogCountersProjection)
    message = str(raised.value)
    assert f"position {last}" in message
    assert "DOGCOUNTERS_SQLITE_TRACKING_TABLE=tracking" in message
    assert "DOGCOUNTERS_SQLITE_TRACKING_TABLE=dogcounters_tracking" in message
    # Nothing was processed, nothing was claimed.
    with closing(sqlite3.connect(tmp_path / "old.sqlite")) as connection:
        positions = "SELECT * FROM dogcounters_tracking WHERE application_name = ?"
        assert connection.execute(positions, ("DogSchool",)).fetchall() == []
        assert connection.execute("SELECT * FROM dogcounters_counts").fetchall() == []
    assert owners(tmp_path / "old.sqlite") == set()


async def test_an_old_file_resumes_with_its_tables_kept(tmp_path: Path) -> None:
    env = sqlite_env(tmp_path / "old.sqlite")
    await write_old_file(env, dogs=3)
    keep = {**env, "DOGCOUNTERS_SQLITE_TRACKING_TABLE": "tracking"}

    # Resumes from the old position, into the old counts: nothing twice.
    last = await register_dogs(env, dogs=1)
    assert await run_to(keep, last, DogCountersProjection) == (4, 4)

    # The shared row is now dogcounters', so other views start afresh...
    assert await run_to(env, last, AuditProjection) == (4, 4)
    # ...and dropping the setting again is caught, not a fresh start.
    with pytest.raises(TrackingUpgradeError, match="this projection recorded there"):
        await run_to(env, last, DogCountersProjection)


async def test_an_old_file_is_processed_again_when_asked(tmp_path: Path) -> None:
    env = sqlite_env(tmp_path / "old.sqlite")
    last = await write_old_file(env, dogs=3)
    again = {**env, "DOGCOUNTERS_SQLITE_TRACKING_TABLE": "dogcounters_tracking"}

    assert await run_to(again, last, DogCountersProjection) == (3, 3)
    # Once the view has positions of its own, the setting is not needed.
    last = await register_dogs(env, dogs=1)
    assert await run_to(env, last, DogCountersProjection) == (4, 4)


async def test_a_shared_row_of_an_event_sourced_projection_is_not_an_old_view(
    tmp_path: Path,
) -> None:
    # An event-sourced projection and a view of the same application, in one
    # file apart from the application's: the projection's position is in
    # "tracking", claimed by it, and the view starts afresh beside it.
    school = sqlite_env(tmp_path / "school.sqlite")
    shared = str(tmp_path / "projections.sqlite")
    env = {
        **school,
        "DOGCOUNTERS_SQLITE_DBNAME": shared,
        "AUDIT_SQLITE_DBNAME": shared,
    }
    last = await register_dogs(school, dogs=2)
    async with EventSourcedProjectionRunner(
        application_class=DogSchool, projection_class=DogCounters, env=env
    ) as runner:
        await runner.wait(last, timeout=10)
    assert await run_to(env, last, AuditProjection) == (2, 2)


# --- Sharing a file with eventsourcing --------------------------------------------


async def test_eventsourcing_reads_an_event_sourced_projections_tracking(
    tmp_path: Path,
) -> None:
    school = sqlite_env(tmp_path / "school.sqlite")
    counters = str(tmp_path / "counters.sqlite")
    env = {
        **school,
        "DOGCOUNTERS_SQLITE_DBNAME": counters,
        "AUDIT_SQLITE_DBNAME": counters,
    }
    last = await register_dogs(school, dogs=2)
    async with EventSourcedProjectionRunner(
        application_class=DogSchool, projection_class=DogCounters, env=env
    ) as runner:
        await runner.wait(last, timeout=10)
    # A view beside it, in its own table, which eventsourcing does not read.
    assert await run_to(env, last, AuditProjection) == (2, 2)

    # eventsourcing's process recorders find the position in "tracking", a
    # single-row table that needs no migration, beside asyncsourcing's tables.
    datastore = es_sqlite.SQLiteDatastore(counters)
    try:
        recorder = es_sqlite.SQLiteProcessRecorder(datastore)
        recorder.create_table()
        assert recorder.tracking_migration_previous == 1
        assert recorder.max_tracking_id("DogSchool") == last
    finally:
        datastore.close()
    assert {"tracking", "stored_events", "audit_tracking"} <= tables(Path(counters))
