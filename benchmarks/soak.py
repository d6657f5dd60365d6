"""Soak test: writers, a projection runner and waiters under injected faults.

    python -m benchmarks.soak --seconds 60 [--fast]

Starts a throwaway PostgreSQL (asyncsourcing.testing.pgserver) unless
``POSTGRES_HOST`` is set, and works in a schema of its own (dropped at the
end). The throwaway server is durable (fsync, synchronous_commit and
full_page_writes on), so that acknowledged events must survive its crashes;
``--fast`` turns those off, and a crash of the server may then lose
acknowledged events. The server's values of those settings are printed
first. For ``--seconds`` it runs together:

* writer tasks saving ``Counter`` aggregates, one event per save;
* a ProjectionRunner projecting them live into a view that records every
  processed notification id with its tracking (tests/faults_support.py),
  restarted by a supervisor when a fault stops it with an error;
* waiter tasks, on datastores of their own, awaiting ``view.wait()`` for
  positions just written (woken across datastores by LISTEN/NOTIFY);
* a fault injector that, every ``--fault-interval`` seconds, terminates
  (``pg_terminate_backend``) the LISTEN connections and, in turn, pooled
  connections of the soak.

Then the faults stop, the runner catches up, and it prints the events
written (in the database), acknowledged (saves that returned), processed,
skipped and duplicated, the out-of-order positions and the acknowledged
events that are missing. It exits with status 1 unless skipped, duplicated,
out-of-order and missing are all 0 and the runner caught up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any
from uuid import uuid4

import asyncpg

from asyncsourcing.persistence import InfrastructureFactory, PersistenceError
from asyncsourcing.projection import ProjectionRunner
from asyncsourcing.testing.pgserver import TemporaryPostgres
from asyncsourcing.utils import Environment
from benchmarks.server import DURABILITY_SETTINGS, describe_durability
from tests.faults_support import (
    Counter,
    Counters,
    PostgresRecordingView,
    RecordingProjection,
)

logger = logging.getLogger("soak")


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


@dataclass
class Stats:
    acknowledged: list[int] = field(default_factory=list)
    save_errors: int = 0
    waits_ok: int = 0
    wait_timeouts: int = 0
    wait_errors: int = 0
    runner_restarts: int = 0
    runner_errors: list[str] = field(default_factory=list)
    listen_kills: int = 0
    pool_kills: int = 0


class Soak:
    def __init__(self, pg_env: dict[str, str], args: argparse.Namespace) -> None:
        self.pg_env = pg_env
        self.args = args
        self.schema = f"soak_{uuid4().hex[:10]}"
        self.app_name_prefix = f"soak-{self.schema}"
        self.env = {
            "PERSISTENCE_MODULE": "asyncsourcing.postgres",
            **pg_env,
            "POSTGRES_SCHEMA": self.schema,
            "POSTGRES_APPLICATION_NAME": self.app_name_prefix,
            "POSTGRES_CONNECT_TIMEOUT": "5",
        }
        self.stats = Stats()
        self.writing = asyncio.Event()
        self.faulting = asyncio.Event()

    async def admin(self) -> asyncpg.Connection[Any]:
        e = self.pg_env
        return await asyncpg.connect(
            host=e["POSTGRES_HOST"],
            port=int(e["POSTGRES_PORT"]),
            user=e["POSTGRES_USER"],
            password=e["POSTGRES_PASSWORD"],
            database=e["POSTGRES_DBNAME"],
            server_settings={"application_name": "soak-admin"},
        )

    def runner(self) -> ProjectionRunner[Any, Any]:
        return ProjectionRunner(
            application_class=Counters,
            projection_class=RecordingProjection,
            view_class=PostgresRecordingView,
            env=self.env,
        )

    # Workers.

    async def writer(self, app: Counters) -> None:
        rng = random.Random()
        counter: Counter | None = None
        while self.writing.is_set():
            try:
                if counter is None or rng.random() < 0.1:
                    counter = Counter()
                else:
                    counter.increment()
                recordings = await app.save(counter)
            except PersistenceError:
                # The outcome is unknown (a terminated connection): start
                # from a new aggregate rather than guess its version.
                self.stats.save_errors += 1
                counter = None
                await asyncio.sleep(0.01)
                continue
            self.stats.acknowledged.extend(r.notification.id for r in recordings)
            await asyncio.sleep(rng.uniform(0, 0.002))

    async def waiter(self) -> None:
        factory: InfrastructureFactory[Any] = InfrastructureFactory.construct(
            Environment("recording", self.env)
        )
        view = factory.construct_tracking_recorder(PostgresRecordingView)
        try:
            while self.writing.is_set():
                if not self.stats.acknowledged:
                    await asyncio.sleep(0.05)
                    continue
                position = self.stats.acknowledged[-1]
                try:
                    await view.wait("Counters", position, timeout=15)
                    self.stats.waits_ok += 1
                    # wait() returns without yielding when the position is
                    # known: don't starve the event loop.
                    await asyncio.sleep(0.001)
                except TimeoutError:
                    self.stats.wait_timeouts += 1
                except PersistenceError:
                    self.stats.wait_errors += 1
                    await asyncio.sleep(0.05)
        finally:
            await factory.close()

    async def supervise_runner(self, stop: asyncio.Event) -> None:
        """Run the projection, restarting it after an error, until ``stop``."""
        while not stop.is_set():
            runner = self.runner()
            try:
                async with runner:
                    stopping = asyncio.create_task(stop.wait())
                    running = asyncio.create_task(runner.run_forever())
                    await asyncio.wait(
                        [stopping, running], return_when=asyncio.FIRST_COMPLETED
                    )
                    stopping.cancel()
                    runner.stop()
                    await running
                return
            except Exception as error:  # Restarted, and counted.
                self.stats.runner_restarts += 1
                self.stats.runner_errors.append(type(error).__name__)
                logger.info("runner stopped by %r; restarting", error)
                await asyncio.sleep(0.1)

    async def inject_faults(self, conn: asyncpg.Connection[Any]) -> None:
        for turn in itertools.count():
            await asyncio.sleep(self.args.fault_interval)
            if not self.faulting.is_set():
                return
            if turn % 2 == 0:
                condition = "application_name LIKE $1 || '%:listen'"
            else:
                condition = "application_name LIKE $1 || '%' AND "
                condition += "application_name NOT LIKE '%:listen'"
            killed = await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                f"WHERE {condition} AND pid <> pg_backend_pid()",
                self.app_name_prefix,
            )
            if turn % 2 == 0:
                self.stats.listen_kills += killed
            else:
                self.stats.pool_kills += killed

    # The run.

    async def run(self) -> int:
        admin = await self.admin()
        durability = {
            name: await admin.fetchval(f"SHOW {name}") for name in DURABILITY_SETTINGS
        }
        print(f"PostgreSQL: {describe_durability(durability)}", flush=True)
        await admin.execute(f"CREATE SCHEMA {_quote(self.schema)}")
        try:
            return await self._run(admin)
        finally:
            await admin.execute(f"DROP SCHEMA IF EXISTS {_quote(self.schema)} CASCADE")
            await admin.close()

    async def _run(self, admin: asyncpg.Connection[Any]) -> int:
        args = self.args
        started = time.monotonic()
        stop_runner = asyncio.Event()
        async with Counters(self.env) as app:
            await app.recorder.max_notification_id()  # Creates the tables.
            self.writing.set()
            self.faulting.set()
            supervisor = asyncio.create_task(self.supervise_runner(stop_runner))
            workers = [
                *(asyncio.create_task(self.writer(app)) for _ in range(args.writers)),
                *(asyncio.create_task(self.waiter()) for _ in range(args.waiters)),
            ]
            faults = asyncio.create_task(self.inject_faults(admin))
            await asyncio.sleep(args.seconds)
            self.faulting.clear()
            self.writing.clear()
            faults.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await faults
            await asyncio.gather(*workers)

        # Catching up, without faults.
        table = _quote(self.schema) + "." + _quote("counters_events")
        last = await admin.fetchval(f"SELECT max(notification_id) FROM {table}")
        tracking = _quote(self.schema) + "." + _quote("recording_tracking")
        caught_up = False
        deadline = time.monotonic() + args.catch_up_timeout
        while time.monotonic() < deadline:
            position = await admin.fetchval(
                f"SELECT notification_id FROM {tracking} WHERE application_name = $1",
                "Counters",
            )
            if position == last:
                caught_up = True
                break
            await asyncio.sleep(0.1)
        stop_runner.set()
        await supervisor
        elapsed = time.monotonic() - started

        # The accounts.
        written = [
            r[0]
            for r in await admin.fetch(
                f"SELECT notification_id FROM {table} ORDER BY notification_id"
            )
        ]
        processed_table = _quote(self.schema) + "." + _quote("recording_processed")
        processed = [
            r[0]
            for r in await admin.fetch(
                f"SELECT notification_id FROM {processed_table} ORDER BY seq"
            )
        ]
        written_set, processed_set = set(written), set(processed)
        skipped = len(written_set - processed_set)
        duplicated = len(processed) - len(processed_set)
        unknown = len(processed_set - written_set)
        out_of_order = sum(1 for a, b in itertools.pairwise(processed) if a >= b)
        missing_acknowledged = len(set(self.stats.acknowledged) - written_set)
        s = self.stats
        lines = [
            f"duration:               {elapsed:.1f} s ({args.seconds:g} s of load)",
            f"events written:         {len(written)}",
            f"  acknowledged saves:   {len(s.acknowledged)}",
            f"  failed saves:         {s.save_errors}",
            f"events processed:       {len(processed)}",
            f"skipped:                {skipped}",
            f"duplicated:             {duplicated}",
            f"out of order:           {out_of_order}",
            f"processed, not written: {unknown}",
            f"acknowledged, missing:  {missing_acknowledged}",
            f"caught up:              {caught_up}",
            f"faults: LISTEN conns killed {s.listen_kills}, "
            f"pooled conns killed {s.pool_kills}",
            f"runner restarts:        {s.runner_restarts} "
            f"({', '.join(sorted(set(s.runner_errors))) or '-'})",
            f"waits: ok {s.waits_ok}, timed out {s.wait_timeouts}, "
            f"failed {s.wait_errors}",
        ]
        print("\n".join(lines), flush=True)
        ok = (
            caught_up
            and skipped == 0
            and duplicated == 0
            and out_of_order == 0
            and unknown == 0
            and missing_acknowledged == 0
        )
        print("RESULT:", "OK" if ok else "FAILED", flush=True)
        return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--waiters", type=int, default=4)
    parser.add_argument("--fault-interval", type=float, default=3.0)
    parser.add_argument("--catch-up-timeout", type=float, default=60.0)
    parser.add_argument(
        "--fast",
        action="store_true",
        help=(
            "start the throwaway server with fsync, synchronous_commit and "
            "full_page_writes off (default: durable; a crash of a fast server "
            "may lose acknowledged events)"
        ),
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR)
    keys = (
        "POSTGRES_HOST",
        "POSTGRES_PORT",
        "POSTGRES_USER",
        "POSTGRES_PASSWORD",
        "POSTGRES_DBNAME",
    )
    # SIGTERM (e.g. from "timeout") stops the server too, via the finally.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    server: TemporaryPostgres | None = None
    if os.environ.get("POSTGRES_HOST"):
        defaults = {
            "POSTGRES_PORT": "5432",
            "POSTGRES_USER": "eventsourcing",
            "POSTGRES_PASSWORD": "eventsourcing",
            "POSTGRES_DBNAME": "eventsourcing",
        }
        pg_env = {k: os.environ.get(k) or defaults.get(k, "") for k in keys}
    else:
        server = TemporaryPostgres(durable=not args.fast)
        server.start()
        pg_env = dict(server.env())
    try:
        return asyncio.run(Soak(pg_env, args).run())
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
