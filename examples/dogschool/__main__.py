"""The main job: run the dog school and its counters projection, and report.

    python -m examples.dogschool [--dogs N] [--tricks N]

Writes events, runs the projection runner until the view has processed
them, queries the view and prints what happened. Configured from the
environment like any application; by default it keeps everything in the
SQLite file ``dogschool.sqlite``, so running it again resumes where the
view left off.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Sequence

from asyncsourcing.projection import ProjectionRunner
from asyncsourcing.utils import resolve_topic
from examples.dogschool.application import DogSchool
from examples.dogschool.projections import DOGS, TRICKS, DogCountersProjection
from examples.dogschool.views import CountersView

VIEW_CLASSES = {
    "asyncsourcing.popo": "examples.dogschool.views:POPOCounters",
    "asyncsourcing.sqlite": "examples.dogschool.sqlite:SQLiteCounters",
    "asyncsourcing.postgres": "examples.dogschool.postgres:PostgresCounters",
}
DEFAULTS = {
    "PERSISTENCE_MODULE": "asyncsourcing.sqlite",
    "SQLITE_DBNAME": "dogschool.sqlite",
}
TRICKS_TAUGHT = ("roll over", "play dead", "fetch", "sit", "beg")


def configure(environ: dict[str, str]) -> dict[str, str]:
    """The defaults, overridden by the environment."""
    return {**DEFAULTS, **environ}


async def main(dogs: int, tricks: int, env: dict[str, str]) -> dict[str, float]:
    module = env["PERSISTENCE_MODULE"]
    view_class: type[CountersView] = resolve_topic(VIEW_CLASSES[module])
    async with ProjectionRunner(
        application_class=DogSchool,
        projection_class=DogCountersProjection,
        view_class=view_class,
        env=env,
    ) as runner:
        school, view = runner.app, runner.projection.view
        resumed_from = await view.max_tracking_id(school.name)
        print(f"backend: {module}", end="")
        print(f" ({env['SQLITE_DBNAME']})" if module.endswith("sqlite") else "")
        print(f"view resumed from position {resumed_from or 0}")

        started = time.perf_counter()
        position = 0
        for n in range(dogs):
            dog_id, position = await school.register_dog(f"dog {n}")
            for trick in TRICKS_TAUGHT[:tricks]:
                position = await school.add_trick(dog_id, trick)
        written = time.perf_counter() - started
        await runner.wait(position, timeout=60)
        elapsed = time.perf_counter() - started

        processed = position - (resumed_from or 0)
        dog_count, trick_count = (
            await view.get_count(DOGS),
            await view.get_count(TRICKS),
        )
        print(f"wrote {dogs} dogs and {dogs * tricks} tricks in {written:.3f}s")
        print(
            f"projected {processed} events in {elapsed:.3f}s "
            f"({processed / elapsed:,.0f} events/s, written and processed)"
        )
        print(f"the view counts {dog_count} dogs and {trick_count} tricks")
        return {"processed": processed, "dogs": dog_count, "tricks": trick_count}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m examples.dogschool")
    parser.add_argument("--dogs", type=int, default=100, help="dogs to register")
    parser.add_argument(
        "--tricks",
        type=int,
        default=3,
        choices=range(len(TRICKS_TAUGHT) + 1),
        help="tricks per dog",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    asyncio.run(main(args.dogs, args.tricks, configure(dict(os.environ))))
