"""Catch-up into the tutorial's counters view on PostgreSQL, by batch size.

    python -m benchmarks.batching [--events N] [--repetitions N] [--fast]

The main harness measures the runner as it is (batches of up to 500 events
while catching up); this compares one view transaction per event with
batches, on the same server in the same run. Starts its own throwaway
PostgreSQL unless POSTGRES_HOST is set: durable, or with fsync,
synchronous_commit and full_page_writes off with ``--fast``. It prints the
server's values of those settings above the table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from contextlib import ExitStack
from typing import Any
from uuid import UUID

import asyncpg

from asyncsourcing.application import Application
from asyncsourcing.domain import Aggregate
from asyncsourcing.projection import ProjectionRunner
from asyncsourcing.testing.pgserver import TemporaryPostgres
from benchmarks.server import DURABILITY_SETTINGS, describe_durability
from examples.eventcounters.postgres import PostgresEventCounters
from examples.eventcounters.projection import EventCountersProjection


async def record(env: dict[str, str], events: int) -> int:
    async with Application[UUID](env) as app:
        aggregates = []
        for _ in range(events // 2):
            aggregate = Aggregate()
            aggregate.trigger_event(Aggregate.Event)
            aggregates.append(aggregate)
        position = 0
        for i in range(0, len(aggregates), 500):
            recordings = await app.save(*aggregates[i : i + 500])
            position = recordings[-1].notification.id
        return position


async def catch_up(env: dict[str, str], last: int, batch_size: int) -> float:
    """Events per second, from the runner's start until wait() returns."""
    conn = await asyncpg.connect(**_connect_kwargs(env))
    await conn.execute("DROP TABLE IF EXISTS eventcounters, eventcounters_tracking")
    await conn.close()

    class Runner(ProjectionRunner[Any, Any]):
        max_batch_size = batch_size

    started = time.perf_counter()
    async with Runner(
        application_class=Application[UUID],
        projection_class=EventCountersProjection,
        view_class=PostgresEventCounters,
        env=env,
    ) as runner:
        await runner.wait(last, timeout=300)
    return last / (time.perf_counter() - started)


def _connect_kwargs(env: dict[str, str]) -> dict[str, Any]:
    return {
        "host": env["POSTGRES_HOST"],
        "port": int(env["POSTGRES_PORT"]),
        "user": env["POSTGRES_USER"],
        "password": env["POSTGRES_PASSWORD"],
        "database": env["POSTGRES_DBNAME"],
    }


async def durability(env: dict[str, str]) -> dict[str, str]:
    """The server's values of fsync, synchronous_commit and full_page_writes."""
    conn = await asyncpg.connect(**_connect_kwargs(env))
    try:
        return {
            name: await conn.fetchval(f"SHOW {name}") for name in DURABILITY_SETTINGS
        }
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.batching")
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument(
        "--fast",
        action="store_true",
        help=(
            "start the throwaway server with fsync, synchronous_commit and "
            "full_page_writes off (default: durable)"
        ),
    )
    args = parser.parse_args()
    with ExitStack() as stack:
        if "POSTGRES_HOST" in os.environ:
            settings = {
                k: v for k, v in os.environ.items() if k.startswith("POSTGRES_")
            }
        else:
            server = TemporaryPostgres(durable=not args.fast)
            settings = stack.enter_context(server).env()
        env = {"PERSISTENCE_MODULE": "asyncsourcing.postgres", **settings}
        print(f"PostgreSQL: {describe_durability(asyncio.run(durability(env)))}\n")
        last = asyncio.run(record(env, args.events))
        print("| view transactions | events/s (median) | min | max |")
        print("|---|---:|---:|---:|")
        for batch_size in (1, 500):
            rates = [
                asyncio.run(catch_up(env, last, batch_size))
                for _ in range(args.repetitions)
            ]
            label = "one per event" if batch_size == 1 else f"batches of {batch_size}"
            print(
                f"| {label} | {statistics.median(rates):,.0f} "
                f"| {min(rates):,.0f} | {max(rates):,.0f} |"
            )


if __name__ == "__main__":
    main()
