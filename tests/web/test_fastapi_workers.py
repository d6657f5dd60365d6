"""The FastAPI dog school under ``uvicorn --workers 3``: real processes.

Each worker runs the app's lifespan, so each runs a projection runner: one
leads (processes the events), the others stand by, and every worker answers
queries, its view's ``wait()`` woken by the leader's commits. Clients that
write, on connections the kernel spreads over the workers, read their writes
from any worker; the view counts every event exactly once; when the leading
worker is killed (SIGKILL), uvicorn starts another, a standby takes over,
and all of that still holds. SIGTERM stops the whole service cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from asyncsourcing.leases import Lease
from asyncsourcing.persistence import InfrastructureFactory
from asyncsourcing.utils import Environment
from examples.dogschool.application import DogSchool
from examples.dogschool.projections import DOGS, TRICKS, DogCountersProjection
from examples.dogschool.views import CountersView
from examples.fastapi_dogschool.app import create_app, view_class_for
from tests.support.paths import ROOT
from tests.support.postgres import admin_connection, factory_env, our_connections, quote
from tests.support.web import served

pytest.importorskip("uvicorn")

WORKERS = 3
CLIENTS = 30  # Concurrent clients per round: each registers a dog, teaches it.
STARTED = re.compile(r"Started server process \[(\d+)\]")
READY = "Application startup complete."


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """The environment of a fresh store that processes can share."""
    if request.param == "sqlite":
        return {
            "PERSISTENCE_MODULE": "asyncsourcing.sqlite",
            "SQLITE_DBNAME": str(tmp_path / "dogschool.sqlite"),
        }
    postgres_env: dict[str, str] = request.getfixturevalue("postgres_env")
    schema: str = request.getfixturevalue("pg_schema")
    # The workers' connections are named "asyncsourcing-<schema>".
    return factory_env(postgres_env, schema)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Service:
    """``uvicorn --workers`` serving the example, its log in a file."""

    process: subprocess.Popen[bytes]
    log_path: Path
    base_url: str

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def started_pids(self) -> list[int]:
        """The pids of the workers started so far, in order."""
        return [int(pid) for pid in STARTED.findall(self.log())]

    async def ready(self, workers: int, timeout: float = 20) -> list[int]:
        """The pids of the workers started, once ``workers`` have started up."""
        deadline = time.monotonic() + timeout
        while self.log().count(READY) < workers:
            assert self.process.poll() is None, f"uvicorn exited:\n{self.log()}"
            assert time.monotonic() < deadline, f"not started:\n{self.log()}"
            await asyncio.sleep(0.05)
        return self.started_pids()


@contextlib.contextmanager
def serving(env: dict[str, str], log_path: Path) -> Iterator[Service]:
    """The example under ``uvicorn --workers 3``, killed on the way out if it
    still runs (the whole process group: the workers too)."""
    port = free_port()
    command = [
        *(sys.executable, "-m", "uvicorn", "--factory"),
        "examples.fastapi_dogschool.app:create_app",
        *("--host", "127.0.0.1", "--port", str(port)),
        *("--workers", str(WORKERS), "--no-access-log"),
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # A process group of its own.
        )
    try:
        yield Service(process, log_path, f"http://127.0.0.1:{port}")
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        # Workers left behind by a parent that died first.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)


@contextlib.asynccontextmanager
async def client_of(service: Service) -> AsyncIterator[httpx.AsyncClient]:
    """A client that opens a connection per request (no keep-alive), so that
    the kernel hands its requests to any of the workers."""
    async with httpx.AsyncClient(
        base_url=service.base_url,
        headers={"Connection": "close"},
        limits=httpx.Limits(max_keepalive_connections=0),
        timeout=30,
    ) as client:
        yield client


@dataclass
class Writes:
    """What the clients wrote, and what they read back."""

    dogs: list[int] = field(default_factory=list)  # Positions of registrations.
    tricks: list[int] = field(default_factory=list)  # Positions of tricks.
    reads: list[tuple[int, dict[str, int]]] = field(default_factory=list)

    def stale_reads(self) -> list[tuple[int, dict[str, int], dict[str, int]]]:
        """Reads that miss events at or before the position they waited for:
        (position, read, at least expected)."""
        stale = []
        for position, read in self.reads:
            expected = {
                "dogs": sum(p <= position for p in self.dogs),
                "tricks": sum(p <= position for p in self.tricks),
            }
            if read["dogs"] < expected["dogs"] or read["tricks"] < expected["tricks"]:
                stale.append((position, read, expected))
        return stale


async def client_session(client: httpx.AsyncClient, writes: Writes, n: int) -> None:
    """Register a dog and teach it a trick, reading each write back."""
    response = await client.post("/dogs", json={"name": f"dog {n}"})
    assert response.status_code == 201, response.text
    dog_id, position = response.json()["id"], int(response.headers["X-Position"])
    writes.dogs.append(position)
    # The token as the query parameter.
    response = await client.get("/counters", params={"after": position})
    assert response.status_code == 200, response.text
    writes.reads.append((position, response.json()))

    response = await client.post(f"/dogs/{dog_id}/tricks", json={"trick": "sit"})
    assert response.status_code == 200, response.text
    position = int(response.headers["X-Position"])
    writes.tricks.append(position)
    # The token as the header.
    response = await client.get("/counters", headers={"X-Position": str(position)})
    assert response.status_code == 200, response.text
    writes.reads.append((position, response.json()))


async def write_and_read(service: Service, writes: Writes, first: int) -> None:
    """``CLIENTS`` concurrent clients, each on connections of its own."""
    async with client_of(service) as client:
        await asyncio.gather(
            *(client_session(client, writes, n) for n in range(first, first + CLIENTS))
        )


async def statuses(service: Service, pids: set[int]) -> dict[int, Any]:
    """``GET /status`` of each worker of ``pids``, asked until each answered."""
    answers: dict[int, Any] = {}
    async with client_of(service) as client:
        for _ in range(200):
            responses = await asyncio.gather(
                *(client.get("/status") for _ in range(2 * len(pids)))
            )
            for response in responses:
                assert response.status_code == 200, response.text
                answers[response.json()["pid"]] = response.json()
            if pids <= answers.keys():
                break
    assert answers.keys() == pids, (answers, service.log())
    return answers


class Store:
    """The test's own view of the store the workers share, and its lease."""

    def __init__(self, env: dict[str, str]) -> None:
        # Connections of their own name: not counted as the workers'.
        test_env = {**env, "POSTGRES_APPLICATION_NAME": "tests-view"}
        self.factory: InfrastructureFactory[CountersView] = (
            InfrastructureFactory.construct(
                Environment(DogCountersProjection.name, test_env)
            )
        )
        self.view = self.factory.construct_tracking_recorder(view_class_for(env))

    async def counts(self, position: int) -> dict[str, int]:
        """The view's counts, once it has processed ``position``."""
        await self.view.wait(DogSchool.name, position, timeout=15)
        return {
            "dogs": await self.view.get_count(DOGS),
            "tricks": await self.view.get_count(TRICKS),
        }

    async def lease(self, *, after_epoch: int = 0, timeout: float = 15) -> Lease:
        """The projection's lease, once it is at an epoch above ``after_epoch``."""
        assert self.view.leases is not None
        deadline = time.monotonic() + timeout
        while True:
            lease = await self.view.leases.read(
                DogSchool.name, DogCountersProjection.name
            )
            if lease is not None and lease.epoch > after_epoch:
                return lease
            assert time.monotonic() < deadline, f"no lease after epoch {after_epoch}"
            await asyncio.sleep(0.01)


def pid_of(lease: Lease) -> int:
    """The process of the lease's owner (``host:pid:suffix``)."""
    return int(lease.owner.split(":")[1])


async def lease_rows(env: dict[str, str]) -> list[tuple[str, str, str]]:
    """The rows of ``asyncsourcing_leases``, read with SQL."""
    if env["PERSISTENCE_MODULE"] == "asyncsourcing.postgres":
        table = f"{quote(env['POSTGRES_SCHEMA'])}.asyncsourcing_leases"
        async with admin_connection(env) as conn:
            rows = await conn.fetch(
                f"SELECT application_name, projection_name, owner FROM {table}"
            )
        return [tuple(row) for row in rows]
    import sqlite3

    with contextlib.closing(sqlite3.connect(env["SQLITE_DBNAME"])) as conn:
        return list(
            conn.execute(
                "SELECT application_name, projection_name, owner "
                "FROM asyncsourcing_leases"
            )
        )


async def assert_one_leader(
    service: Service, store: Store, env: dict[str, str], workers: set[int]
) -> Lease:
    """Exactly one of ``workers`` leads: the owner of the only lease."""
    lease = await store.lease()
    assert await lease_rows(env) == [
        (DogSchool.name, DogCountersProjection.name, lease.owner)
    ]
    assert pid_of(lease) in workers
    answers = await statuses(service, workers)
    roles = {pid: answer["role"] for pid, answer in answers.items()}
    assert roles == {
        pid: "leader" if pid == pid_of(lease) else "standby" for pid in workers
    }, (lease, service.log())
    assert answers[pid_of(lease)]["owner"] == lease.owner
    return lease


def has_exited(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie, or reaped by uvicorn already)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


async def wait_until_exited(pid: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not has_exited(pid):
        assert time.monotonic() < deadline, f"worker {pid} still runs"
        await asyncio.sleep(0.01)


async def test_workers_share_the_projection_and_read_their_writes(
    env: dict[str, str], tmp_path: Path
) -> None:
    postgres = env["PERSISTENCE_MODULE"] == "asyncsourcing.postgres"
    store = Store(env)
    writes = Writes()
    try:
        with serving(env, tmp_path / "uvicorn.log") as service:
            async with asyncio.timeout(60):
                workers = set(await service.ready(WORKERS))
                assert len(workers) == WORKERS

                # Writes spread over the workers, each read back at once.
                await write_and_read(service, writes, 0)
                assert writes.stale_reads() == []
                last = max(writes.dogs + writes.tricks)
                expected = {"dogs": CLIENTS, "tricks": CLIENTS}
                assert await store.counts(last) == expected  # Each event once.
                lease = await assert_one_leader(service, store, env, workers)

                # SIGKILL the leader: no clean release of its lease.
                os.kill(pid_of(lease), signal.SIGKILL)
                killed_at = time.monotonic()
                await wait_until_exited(pid_of(lease))
                # Clients write meanwhile, and wait for a new leader to read.
                writing = asyncio.create_task(write_and_read(service, writes, 100))
                new_lease = await store.lease(after_epoch=lease.epoch)
                takeover = time.monotonic() - killed_at
                # A standby, or the worker that uvicorn started in its place.
                assert pid_of(new_lease) != pid_of(lease)
                if postgres:  # The fast path: the leader's session is gone.
                    assert takeover < 2, takeover
                else:  # The owner's process has exited (SQLite's fast path).
                    assert takeover < 5, takeover
                await writing
                assert writes.stale_reads() == []

                # uvicorn has replaced the worker; it stands by.
                started = await service.ready(WORKERS + 1)
                workers = set(started) - {pid_of(lease)}
                assert len(workers) == WORKERS
                assert await assert_one_leader(service, store, env, workers) == (
                    await store.lease()
                )
                await write_and_read(service, writes, 200)
                assert writes.stale_reads() == []
                last = max(writes.dogs + writes.tricks)
                assert len(set(writes.dogs + writes.tricks)) == 6 * CLIENTS
                expected = {"dogs": 3 * CLIENTS, "tricks": 3 * CLIENTS}
                assert await store.counts(last) == expected  # Each event once.
                async with client_of(service) as client:
                    response = await client.get("/counters", params={"after": last})
                    assert response.json() == expected
                if postgres:
                    assert await our_connections(env, env["POSTGRES_SCHEMA"])

                # SIGTERM: a clean stop of the parent and its workers.
                service.process.send_signal(signal.SIGTERM)
                await asyncio.to_thread(service.process.wait, 20)
            log = service.log()
            assert service.process.returncode == 0, log
            assert "Traceback" not in log, log
            assert "ERROR" not in log, log
            assert log.count("Application shutdown complete.") == WORKERS, log
            # The last leader gave the lease back: it has expired.
            lease = await store.lease()
            assert lease.expires_at <= datetime.now(UTC)
        if postgres:
            # No connection left behind (the killed worker's end too).
            deadline = time.monotonic() + 5
            while left := await our_connections(env, env["POSTGRES_SCHEMA"]):
                assert time.monotonic() < deadline, left
                await asyncio.sleep(0.05)
        print(f"takeover after SIGKILL: {takeover:.3f} s")
    finally:
        await store.factory.close()


async def test_status_names_the_process_and_its_runners_role(tmp_path: Path) -> None:
    env = {"PERSISTENCE_MODULE": "asyncsourcing.popo"}
    async with served(create_app(env)) as (client, _):
        response = await client.post("/dogs", json={"name": "Fido"})
        position = response.json()["position"]
        await client.get("/counters", params={"after": position})
        response = await client.get("/status")
        # In memory, the only runner leads without a lease.
        assert response.json() == {
            "pid": os.getpid(),
            "role": "leader",
            "owner": None,
            "position": position,
        }

    env = {
        "PERSISTENCE_MODULE": "asyncsourcing.sqlite",
        "SQLITE_DBNAME": str(tmp_path / "dogschool.sqlite"),
    }
    async with served(create_app(env)) as (client, app):
        response = await client.get("/status")
        assert response.json()["role"] == "leader"
        runner = app.state["runner"]
        assert response.json()["owner"] == (await runner.statistics()).owner
        assert response.json()["owner"].split(":")[1] == str(os.getpid())
        response = await client.post("/dogs", json={"name": "Fido"})
        position = response.json()["position"]
        await client.get("/counters", params={"after": position})

    # Without a runner (RUN_PROJECTION=no): the view's position, no role.
    async with served(create_app({**env, "RUN_PROJECTION": "no"})) as (client, _):
        response = await client.get("/status")
        assert response.json() == {
            "pid": os.getpid(),
            "role": None,
            "owner": None,
            "position": position,
        }
