"""Count an application's events into the tutorial's view, and print the counts.

    python -m examples.eventcounters [--aggregates N]

In memory by default; set PERSISTENCE_MODULE (and its settings) to use
another backend: asyncsourcing.sqlite or asyncsourcing.postgres.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from uuid import UUID

from asyncsourcing.application import Application
from asyncsourcing.domain import Aggregate
from asyncsourcing.projection import ProjectionRunner
from asyncsourcing.utils import resolve_topic
from examples.eventcounters.projection import EventCountersProjection
from examples.eventcounters.views import EventCountersView

VIEW_CLASSES = {
    "asyncsourcing.popo": "examples.eventcounters.views:POPOEventCounters",
    "asyncsourcing.sqlite": "examples.eventcounters.sqlite:SQLiteEventCounters",
    "asyncsourcing.postgres": "examples.eventcounters.postgres:PostgresEventCounters",
}


async def main(aggregates: int, env: dict[str, str]) -> tuple[int, int]:
    module = env.get("PERSISTENCE_MODULE", "asyncsourcing.popo")
    view_class: type[EventCountersView] = resolve_topic(VIEW_CLASSES[module])
    async with ProjectionRunner(
        application_class=Application[UUID],
        projection_class=EventCountersProjection,
        view_class=view_class,
        env=env,
    ) as runner:
        position = 0
        for _ in range(aggregates):
            aggregate = Aggregate()
            aggregate.trigger_event(Aggregate.Event)
            recordings = await runner.app.save(aggregate)
            position = recordings[-1].notification.id
        view = runner.projection.view
        await view.wait(runner.app.name, position, timeout=30)
        counts = (
            await view.get_created_event_counter(),
            await view.get_subsequent_event_counter(),
        )
        print(f"created events: {counts[0]}, subsequent events: {counts[1]}")
        return counts


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m examples.eventcounters")
    parser.add_argument("--aggregates", type=int, default=10)
    asyncio.run(main(parser.parse_args().aggregates, dict(os.environ)))
