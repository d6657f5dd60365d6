"""``python -m benchmarks partitions``: a partitioned projection whose handler
waits on IO, processed by 1, 2, 4 and 8 partitions.

The projection is the audit log of ``examples/auditlog`` with a handler that
awaits 1 ms (a call to another service) before it appends its entry. For P
partitions, the runners are started first (``asyncsourcing run``, as users
run them): P processes of one partition each ("across processes"), or one
process owning all P ("in one process"). Once the partitions are shared out,
this process saves ``--per-partition`` x P one-event aggregates, and the
time runs from the first save until the view's ``wait()`` for the last
event returns (every partition has passed it). The goal (issue 14): P
partitions process >= 0.8 x P x the rate of one.

On PostgreSQL, durable (fsync, synchronous_commit and full_page_writes on),
each trial in a schema of its own. eventsourcing 9.5 has no partitions: its
figure is the one-partition rate of its own runner, which processes one
event per view transaction, measured by ``--scenario catchup``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import socketserver
import statistics
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar
from uuid import UUID

from asyncsourcing.persistence import Tracking
from benchmarks import sections
from benchmarks.progress import log
from benchmarks.server import describe_durability, postgres_server
from examples.auditlog.projection import AuditLogProjection

__all__ = ["main"]

SECTION_BEGIN = "<!-- partitions: written by `python -m benchmarks partitions` -->"
SECTION_END = "<!-- /partitions -->"
RESULTS = Path(__file__).with_name("RESULTS.md")
ROOT = Path(__file__).parent.parent
SAVE_BATCH = 500
IO_DELAY = 0.001


# Each worker task's connection to the service (the tasks end at rebalances).
_connections: weakref.WeakKeyDictionary[
    asyncio.Task[Any], tuple[asyncio.StreamReader, asyncio.StreamWriter]
] = weakref.WeakKeyDictionary()


async def call_service() -> None:
    """Wait ``IO_DELAY`` for the service of ``AUDIT_SERVICE`` (host:port) to
    answer, on a connection of the calling task; without a service, sleep."""
    address = os.environ.get("AUDIT_SERVICE")
    task = asyncio.current_task()
    if not address or task is None:
        await asyncio.sleep(IO_DELAY)
        return
    connection = _connections.get(task)
    if connection is None:
        host, _, port = address.rpartition(":")
        connection = await asyncio.open_connection(host, int(port))
        connection[1].get_extra_info("socket").setsockopt(
            socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
        )
        _connections[task] = connection
    reader, writer = connection
    writer.write(b"?\n")
    await reader.readline()


class SlowAuditLog(AuditLogProjection):
    """The audit log, its handler waiting 1 ms on IO first (:func:`call_service`);
    ``AUDIT_PARTITIONS`` partitions (read when the module is imported, in each
    runner process)."""

    name = "auditlog"
    partitions: ClassVar[int] = int(os.environ.get("AUDIT_PARTITIONS", "1"))

    async def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        await call_service()
        await super().process_event(domain_event, tracking)


class _Answer(socketserver.StreamRequestHandler):
    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handle(self) -> None:
        for _ in self.rfile:
            time.sleep(IO_DELAY)  # In a thread of its own: no timer rounding.
            self.wfile.write(b"\n")


class SlowService:
    """A service on loopback that answers each line after ``IO_DELAY``
    seconds, a thread per connection: what a handler's call to another
    service waits for, woken by its socket rather than by a timer of the
    runner's event loop (whose epoll rounds timeouts up to whole
    milliseconds)."""

    def __init__(self) -> None:
        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Answer)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{host!s}:{port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _runner_command() -> list[str]:
    return [
        sys.executable,
        "-m",
        "asyncsourcing",
        "run",
        "--app",
        "asyncsourcing.application:Application",
        "--projection",
        "benchmarks.partitions:SlowAuditLog",
        "--view",
        "examples.auditlog.postgres:PostgresAuditLog",
        "--no-progress",
    ]


def _start_runners(env: dict[str, str], count: int) -> list[subprocess.Popen[bytes]]:
    return [
        subprocess.Popen(
            _runner_command(),
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
        )
        for _ in range(count)
    ]


def _stop_runners(runners: list[subprocess.Popen[bytes]]) -> None:
    for runner in runners:
        runner.terminate()
    for runner in runners:
        runner.wait(30)


async def _shared_out(view: Any, app_name: str, partitions: int, owners: int) -> None:
    """Wait until ``owners`` runners hold the ``partitions`` between them."""
    from asyncsourcing.leases import partition_lease_name

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        held = set()
        for partition in range(partitions):
            name = SlowAuditLog.name
            if partitions > 1:
                name = partition_lease_name(name, partition)
            lease = await view.leases.read(app_name, name)
            if lease is None or lease.expires_at < datetime.now(UTC):
                break
            held.add(lease.owner)
        else:
            if len(held) == owners:
                return
        await asyncio.sleep(0.1)
    msg = f"{partitions} partitions not shared by {owners} runners in 60 s"
    raise RuntimeError(msg)


async def trial(
    server_env: dict[str, str],
    partitions: int,
    processes: int,
    per_partition: int,
    service: str | None,
) -> float:
    """Events/s of one trial, in a schema of its own."""
    import asyncpg

    from asyncsourcing.application import Application
    from asyncsourcing.domain import Aggregate
    from asyncsourcing.persistence import InfrastructureFactory
    from asyncsourcing.utils import Environment
    from examples.auditlog.postgres import PostgresAuditLog

    schema = f"partitions_{partitions}_{processes}_{time.monotonic_ns()}"
    dsn = (
        f"postgresql://{server_env['POSTGRES_USER']}:{server_env['POSTGRES_PASSWORD']}"
        f"@{server_env['POSTGRES_HOST']}:{server_env['POSTGRES_PORT']}"
        f"/{server_env['POSTGRES_DBNAME']}"
    )
    admin = await asyncpg.connect(dsn)
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    env = {
        "PERSISTENCE_MODULE": "asyncsourcing.postgres",
        **server_env,
        "POSTGRES_SCHEMA": schema,
        "AUDIT_PARTITIONS": str(partitions),
        **({"AUDIT_SERVICE": service} if service else {}),
    }
    factory = InfrastructureFactory.construct(Environment(SlowAuditLog.name, env))
    view: Any = factory.construct_tracking_recorder(PostgresAuditLog)
    app = Application[UUID](env)
    runners: list[subprocess.Popen[bytes]] = []
    try:
        await view.create_table()
        await view.leases.create_table()
        await app.recorder.create_table()
        runners = _start_runners(env, processes)
        await _shared_out(view, app.name, partitions, processes)
        events = per_partition * partitions
        started = time.perf_counter()
        last = 0
        for done in range(0, events, SAVE_BATCH):
            batch = [Aggregate() for _ in range(min(SAVE_BATCH, events - done))]
            last = (await app.save(*batch))[-1].notification.id
        await view.wait(app.name, last, timeout=600)
        elapsed = time.perf_counter() - started
        entries = await view.entries()
        if len(entries) != events:
            msg = f"{len(entries)} entries for {events} events"
            raise RuntimeError(msg)
        return events / elapsed
    finally:
        _stop_runners(runners)
        await app.close()
        await factory.close()
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.close()


def section(
    rows: list[dict[str, Any]], args: argparse.Namespace, durability: str
) -> str:
    lines = [
        SECTION_BEGIN,
        "## Partitions (issue 14)",
        "",
        f"`python -m benchmarks partitions --repetitions {args.repetitions} "
        f"--per-partition {args.per_partition}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: the audit log, "
        f"its handler waiting {IO_DELAY * 1000:g} ms before each append: for a "
        "service on loopback that answers after 1 ms (a socket wakes the "
        "handler), or in `asyncio.sleep(0.001)` (a timer of the runner's loop, "
        "which epoll rounds up to whole milliseconds: timers of concurrent "
        f"partitions fire late); {args.per_partition:,} events per partition; "
        f"PostgreSQL, {durability}. Medians (min..max) of the repetitions; the "
        "ratio is the rate over P x the one-partition rate of the same wait "
        "and placement (goal >= 0.8).",
        "",
        "| partitions | wait | placement | events/s | ratio to P x one |",
        "|--:|---|---|--:|--:|",
    ]
    for row in rows:
        rates = row["rates"]
        lines.append(
            f"| {row['partitions']} | {row['wait']} | {row['placement']} "
            f"| {statistics.median(rates):,.0f} ({min(rates):,.0f}..{max(rates):,.0f}) "
            f"| {row['ratio']:.2f} |"
        )
    lines += [SECTION_END, ""]
    return "\n".join(lines)


def _placement(
    server_env: dict[str, str],
    args: argparse.Namespace,
    counts: list[int],
    placement: str,
    service: str | None,
) -> list[dict[str, Any]]:
    """The rows of one wait and placement, for each count of partitions."""
    rows = []
    one: float | None = None
    for partitions in counts:
        processes = partitions if placement == "across processes" else 1
        rates = []
        for repetition in range(args.repetitions):
            rate = asyncio.run(
                trial(server_env, partitions, processes, args.per_partition, service)
            )
            log(
                f"{partitions} partitions {placement}"
                f"{' (service)' if service else ' (sleep)'}, trial "
                f"{repetition + 1}: {rate:,.0f} events/s"
            )
            rates.append(rate)
        median = statistics.median(rates)
        one = median if partitions == 1 else one
        ratio = median / (partitions * one) if one else float("nan")
        rows.append(
            {
                "partitions": partitions,
                "placement": placement,
                "rates": rates,
                "ratio": ratio,
            }
        )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks partitions")
    parser.add_argument("--per-partition", type=int, default=1500)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument(
        "--partitions", type=int, action="append", default=None, help="1, 2, 4, 8"
    )
    parser.add_argument("--no-results", action="store_true")
    args = parser.parse_args(argv)
    counts = args.partitions or [1, 2, 4, 8]
    rows: list[dict[str, Any]] = []
    service = SlowService()
    waits = {"a service": service.address, "asyncio.sleep": None}
    try:
        with postgres_server(durable=True) as server:
            durability = describe_durability(server.durability)
            for wait, address in waits.items():
                for placement in ("across processes", "in one process"):
                    rows += _placement(server.env(), args, counts, placement, address)
                    for row in rows:
                        row.setdefault("wait", wait)
    finally:
        service.close()
    text = section(rows, args, durability)
    print(text)
    if not args.no_results:
        sections.write_section(RESULTS, text, SECTION_BEGIN, SECTION_END)
        log(f"wrote the partitions section of {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
