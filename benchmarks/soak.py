"""Soak test: writers, replicated projection runners and waiters under faults.

    python -m benchmarks.soak --duration 600 [--fast] [--no-restarts ...]

Starts a throwaway PostgreSQL (asyncsourcing.testing.pgserver) unless
``POSTGRES_HOST`` is set, and works in a schema of its own (dropped at the
end). The throwaway server is durable (fsync, synchronous_commit and
full_page_writes on), so that acknowledged events must survive its crashes;
``--fast`` turns those off, and a crash of the server may then lose
acknowledged events. The server's values of those settings are printed
first. For ``--duration`` seconds it runs together:

* writer tasks saving ``Counter`` aggregates, one event per save, as the
  server's superuser;
* for each error policy of ``--policies`` (see
  :data:`benchmarks.soak_runner.POLICIES`), a projection of its own run by
  ``--replicas`` processes (``python -m benchmarks.soak_runner``) under a
  role of their own: one leads by the projection's lease, the others stand
  by. Its view records every processed notification id with its tracking
  (tests/support/faults.py). The processes print their runners' counters;
  a process that exits unexpectedly is counted and replaced;
* waiter tasks (``--waiters`` per policy), on datastores of their own, awaiting
  ``view.wait()`` for positions just acknowledged;
* a fault injector that, every ``--fault-interval`` seconds, injects the next
  of these faults, in turn (each can be turned off, ``--no-...``):

  - ``listen-kills``: terminates every LISTEN connection of the soak;
  - ``pool-kills``: terminates the soak's other (pooled) connections;
  - ``view-kills``: makes a leader pause inside its view transaction
    (SIGUSR2) and terminates that backend while it is idle in transaction;
  - ``idle-timeouts``: the runners' sessions have an
    ``--idle-timeout`` (``POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT``);
    a leader is made to pause longer than that inside its view transaction
    (SIGUSR1), and the server ends its session;
  - ``lockouts``: ``ALTER ROLE ... NOLOGIN`` of the runners' role, their
    LISTEN connections terminated, ``--lockout-seconds`` later ``LOGIN``;
  - ``leader-kills``: a leader process is SIGKILLed (or, every other time,
    stopped with SIGTERM) and a new replica started;
  - ``restarts``: an immediate restart (a crash and WAL recovery) of the
    throwaway server.

Then the faults stop, the runners catch up, and it prints the faults
injected and a table of what each policy did: the runners' counters
(events processed, skipped, parked, retries, reconnections, restarts,
leases taken and lost) and the invariants, checked against the database:
nothing skipped (no written event missing from the view, nothing counted
skipped or parked: only database errors are injected), nothing processed
twice, positions in order, no acknowledged event missing (from the events
table or from the view), and no failed waits: a wait may time out or fail
only if it overlapped a restart of the server (its down window, extended
by ``--down-grace`` seconds). It exits with status 1 unless every
invariant holds and every view caught up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import random
import secrets
import signal
import sys
import tempfile
import time
from collections import Counter as Tally
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import uuid4

import asyncpg

from asyncsourcing.persistence import InfrastructureFactory, PersistenceError
from asyncsourcing.testing.pgserver import TemporaryPostgres
from asyncsourcing.utils import Environment
from benchmarks import sections
from benchmarks.server import DURABILITY_SETTINGS, describe_durability
from benchmarks.soak_runner import POLICIES, projection_name
from tests.support.faults import Counter, Counters, PostgresRecordingView

logger = logging.getLogger("soak")

ROOT = Path(__file__).parent.parent
SECTION_BEGIN = "<!-- soak: a run of `python -m benchmarks.soak` -->"
SECTION_END = "<!-- /soak -->"
#: The faults that may move a projection's lease to another runner: the
#: leader's session lock, its process or the server are gone.
LEASE_MOVING_FAULTS = ("listen-kills", "lockouts", "leader-kills", "restarts")
FAULTS = (
    "listen-kills",
    "pool-kills",
    "view-kills",
    "idle-timeouts",
    "lockouts",
    "leader-kills",
    "restarts",
)
COUNTER_NAMES = (
    "processed",
    "errors",
    "retries",
    "skipped",
    "parked",
    "reconnections",
    "restarts",
    "led",
    "lost",
    "fenced",
    "expired",
    "pauses",
)


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@dataclass
class Wait:
    policy: str
    start: float
    end: float
    outcome: str  # "ok", "timeout" or "error"
    position: int = 0
    error: str = ""


@dataclass
class Replica:
    policy: str
    index: int
    app_name: str
    process: asyncio.subprocess.Process
    log_path: Path
    snapshot: dict[str, Any] = field(default_factory=dict)
    reader: asyncio.Task[None] | None = None
    expected_exit: bool = False


@dataclass
class Stats:
    acknowledged: list[int] = field(default_factory=list)
    save_errors: int = 0
    waits: list[Wait] = field(default_factory=list)
    faults: Tally[str] = field(default_factory=Tally)
    #: The turns of each fault injected.
    turns: Tally[str] = field(default_factory=Tally)
    fault_errors: list[str] = field(default_factory=list)
    #: Restarts of the server: (start, end) in loop time.
    down: list[tuple[float, float]] = field(default_factory=list)
    lockouts: list[tuple[float, float]] = field(default_factory=list)
    unexpected_exits: list[str] = field(default_factory=list)
    replicas_started: Tally[str] = field(default_factory=Tally)


class Soak:
    def __init__(
        self,
        pg_env: dict[str, str],
        args: argparse.Namespace,
        server: TemporaryPostgres | None,
    ) -> None:
        self.pg_env = pg_env
        self.args = args
        self.server = server
        self.policies: list[str] = args.policies
        self.faults = [f for f in FAULTS if getattr(args, f.replace("-", "_"))]
        if server is None and "restarts" in self.faults:
            print("restarts: off (POSTGRES_HOST is not a throwaway server)")
            self.faults.remove("restarts")
        suffix = uuid4().hex[:10]
        self.schema = f"soak_{suffix}"
        self.role = f"soak_runner_{suffix}"
        self.role_password = secrets.token_hex(16)
        self.prefix = f"soak-{suffix}"
        self.env = {
            "PERSISTENCE_MODULE": "asyncsourcing.postgres",
            **pg_env,
            "POSTGRES_SCHEMA": self.schema,
            "POSTGRES_CONNECT_TIMEOUT": "5",
        }
        self.stats = Stats()
        self.replicas: dict[tuple[str, int], Replica] = {}
        self.retired: list[Replica] = []
        self.writing = asyncio.Event()
        self.faulting = asyncio.Event()
        self.log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="soak-logs-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._admin: asyncpg.Connection[Any] | None = None
        self.started = 0.0

    # The database.

    async def admin(self) -> asyncpg.Connection[Any]:
        """The superuser's connection, opened again after a restart."""
        if self._admin is not None and not self._admin.is_closed():
            return self._admin
        e = self.pg_env
        deadline = time.monotonic() + 60
        while True:
            try:
                self._admin = await asyncpg.connect(
                    host=e["POSTGRES_HOST"],
                    port=int(e["POSTGRES_PORT"]),
                    user=e["POSTGRES_USER"],
                    password=e["POSTGRES_PASSWORD"],
                    database=e["POSTGRES_DBNAME"],
                    server_settings={"application_name": "soak-admin"},
                    timeout=5,
                )
                return self._admin
            except (OSError, asyncpg.PostgresError, TimeoutError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    def table(self, name: str) -> str:
        return _quote(self.schema) + "." + _quote(name)

    async def prepare(self) -> None:
        """The schema, the tables, and the runners' role with its grants."""
        admin = await self.admin()
        await admin.execute(f"CREATE SCHEMA {_quote(self.schema)}")
        app = Counters({**self.env, "POSTGRES_APPLICATION_NAME": "soak-admin"})
        try:
            await app.recorder.max_notification_id()  # Creates the tables.
        finally:
            await app.close()
        for policy in self.policies:
            factory: InfrastructureFactory[Any] = InfrastructureFactory.construct(
                Environment(
                    projection_name(policy),
                    {**self.env, "POSTGRES_APPLICATION_NAME": "soak-admin"},
                )
            )
            try:
                view = factory.construct_tracking_recorder(PostgresRecordingView)
                await view.create_table()
                await view.leases.create_table()
            finally:
                await factory.close()
        schema, role = _quote(self.schema), _quote(self.role)
        await admin.execute(
            f"CREATE ROLE {role} LOGIN PASSWORD {_literal(self.role_password)}"
        )
        for statement in (
            f"GRANT USAGE, CREATE ON SCHEMA {schema} TO {role}",
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} "
            f"TO {role}",
            f"GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA {schema} "
            f"TO {role}",
        ):
            await admin.execute(statement)

    async def cleanup(self) -> None:
        admin = await self.admin()
        await admin.execute(f"ALTER ROLE {_quote(self.role)} LOGIN")
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
            self.role,
        )
        await admin.execute(f"DROP SCHEMA IF EXISTS {_quote(self.schema)} CASCADE")
        await admin.execute(f"DROP OWNED BY {_quote(self.role)}")
        await admin.execute(f"DROP ROLE IF EXISTS {_quote(self.role)}")
        await admin.close()

    # The replicas.

    def replica_env(self, policy: str, index: int) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PG", "POSTGRES_", "SOAK_"))
        }
        env.update(self.env)
        env.update(
            {
                "POSTGRES_USER": self.role,
                "POSTGRES_PASSWORD": self.role_password,
                "POSTGRES_APPLICATION_NAME": self.replica_app_name(policy, index),
                "POSTGRES_POOL_SIZE": "1",
                "POSTGRES_MAX_OVERFLOW": "4",
                "CREATE_TABLE": "false",
                "LEASE_TTL": str(self.args.lease_ttl),
                "SOAK_PAUSE_SECONDS": str(self.args.idle_timeout + 1.5),
                "SOAK_SHORT_PAUSE_SECONDS": "1.0",
            }
        )
        if "idle-timeouts" in self.faults:
            env["POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT"] = str(
                self.args.idle_timeout
            )
        return env

    def replica_app_name(self, policy: str, index: int) -> str:
        return f"{self.prefix}-run:{policy}:{index}"

    async def start_replica(self, policy: str, index: int) -> Replica:
        number = self.stats.replicas_started[policy]
        self.stats.replicas_started[policy] += 1
        log_path = self.log_dir / f"{projection_name(policy)}-{number}.log"
        with log_path.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "benchmarks.soak_runner",
                policy,
                cwd=ROOT,
                env=self.replica_env(policy, index),
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
            )
        replica = Replica(
            policy, index, self.replica_app_name(policy, index), process, log_path
        )
        replica.reader = asyncio.create_task(self.read_reports(replica))
        self.replicas[policy, index] = replica
        return replica

    async def read_reports(self, replica: Replica) -> None:
        stdout = replica.process.stdout
        assert stdout is not None
        async for line in stdout:
            with contextlib.suppress(ValueError):
                replica.snapshot = json.loads(line)

    async def stop_replica(self, replica: Replica, sig: int) -> None:
        replica.expected_exit = True
        with contextlib.suppress(ProcessLookupError):
            replica.process.send_signal(sig)
        try:
            await asyncio.wait_for(replica.process.wait(), 30)
        except TimeoutError:
            self.stats.fault_errors.append(
                f"{replica.app_name} did not stop on signal {sig}: SIGKILL"
            )
            replica.process.kill()
            await replica.process.wait()
        if replica.reader is not None:
            await replica.reader
        self.retired.append(replica)

    async def watch_replicas(self) -> None:
        """Replace the replicas that exit unexpectedly."""
        while True:
            await asyncio.sleep(0.5)
            for key, replica in list(self.replicas.items()):
                code = replica.process.returncode
                if code is None or replica.expected_exit:
                    continue
                self.stats.unexpected_exits.append(
                    f"{replica.app_name} exited with {code} (log {replica.log_path})"
                )
                if replica.reader is not None:
                    await replica.reader
                self.retired.append(replica)
                await self.start_replica(*key)

    async def leader(self, policy: str) -> Replica | None:
        """The replica that holds the policy's lease, if any."""
        owner = await (await self.admin()).fetchval(
            f"SELECT owner FROM {self.table('asyncsourcing_leases')} "
            "WHERE projection_name = $1 AND expires_at > clock_timestamp()",
            projection_name(policy),
        )
        if owner is None:
            return None
        pid = int(owner.split(":")[1])
        for replica in self.replicas.values():
            if replica.process.pid == pid and replica.process.returncode is None:
                return replica
        return None

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
            await asyncio.sleep(rng.uniform(0, self.args.write_pause))

    async def waiter(self, policy: str) -> None:
        loop = asyncio.get_running_loop()
        factory: InfrastructureFactory[Any] = InfrastructureFactory.construct(
            Environment(
                projection_name(policy),
                {
                    **self.env,
                    "POSTGRES_APPLICATION_NAME": f"{self.prefix}-wait",
                    "POSTGRES_POOL_SIZE": "1",
                    "POSTGRES_MAX_OVERFLOW": "3",
                    "CREATE_TABLE": "false",
                },
            )
        )
        view = factory.construct_tracking_recorder(PostgresRecordingView)
        try:
            while self.writing.is_set():
                if not self.stats.acknowledged:
                    await asyncio.sleep(0.05)
                    continue
                position = self.stats.acknowledged[-1]
                start = loop.time()
                error = ""
                try:
                    await view.wait(
                        "Counters", position, timeout=self.args.wait_timeout
                    )
                    outcome = "ok"
                except TimeoutError:
                    outcome = "timeout"
                except PersistenceError as e:
                    outcome, error = "error", repr(e)[:300]
                self.stats.waits.append(
                    Wait(policy, start, loop.time(), outcome, position, error)
                )
                # wait() returns without yielding when the position is
                # known: don't starve the event loop.
                await asyncio.sleep(0.001 if outcome == "ok" else 0.05)
        finally:
            await factory.close()

    # Faults.

    async def inject_faults(self) -> None:
        injectors: dict[str, Callable[[int], Awaitable[None]]] = {
            "listen-kills": self.kill_listen,
            "pool-kills": self.kill_pooled,
            "view-kills": self.kill_view_transaction,
            "idle-timeouts": self.idle_timeout,
            "lockouts": self.lock_out,
            "leader-kills": self.kill_leader,
            "restarts": self.restart_server,
        }
        if not self.faults:
            return
        for turn in itertools.count():
            await asyncio.sleep(self.args.fault_interval)
            if not self.faulting.is_set():
                return
            fault = self.faults[turn % len(self.faults)]
            self.stats.turns[fault] += 1
            self.log_fault(f"{fault} begins")
            try:
                await injectors[fault](turn // len(self.faults))
            except Exception as error:
                self.stats.fault_errors.append(f"{fault}: {error!r}")
                logger.warning("fault %s failed: %r", fault, error)
            self.log_fault(f"{fault} ends")

    def log_fault(self, text: str) -> None:
        """A line of ``faults.log`` in the log directory: the time, since
        the start and of day (as in the replicas' logs), and ``text``."""
        since = asyncio.get_running_loop().time() - self.started
        with (self.log_dir / "faults.log").open("a") as log:
            log.write(f"{since:7.1f} s {time.strftime('%H:%M:%S')} {text}\n")

    def policy_of_turn(self, turn: int) -> str:
        return self.policies[turn % len(self.policies)]

    async def terminate(self, condition: str, *args: Any) -> int:
        killed: int = await (await self.admin()).fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            f"WHERE {condition} AND pid <> pg_backend_pid()",
            *args,
        )
        return killed

    async def kill_listen(self, turn: int) -> None:
        self.stats.faults["LISTEN connections killed"] += await self.terminate(
            "application_name LIKE $1 || '%:listen'", self.prefix
        )

    async def kill_pooled(self, turn: int) -> None:
        self.stats.faults["pooled connections killed"] += await self.terminate(
            "application_name LIKE $1 || '%' AND application_name NOT LIKE '%:listen'",
            self.prefix,
        )

    async def kill_view_transaction(self, turn: int) -> None:
        policy = self.policy_of_turn(turn)
        replica = await self.leader(policy)
        if replica is None:
            self.stats.faults["view kills without a leader"] += 1
            return
        replica.process.send_signal(signal.SIGUSR2)
        admin = await self.admin()
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            pids = await admin.fetch(
                "SELECT pid FROM pg_stat_activity WHERE application_name = $1 "
                "AND state LIKE 'idle in transaction%' AND xact_start "
                "IS NOT NULL",
                replica.app_name,
            )
            if pids:
                await self.terminate("pid = ANY($1::int[])", [r[0] for r in pids])
                self.stats.faults["view transactions killed"] += len(pids)
                return
            await asyncio.sleep(0.02)
        self.stats.faults["view kills missed (no idle transaction seen)"] += 1

    async def idle_timeout(self, turn: int) -> None:
        replica = await self.leader(self.policy_of_turn(turn))
        if replica is None:
            self.stats.faults["idle timeouts without a leader"] += 1
            return
        replica.process.send_signal(signal.SIGUSR1)
        self.stats.faults["idle-in-transaction pauses requested"] += 1
        # Let the timeout happen before the next fault.
        await asyncio.sleep(self.args.idle_timeout + 1.5)

    async def lock_out(self, turn: int) -> None:
        admin = await self.admin()
        role = _quote(self.role)
        loop = asyncio.get_running_loop()
        start = loop.time()
        await admin.execute(f"ALTER ROLE {role} NOLOGIN")
        try:
            self.stats.faults["lockouts"] += 1
            self.stats.faults[
                "lockouts: LISTEN connections killed"
            ] += await self.terminate(
                "usename = $1 AND application_name LIKE '%:listen'", self.role
            )
            await asyncio.sleep(self.args.lockout_seconds)
        finally:
            # Whatever happened meanwhile (a restart), log in again.
            while True:
                try:
                    await (await self.admin()).execute(f"ALTER ROLE {role} LOGIN")
                    break
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                    await asyncio.sleep(0.2)
            self.stats.lockouts.append((start, loop.time()))

    async def kill_leader(self, turn: int) -> None:
        policy = self.policy_of_turn(turn)
        replica = await self.leader(policy)
        if replica is None:
            self.stats.faults["leader kills without a leader"] += 1
            return
        sig = signal.SIGKILL if turn % 2 == 0 else signal.SIGTERM
        await self.stop_replica(replica, sig)
        self.stats.faults[f"leaders stopped by {signal.Signals(sig).name}"] += 1
        await self.start_replica(policy, replica.index)

    async def restart_server(self, turn: int) -> None:
        assert self.server is not None
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            await asyncio.to_thread(self.server.restart, "immediate")
        finally:
            self.stats.down.append((start, loop.time()))
        self.stats.faults["immediate restarts"] += 1

    # The run.

    async def run(self) -> int:
        admin = await self.admin()
        durability = {
            name: await admin.fetchval(f"SHOW {name}") for name in DURABILITY_SETTINGS
        }
        print(f"PostgreSQL: {describe_durability(durability)}", flush=True)
        print(f"faults: {', '.join(self.faults) or 'none'}", flush=True)
        print(f"replica logs: {self.log_dir}", flush=True)
        try:
            await self.prepare()
            return await self._run()
        finally:
            for replica in list(self.replicas.values()):
                if replica.process.returncode is None:
                    replica.process.kill()
                    await replica.process.wait()
            await self.cleanup()

    async def _run(self) -> int:
        args = self.args
        loop = asyncio.get_running_loop()
        started = self.started = loop.time()
        for policy in self.policies:
            for index in range(args.replicas):
                await self.start_replica(policy, index)
        watcher = asyncio.create_task(self.watch_replicas())
        writer_env = {**self.env, "POSTGRES_APPLICATION_NAME": f"{self.prefix}-write"}
        async with Counters(writer_env) as app:
            self.writing.set()
            self.faulting.set()
            workers = [
                *(asyncio.create_task(self.writer(app)) for _ in range(args.writers)),
                *(
                    asyncio.create_task(self.waiter(policy))
                    for policy in self.policies
                    for _ in range(args.waiters)
                ),
            ]
            faults = asyncio.create_task(self.inject_faults())
            progress = asyncio.create_task(self.progress(started))
            await asyncio.sleep(args.seconds)
            self.faulting.clear()
            await faults  # The fault in hand ends (a lockout logs in again).
            self.writing.clear()
            await asyncio.gather(*workers)
            progress.cancel()
        load_end = loop.time()

        # Catching up, without faults.
        admin = await self.admin()
        last = await admin.fetchval(
            f"SELECT max(notification_id) FROM {self.table('counters_events')}"
        )
        caught_up: dict[str, bool] = {}
        deadline = time.monotonic() + args.catch_up_timeout
        for policy in self.policies:
            tracking = self.table(projection_name(policy) + "_tracking")
            while True:
                position = await admin.fetchval(
                    f"SELECT notification_id FROM {tracking} "
                    "WHERE application_name = $1",
                    "Counters",
                )
                caught_up[policy] = position == last
                if caught_up[policy] or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
        catch_up_seconds = loop.time() - load_end
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await asyncio.gather(
            *(
                self.stop_replica(replica, signal.SIGTERM)
                for replica in self.replicas.values()
            )
        )
        elapsed = loop.time() - started
        return await self.report(elapsed, catch_up_seconds, caught_up)

    async def progress(self, started: float) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(30)
            s = self.stats
            failed = sum(1 for w in s.waits if w.outcome != "ok")
            print(
                f"[{loop.time() - started:5.0f} s] acknowledged "
                f"{len(s.acknowledged)}, waits {len(s.waits)} ({failed} not ok), "
                f"faults {sum(s.faults.values())}, restarts {len(s.down)}",
                file=sys.stderr,
                flush=True,
            )

    # The accounts.

    def excused(self, wait: Wait) -> bool:
        """Whether ``wait`` overlapped the server's down window (and grace)."""
        grace = self.args.down_grace
        return any(
            wait.start <= end + grace and wait.end >= start
            for start, end in self.stats.down
        )

    def describe_wait(self, wait: Wait) -> str:
        """A failed wait, placed among the faults in time (since the start)."""
        t0 = self.started

        def near(windows: list[tuple[float, float]]) -> str:
            if not windows:
                return "none"
            start, end = min(windows, key=lambda w: abs(w[0] - wait.start))
            return f"{start - t0:.1f}..{end - t0:.1f} s"

        return (
            f"failed wait ({wait.policy}): {wait.outcome} for position "
            f"{wait.position}, {wait.start - t0:.1f}..{wait.end - t0:.1f} s "
            f"{wait.error}; nearest restart {near(self.stats.down)}, nearest "
            f"lockout {near(self.stats.lockouts)}"
        )

    async def report(
        self, elapsed: float, catch_up_seconds: float, caught_up: dict[str, bool]
    ) -> int:
        args, s = self.args, self.stats
        admin = await self.admin()
        written = [
            r[0]
            for r in await admin.fetch(
                f"SELECT notification_id FROM {self.table('counters_events')} "
                "ORDER BY notification_id"
            )
        ]
        written_set = set(written)
        acknowledged = set(s.acknowledged)
        lost = len(acknowledged - written_set)
        server_log = self.server_log_counts()

        print(
            f"\nduration {elapsed:.0f} s ({args.seconds:g} s of load, catch-up "
            f"{catch_up_seconds:.1f} s); {len(self.policies)} policies x "
            f"{args.replicas} replicas, {args.writers} writers, "
            f"{args.waiters} waiter(s) per policy",
            flush=True,
        )
        print(
            f"events written {len(written)}, acknowledged {len(acknowledged)}, "
            f"failed saves {s.save_errors}, acknowledged but not written {lost}",
            flush=True,
        )
        print("\nFaults injected:\n")
        turns = ", ".join(f"{f} {s.turns[f]}" for f in self.faults)
        print(f"Turns of each fault: {turns or 'none'}.\n")
        print("| fault | count |\n|---|--:|")
        for name, count in sorted(s.faults.items()):
            print(f"| {name} | {count} |")
        if s.down:
            downtime = [end - start for start, end in s.down]
            print(
                f"| server down (restart), s | total {sum(downtime):.1f}, "
                f"max {max(downtime):.1f} |"
            )
        for name, count in server_log.items():
            print(f"| server log: {name} | {count} |")

        rows: list[list[str]] = []
        failures: list[str] = []
        churn: list[str] = []
        failed_wait_notes: list[str] = []
        for policy in self.policies:
            name = projection_name(policy)
            processed = [
                r[0]
                for r in await admin.fetch(
                    f"SELECT notification_id FROM {self.table(name + '_processed')} "
                    "ORDER BY seq"
                )
            ]
            parked_rows = 0
            if await admin.fetchval(
                "SELECT to_regclass($1) IS NOT NULL", self.table(name + "_parked")
            ):
                parked_rows = await admin.fetchval(
                    f"SELECT count(*) FROM {self.table(name + '_parked')}"
                )
            epoch = await admin.fetchval(
                f"SELECT epoch FROM {self.table('asyncsourcing_leases')} "
                "WHERE projection_name = $1",
                name,
            )
            processed_set = set(processed)
            not_in_view = len(written_set - processed_set)
            duplicated = len(processed) - len(processed_set)
            unknown = len(processed_set - written_set)
            out_of_order = sum(1 for a, b in itertools.pairwise(processed) if a >= b)
            ack_missing = len(acknowledged - processed_set)
            totals = dict.fromkeys(COUNTER_NAMES, 0)
            restart_errors: Tally[str] = Tally()
            for replica in self.retired:
                if replica.policy != policy:
                    continue
                for key in COUNTER_NAMES:
                    totals[key] += int(replica.snapshot.get(key, 0))
                for text in replica.snapshot.get("restart_errors", []):
                    restart_errors[text.partition(":")[0]] += 1
            waits = [w for w in s.waits if w.policy == policy]
            waits_ok = sum(1 for w in waits if w.outcome == "ok")
            excused = sum(1 for w in waits if w.outcome != "ok" and self.excused(w))
            failed_waits = len(waits) - waits_ok - excused
            for w in waits:
                if w.outcome != "ok" and not self.excused(w):
                    failed_wait_notes.append(self.describe_wait(w))
            checks = {
                "skipped": totals["skipped"] + not_in_view,
                "parked": totals["parked"] + parked_rows,
                "duplicated": duplicated,
                "out of order": out_of_order,
                "processed, not written": unknown,
                "acknowledged, missing": ack_missing + lost,
                "failed waits": failed_waits,
                "not caught up": int(not caught_up[policy]),
            }
            bad = [f"{policy}: {k} {v}" for k, v in checks.items() if v]
            # Not an invariant (fencing keeps the view right), but a sign of
            # runners taking the lease from each other with no fault to cause it.
            moves = sum(s.turns[f] for f in LEASE_MOVING_FAULTS) + args.replicas
            if (epoch or 0) > 2 * moves:
                churn.append(
                    f"{policy}: the lease changed hands {epoch} times (epoch), for "
                    f"{moves - args.replicas} faults that can move it"
                )
            failures.extend(bad)
            rows.append(
                [
                    policy,
                    str(s.replicas_started[policy]),
                    str(totals["processed"]),
                    f"{totals['skipped']} / {not_in_view}",
                    f"{totals['parked']} / {parked_rows}",
                    str(totals["retries"]),
                    str(totals["reconnections"]),
                    str(totals["restarts"]),
                    f"{totals['led']} / {epoch or 0}",
                    f"{totals['lost']} ({totals['fenced']} fenced, "
                    f"{totals['expired']} expired)",
                    str(duplicated),
                    str(ack_missing),
                    f"{waits_ok} / {excused} / {failed_waits}",
                    "FAILED" if bad else "ok",
                ]
            )
            if restart_errors:
                logger.info("%s runner restarts: %s", policy, dict(restart_errors))
                print(
                    f"{policy}: runners restarted after "
                    + ", ".join(f"{k} x{v}" for k, v in restart_errors.most_common()),
                    file=sys.stderr,
                )
        print("\nWhat each policy did:\n")
        header = [
            "policy",
            "replicas started",
            "processed",
            "skipped (counted / not in view)",
            "parked (counted / dead letters)",
            "retries",
            "reconnections",
            "runner restarts",
            "leases taken / epoch",
            "leases lost",
            "duplicated",
            "ack. missing",
            "waits ok / excused / failed",
            "result",
        ]
        print("| " + " | ".join(header) + " |")
        print(
            "|" + "|".join("---" if i == 0 else "--:" for i in range(len(header))) + "|"
        )
        for row in rows:
            print("| " + " | ".join(row) + " |")
        anomalies = [
            *s.unexpected_exits,
            *s.fault_errors,
            *churn,
            *failed_wait_notes,
        ]
        if anomalies:
            print("\nAnomalies:")
            for text in anomalies:
                print(f"- {text}")
        print()
        for failure in failures:
            print(f"FAILED: {failure}")
        ok = not failures
        print("RESULT:", "OK" if ok else "FAILED", flush=True)
        return 0 if ok else 1

    def server_log_counts(self) -> dict[str, int]:
        """Lines of the throwaway server's log that tell what the faults did."""
        if self.server is None:
            return {}
        patterns = {
            "idle-in-transaction timeouts": "idle-in-transaction timeout",
            "terminated by pg_terminate_backend": (
                "terminating connection due to administrator command"
            ),
            "logins refused (NOLOGIN)": "is not permitted to log in",
            "crash recoveries": "database system was not properly shut down",
        }
        counts = dict.fromkeys(patterns, 0)
        with contextlib.suppress(OSError):
            for line in self.server.log_path.read_text(errors="replace").splitlines():
                for name, pattern in patterns.items():
                    if pattern in line:
                        counts[name] += 1
        return counts


def kept_section(text: str) -> str:
    """The soak section of a RESULTS.md's ``text`` (markers included), or ""."""
    return sections.kept_section(text, SECTION_BEGIN, SECTION_END)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak")
    parser.add_argument(
        "--duration", "--seconds", dest="seconds", type=float, default=60.0
    )
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument(
        "--write-pause",
        type=float,
        default=0.01,
        help="each writer pauses up to this many seconds between saves",
    )
    parser.add_argument("--waiters", type=int, default=1, help="per policy")
    parser.add_argument("--wait-timeout", type=float, default=15.0)
    parser.add_argument(
        "--policies",
        type=lambda text: text.split(","),
        default=list(POLICIES),
        help=f"comma-separated, of {', '.join(POLICIES)} (default: all)",
    )
    parser.add_argument("--replicas", type=int, default=2, help="per policy")
    parser.add_argument("--fault-interval", type=float, default=3.0)
    for fault in FAULTS:
        parser.add_argument(
            f"--{fault}", action=argparse.BooleanOptionalAction, default=True
        )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=2.0,
        help="the runners' idle_in_transaction_session_timeout, seconds",
    )
    parser.add_argument("--lockout-seconds", type=float, default=4.0)
    parser.add_argument("--lease-ttl", type=float, default=10.0)
    parser.add_argument(
        "--down-grace",
        type=float,
        default=5.0,
        help="a wait may fail up to this long after a restart of the server",
    )
    parser.add_argument("--catch-up-timeout", type=float, default=120.0)
    parser.add_argument("--log-dir", help="the replicas' logs (default: a temp dir)")
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
    unknown = [p for p in args.policies if p not in POLICIES]
    if unknown:
        parser.error(f"unknown policies: {', '.join(unknown)}")
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
        return asyncio.run(Soak(pg_env, args, server).run())
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
