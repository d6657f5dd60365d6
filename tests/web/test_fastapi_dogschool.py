"""The dog school's FastAPI service, against the real app and real backends.

Requests go through ``httpx.ASGITransport``, which does not run lifespan
events, so each test runs the app's lifespan as a server does
(:func:`serving`, on :func:`~asyncsourcing.testing.asgi.running_lifespan`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
import types
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import pytest
from fastapi import FastAPI

from examples.fastapi_dogschool import __main__ as service_main
from examples.fastapi_dogschool.app import create_app
from tests.support.paths import ROOT
from tests.support.postgres import factory_env
from tests.support.web import served

BACKENDS = [
    "popo",
    "sqlite",
    pytest.param("postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(params=BACKENDS)
def env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """The environment of a fresh store on each backend."""
    if request.param == "popo":
        return {"PERSISTENCE_MODULE": "asyncsourcing.popo"}
    if request.param == "sqlite":
        return {
            "PERSISTENCE_MODULE": "asyncsourcing.sqlite",
            "SQLITE_DBNAME": str(tmp_path / "dogschool.sqlite"),
        }
    postgres_env: dict[str, str] = request.getfixturevalue("postgres_env")
    schema: str = request.getfixturevalue("pg_schema")
    return factory_env(postgres_env, schema)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def durable_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """The environment of a fresh store on each backend that outlives the app."""
    if request.param == "sqlite":
        return {
            "PERSISTENCE_MODULE": "asyncsourcing.sqlite",
            "SQLITE_DBNAME": str(tmp_path / "dogschool.sqlite"),
        }
    postgres_env: dict[str, str] = request.getfixturevalue("postgres_env")
    schema: str = request.getfixturevalue("pg_schema")
    return factory_env(postgres_env, schema)


@contextlib.asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client of ``app``, which runs its lifespan meanwhile."""
    async with served(app) as (client, _):
        yield client


async def register(client: httpx.AsyncClient, name: str) -> tuple[str, int]:
    response = await client.post("/dogs", json={"name": name})
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {"id", "position"}
    assert response.headers["X-Position"] == str(body["position"])
    return body["id"], body["position"]


async def teach(client: httpx.AsyncClient, dog_id: str, trick: str) -> int:
    response = await client.post(f"/dogs/{dog_id}/tricks", json={"trick": trick})
    assert response.status_code == 200, response.text
    position: int = response.json()["position"]
    assert response.headers["X-Position"] == str(position)
    return position


async def counters(client: httpx.AsyncClient, after: int | None = None) -> Any:
    params = {} if after is None else {"after": after}
    response = await client.get("/counters", params=params)
    assert response.status_code == 200, response.text
    return response.json()


async def test_commands_return_positions_that_queries_wait_for(
    env: dict[str, str],
) -> None:
    async with serving(create_app(env)) as client:
        fido, registered = await register(client, "Fido")
        assert await counters(client, after=registered) == {"dogs": 1, "tricks": 0}

        taught = await teach(client, fido, "roll over")
        assert taught > registered
        assert await counters(client, after=taught) == {"dogs": 1, "tricks": 1}

        response = await client.get(f"/dogs/{fido}")
        assert response.status_code == 200
        assert response.json() == {"name": "Fido", "tricks": ["roll over"]}


async def test_the_position_header_is_a_token_too(env: dict[str, str]) -> None:
    async with serving(create_app(env)) as client:
        response = await client.post("/dogs", json={"name": "Fido"})
        token = response.headers["X-Position"]
        response = await client.get("/counters", headers={"X-Position": token})
        assert response.json() == {"dogs": 1, "tricks": 0}

        response = await client.get("/counters", headers={"X-Position": "later"})
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["header", "X-Position"]


async def test_read_your_writes_under_concurrent_commands(
    env: dict[str, str],
) -> None:
    async with serving(create_app(env)) as client:
        registered = await asyncio.gather(
            *(register(client, f"dog {n}") for n in range(10))
        )
        taught = await asyncio.gather(
            *(teach(client, dog_id, "sit") for dog_id, _ in registered)
        )
        positions = [position for _, position in registered] + taught
        assert len(set(positions)) == 20
        assert await counters(client, after=max(positions)) == {
            "dogs": 10,
            "tricks": 10,
        }


async def test_unknown_dog_is_404_and_bad_input_is_422(env: dict[str, str]) -> None:
    async with serving(create_app(env)) as client:
        unknown = uuid4()
        response = await client.get(f"/dogs/{unknown}")
        assert response.status_code == 404
        assert response.json() == {"detail": f"Dog {unknown} not found"}
        response = await client.post(f"/dogs/{unknown}/tricks", json={"trick": "sit"})
        assert response.status_code == 404

        assert (await client.get("/dogs/not-a-uuid")).status_code == 422
        assert (await client.post("/dogs", json={"name": ""})).status_code == 422
        assert (await client.get("/counters?after=-1")).status_code == 422
        assert await counters(client) == {"dogs": 0, "tricks": 0}


async def test_position_not_reached_in_time_is_504(env: dict[str, str]) -> None:
    async with serving(create_app({**env, "WAIT_TIMEOUT": "0.2"})) as client:
        _, position = await register(client, "Fido")
        ahead = position + 1_000_000
        started = time.perf_counter()
        response = await client.get("/counters", params={"after": ahead})
        elapsed = time.perf_counter() - started
        assert response.status_code == 504
        detail = response.json()["detail"]
        assert f"has not processed position {ahead} of DogSchool" in detail
        assert "within 0.2 s" in detail
        assert 0.2 <= elapsed < 2
        # The app still serves, and the view has its position.
        assert await counters(client, after=position) == {"dogs": 1, "tricks": 0}


async def test_stopped_projection_is_503() -> None:
    env = {"PERSISTENCE_MODULE": "asyncsourcing.popo", "WAIT_TIMEOUT": "0.1"}
    async with served(create_app(env)) as (client, app):
        app.state["runner"].stop()
        await app.state["runner"].run_forever()  # returns once it has stopped
        _, position = await register(client, "Fido")
        response = await client.get("/counters", params={"after": position})
        assert response.status_code == 503
        assert "has stopped" in response.json()["detail"]


async def test_shutdown_leaves_no_tasks_and_no_runner(env: dict[str, str]) -> None:
    before = asyncio.all_tasks()
    async with served(create_app(env)) as (client, app):
        runner = app.state["runner"]
        assert app.state["application"] is runner.app
        assert runner.is_running
        _, position = await register(client, "Fido")
        # A wait in progress, and one that times out, leave nothing behind.
        assert await counters(client, after=position) == {"dogs": 1, "tricks": 0}
        during = asyncio.all_tasks()
        assert len(during) > len(before)  # the projection's task, at least
    assert asyncio.all_tasks() == before
    assert not runner.is_running
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as client:
        with pytest.raises(RuntimeError, match="lifespan has ended"):
            await client.get("/counters")


async def test_without_its_lifespan_the_app_fails_clearly() -> None:
    app = create_app({"PERSISTENCE_MODULE": "asyncsourcing.popo"})
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as client:
        with pytest.raises(RuntimeError, match="no asyncsourcing lifespan state"):
            await client.get("/counters")


async def test_app_restarts_and_view_resumes(durable_env: dict[str, str]) -> None:
    app = create_app(durable_env)
    async with serving(app) as client:
        fido, _ = await register(client, "Fido")
        position = await teach(client, fido, "fetch")
        assert await counters(client, after=position) == {"dogs": 1, "tricks": 1}
    async with serving(app) as client:  # a new runner, on the same store
        _, position = await register(client, "Milly")
        assert await counters(client, after=position) == {"dogs": 2, "tricks": 1}
        response = await client.get(f"/dogs/{fido}")
        assert response.json() == {"name": "Fido", "tricks": ["fetch"]}
    async with serving(create_app(durable_env)) as client:  # a new app too
        assert await counters(client, after=position) == {"dogs": 2, "tricks": 1}


async def test_the_projection_may_run_in_another_process(
    durable_env: dict[str, str],
) -> None:
    web_env = {**durable_env, "RUN_PROJECTION": "no", "WAIT_TIMEOUT": "30"}
    async with served(create_app(web_env)) as (client, app):
        assert "runner" not in app.state  # the web process only opens the view
        fido, _ = await register(client, "Fido")
        position = await teach(client, fido, "sit")
        async with running_projection(durable_env):
            assert await counters(client, after=position) == {"dogs": 1, "tricks": 1}
            _, position = await register(client, "Milly")
            assert await counters(client, after=position) == {"dogs": 2, "tricks": 1}


@contextlib.asynccontextmanager
async def running_projection(env: dict[str, str]) -> AsyncIterator[None]:
    """``asyncsourcing run`` of the dog counters, in a process of its own."""
    backend = env["PERSISTENCE_MODULE"].rsplit(".", 1)[-1]
    view = {"sqlite": "SQLiteCounters", "postgres": "PostgresCounters"}[backend]
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "asyncsourcing", "run", "--no-progress"),
        *("--app", "examples.dogschool.application:DogSchool"),
        *("--projection", "examples.dogschool.projections:DogCountersProjection"),
        *("--view", f"examples.dogschool.{backend}:{view}"),
        cwd=ROOT,
        env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 0, stderr.decode()


def test_create_app_rejects_bad_configuration() -> None:
    with pytest.raises(ValueError, match="No counters view"):
        create_app({"PERSISTENCE_MODULE": "nowhere"})
    for bad in ("soon", "0", "-1", "nan"):
        env = {"PERSISTENCE_MODULE": "asyncsourcing.popo", "WAIT_TIMEOUT": bad}
        with pytest.raises(ValueError, match="WAIT_TIMEOUT must be"):
            create_app(env)
    env = {"PERSISTENCE_MODULE": "asyncsourcing.popo", "RUN_PROJECTION": "maybe"}
    with pytest.raises(ValueError, match="RUN_PROJECTION must be yes or no"):
        create_app(env)
    env["RUN_PROJECTION"] = "no"  # in memory, no other process can update it
    with pytest.raises(ValueError, match="not the in-memory backend"):
        create_app(env)


def test_view_class_follows_the_projections_backend() -> None:
    env = {
        "PERSISTENCE_MODULE": "asyncsourcing.popo",
        "DOGCOUNTERS_PERSISTENCE_MODULE": "nowhere",
    }
    with pytest.raises(ValueError, match="'nowhere'"):
        create_app(env)


def test_main_explains_how_to_serve_without_uvicorn(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import fails
    assert service_main.main([]) == 1
    err = capsys.readouterr().err
    assert "pip install uvicorn" in err
    assert "examples.fastapi_dogschool.app:create_app" in err


def test_main_serves_with_uvicorn(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    served: list[tuple[Any, dict[str, Any]]] = []
    fake = types.ModuleType("uvicorn")
    fake.__dict__["run"] = lambda app, **kwargs: served.append((app, kwargs))
    monkeypatch.setitem(sys.modules, "uvicorn", fake)
    monkeypatch.setenv("PERSISTENCE_MODULE", "asyncsourcing.popo")
    assert service_main.main(["--port", "8123"]) == 0
    [(app, kwargs)] = served
    assert isinstance(app, FastAPI)
    assert kwargs == {"host": "127.0.0.1", "port": 8123}
