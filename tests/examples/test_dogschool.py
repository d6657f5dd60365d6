"""The dog school example: the application, its counters view and projections."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from asyncsourcing.projection import EventSourcedProjectionRunner, ProjectionRunner
from examples.dogschool.__main__ import configure, main, parse_args
from examples.dogschool.application import DogSchool
from examples.dogschool.projections import (
    DOGS,
    TRICKS,
    DogCounters,
    DogCountersProjection,
)
from examples.dogschool.views import POPOCounters
from tests.support.paths import ROOT

POPO = {"PERSISTENCE_MODULE": "asyncsourcing.popo"}


async def test_school_registers_dogs_and_teaches_tricks() -> None:
    async with DogSchool(POPO) as school:
        dog_id, position = await school.register_dog("Fido")
        assert position == 1
        assert await school.add_trick(dog_id, "roll over") == 2
        assert await school.add_trick(dog_id, "play dead") == 3
        assert await school.get_dog(dog_id) == {
            "name": "Fido",
            "tricks": ("roll over", "play dead"),
        }


async def test_projection_counts_dogs_and_tricks() -> None:
    async with ProjectionRunner(
        application_class=DogSchool,
        projection_class=DogCountersProjection,
        view_class=POPOCounters,
        env=POPO,
    ) as runner:
        school, view = runner.app, runner.projection.view
        fido, _ = await school.register_dog("Fido")
        await school.register_dog("Milly")
        await school.add_trick(fido, "roll over")
        position = await school.add_trick(fido, "play dead")

        await view.wait(school.name, position)
        assert await view.get_count(DOGS) == 2
        assert await view.get_count(TRICKS) == 2


async def test_event_sourced_projection_counts_with_aggregates() -> None:
    async with EventSourcedProjectionRunner(
        application_class=DogSchool, projection_class=DogCounters, env=POPO
    ) as runner:
        school, counters = runner.app, runner.projection
        fido, _ = await school.register_dog("Fido")
        position = await school.add_trick(fido, "roll over")

        await runner.wait(position)
        assert await counters.get_count(DOGS) == 1
        assert await counters.get_count(TRICKS) == 1
        # Each counter increment was recorded with the tracking of its cause.
        assert await counters.recorder.max_tracking_id(school.name) == position
        notifications = await counters.recorder.select_notifications(None, 10)
        assert len(notifications) == 4  # Two counters started, each incremented.


async def test_concurrent_commands_are_all_counted_once() -> None:
    async with ProjectionRunner(
        application_class=DogSchool,
        projection_class=DogCountersProjection,
        view_class=POPOCounters,
        env=POPO,
    ) as runner:
        school, view = runner.app, runner.projection.view
        results = await asyncio.gather(
            *(school.register_dog(f"dog {n}") for n in range(50))
        )
        await view.wait(school.name, max(position for _, position in results))
        assert await view.get_count(DOGS) == 50


async def test_main_job_in_memory(capsys: pytest.CaptureFixture[str]) -> None:
    result: dict[str, Any] = await main(dogs=5, tricks=2, env=POPO)
    assert result == {"processed": 15, "dogs": 5, "tricks": 10}
    out = capsys.readouterr().out
    assert "the view counts 5 dogs and 10 tricks" in out


def test_main_job_arguments() -> None:
    args = parse_args(["--dogs", "3", "--tricks", "1"])
    assert (args.dogs, args.tricks) == (3, 1)
    with pytest.raises(SystemExit):
        parse_args(["--tricks", "9"])


async def test_main_job_on_sqlite_resumes_where_the_view_left_off(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = configure({"SQLITE_DBNAME": str(tmp_path / "dogschool.sqlite")})
    assert env["PERSISTENCE_MODULE"] == "asyncsourcing.sqlite"

    first = await main(dogs=4, tricks=1, env=env)
    second = await main(dogs=2, tricks=3, env=env)

    assert first == {"processed": 8, "dogs": 4, "tricks": 4}
    assert second == {"processed": 8, "dogs": 6, "tricks": 10}
    assert "view resumed from position 8" in capsys.readouterr().out


def test_main_job_runs_as_a_module(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "examples.dogschool", "--dogs", "3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "", "SQLITE_DBNAME": str(tmp_path / "school.sqlite")},
    )
    assert result.returncode == 0, result.stderr
    assert "projected 12 events" in result.stdout
    assert "the view counts 3 dogs and 9 tricks" in result.stdout


async def test_event_sourced_projection_on_sqlite_resumes(tmp_path: Path) -> None:
    env = {
        "PERSISTENCE_MODULE": "asyncsourcing.sqlite",
        "SQLITE_DBNAME": str(tmp_path / "school.sqlite"),
        # Its own events need their own database: SQLite table names are fixed.
        "DOGCOUNTERS_SQLITE_DBNAME": str(tmp_path / "counters.sqlite"),
    }

    async def run_once(dogs: int) -> int:
        async with EventSourcedProjectionRunner(
            application_class=DogSchool, projection_class=DogCounters, env=env
        ) as runner:
            position = 0
            for n in range(dogs):
                dog_id, _ = await runner.app.register_dog(f"dog {n}")
                position = await runner.app.add_trick(dog_id, "sit")
            await runner.wait(position, timeout=10)
            return await runner.projection.get_count(DOGS)

    assert await run_once(1) == 1
    counted = await run_once(2)
    assert counted == 3
