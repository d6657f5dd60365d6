"""Projections and views for the lifetime of an ASGI app, and read-your-writes
over HTTP with position tokens.

The lifespans of :mod:`asyncsourcing.asgi` are tested as plain async context
managers and under FastAPI, whose requests go through httpx's ASGI transport
while :func:`~asyncsourcing.testing.asgi.running_lifespan` runs the app's
lifespan as a server would. Stores are real ones, fresh for each test (the
``store`` fixture of our pytest plugin).

No ``from __future__ import annotations``: FastAPI must evaluate the
annotations of endpoints defined in functions, which name local variables.
"""

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Annotated, Any
from uuid import UUID

import httpx
import pytest
from fastapi import Depends, FastAPI, Response

from asyncsourcing.application import Application
from asyncsourcing.asgi import (
    Lifespan,
    PositionNotReachedError,
    ViewState,
    projection_lifespan,
    view_lifespan,
    wait_for_position,
)
from asyncsourcing.domain import Aggregate
from asyncsourcing.fastapi import PositionTokens, lifespan_state
from asyncsourcing.projection import EventSourcedProjectionRunner, ProjectionRunner
from asyncsourcing.testing.asgi import running_lifespan
from asyncsourcing.testing.stores import BACKENDS, Store
from examples.dogschool.application import DogSchool
from examples.dogschool.postgres import PostgresCounters
from examples.dogschool.projections import DOGS, DogCounters, DogCountersProjection
from examples.dogschool.sqlite import SQLiteCounters
from examples.dogschool.views import CountersView, POPOCounters
from examples.eventcounters.projection import (
    EventCountersProjection,
    SpannerThrown,
    SpannerThrownError,
)
from examples.eventcounters.views import POPOEventCounters
from tests.support.paths import ROOT

VIEWS: dict[str, type[CountersView]] = {
    "popo": POPOCounters,
    "sqlite": SQLiteCounters,
    "postgres": PostgresCounters,
}

all_backends = pytest.mark.parametrize("store", BACKENDS, indirect=True)
durable_backends = pytest.mark.parametrize(
    "store", ["sqlite", "postgres"], indirect=True
)

State = Annotated[ViewState[DogSchool, CountersView], Depends(lifespan_state)]


def dogschool_runner(store: Store) -> ProjectionRunner[DogSchool, CountersView]:
    return store.runner(DogSchool, DogCountersProjection, VIEWS)


def dogschool_view_lifespan(store: Store) -> Lifespan[ViewState[DogSchool, Any]]:
    return view_lifespan(
        application_class=DogSchool,
        projection_class=DogCountersProjection,
        view_class=store.view_class(VIEWS),
        env=store.env,
    )


def dogschool_api(
    lifespan: Lifespan[ViewState[DogSchool, Any]],
    tokens: PositionTokens | None = None,
) -> FastAPI:
    """A command that sets a position token, a query that waits for one."""
    tokens = tokens or PositionTokens()
    app = FastAPI(lifespan=lifespan)

    @app.post("/dogs", status_code=201)
    async def register_dog(name: str, state: State, response: Response) -> str:
        dog_id, position = await state["application"].register_dog(name)
        tokens.set(response, position)
        return str(dog_id)

    @app.get("/dogs/count")
    async def count_dogs(
        state: State, after: Annotated[int | None, Depends(tokens.wait)]
    ) -> dict[str, int | None]:
        return {"dogs": await state["view"].get_count(DOGS), "after": after}

    return app


@asynccontextmanager
async def client_of(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with running_lifespan(app) as served:
        transport = httpx.ASGITransport(app=served)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            yield c


async def register(
    client: httpx.AsyncClient, name: str, header: str = "X-Position"
) -> str:
    response = await client.post("/dogs", params={"name": name})
    assert response.status_code == 201, response.text
    return response.headers[header]


# The lifespans, without a web framework.


async def test_projection_lifespan_runs_the_runner_while_the_app_serves() -> None:
    lifespan = projection_lifespan(
        lambda: ProjectionRunner(
            application_class=Application[UUID],
            projection_class=EventCountersProjection,
            view_class=POPOEventCounters,
        )
    )
    before = asyncio.all_tasks()
    async with lifespan(object()) as state:
        runner = state["runner"]
        assert runner.is_running
        assert state["application"] is runner.app
        assert isinstance(runner, ProjectionRunner)
        assert state["view"] is runner.view
        recordings = await runner.app.save(Aggregate())
        await wait_for_position(state, recordings[-1].notification.id, timeout=1)
    assert not runner.is_running
    assert asyncio.all_tasks() == before

    # Each start gets a runner of its own: a closed one cannot start again.
    async with lifespan(object()) as state:
        assert state["runner"] is not runner


async def test_projection_error_is_raised_at_shutdown() -> None:
    lifespan = projection_lifespan(
        lambda: ProjectionRunner(
            application_class=Application[UUID],
            projection_class=EventCountersProjection,
            view_class=POPOEventCounters,
        )
    )

    async def serve_until_shutdown() -> None:
        async with lifespan(object()) as state:
            aggregate = Aggregate()
            aggregate.trigger_event(SpannerThrown)
            await state["application"].save(aggregate)
            await asyncio.sleep(0.1)

    with pytest.raises(SpannerThrownError):
        await serve_until_shutdown()


async def test_event_sourced_projection_waits_on_its_own_recorder() -> None:
    lifespan = projection_lifespan(
        lambda: EventSourcedProjectionRunner(
            application_class=DogSchool, projection_class=DogCounters
        )
    )
    async with lifespan(object()) as state:
        runner = state["runner"]
        assert isinstance(runner, EventSourcedProjectionRunner)
        assert state["view"] is runner.projection.recorder
        _, position = await state["application"].register_dog("Fido")
        await wait_for_position(state, position, timeout=1)
        assert await runner.projection.get_count(DOGS) == 1


@durable_backends
async def test_view_lifespan_waits_for_a_runner_in_another_task(store: Store) -> None:
    async with (
        dogschool_view_lifespan(store)(object()) as state,
        dogschool_runner(store) as runner,
    ):
        assert "runner" not in state
        assert state["view"] is not runner.view  # the web process's own view
        _, position = await state["application"].register_dog("Fido")
        await wait_for_position(state, position, timeout=5)
        assert await state["view"].get_count(DOGS) == 1


async def test_wait_for_position_returns_at_once_without_a_position(
    store: Store,
) -> None:
    async with dogschool_view_lifespan(store)(object()) as state:
        started = time.perf_counter()
        await wait_for_position(state, None, timeout=10)
        assert time.perf_counter() - started < 1


@durable_backends
async def test_a_position_not_reached_in_time_is_an_error(store: Store) -> None:
    async with dogschool_view_lifespan(store)(object()) as state:
        _, position = await state["application"].register_dog("Fido")
        started = time.perf_counter()
        with pytest.raises(PositionNotReachedError) as caught:
            await wait_for_position(state, position, timeout=0.2)
        assert 0.2 <= time.perf_counter() - started < 2
    error = caught.value
    assert isinstance(error, TimeoutError)
    assert (error.application_name, error.position) == ("DogSchool", position)
    assert not error.projection_stopped
    assert str(error) == (
        f"The view has not processed position {position} of DogSchool "
        "within 0.2 s; try again later"
    )


async def test_a_stopped_runner_fails_the_wait_at_once(store: Store) -> None:
    lifespan = projection_lifespan(lambda: dogschool_runner(store))
    async with lifespan(object()) as state:
        _, processed = await state["application"].register_dog("Fido")
        await wait_for_position(state, processed, timeout=1)
        state["runner"].stop()
        await state["runner"].run_forever()  # returns once it has stopped
        _, position = await state["application"].register_dog("Milly")
        started = time.perf_counter()
        with pytest.raises(PositionNotReachedError, match="has stopped") as caught:
            await wait_for_position(state, position, timeout=10)
        assert time.perf_counter() - started < 1
        assert caught.value.projection_stopped
        # What the view has processed is still readable.
        await wait_for_position(state, processed, timeout=10)


# Position tokens under FastAPI.


@all_backends
async def test_a_command_sets_the_token_that_a_query_waits_for(store: Store) -> None:
    app = dogschool_api(projection_lifespan(lambda: dogschool_runner(store)))
    async with client_of(app) as client:
        token = await register(client, "Fido")
        response = await client.get("/dogs/count", headers={"X-Position": token})
        assert response.json() == {"dogs": 1, "after": int(token)}

        token = await register(client, "Milly")
        response = await client.get("/dogs/count", params={"after": token})
        assert response.json() == {"dogs": 2, "after": int(token)}

        # Without a token, the query reads at once.
        response = await client.get("/dogs/count")
        assert response.json()["after"] is None


async def test_with_both_tokens_the_larger_is_waited_for(store: Store) -> None:
    app = dogschool_api(projection_lifespan(lambda: dogschool_runner(store)))
    async with client_of(app) as client:
        first = await register(client, "Fido")
        second = await register(client, "Milly")
        response = await client.get(
            "/dogs/count", headers={"X-Position": first}, params={"after": second}
        )
        assert response.json() == {"dogs": 2, "after": int(second)}


async def test_token_names_are_configurable(store: Store) -> None:
    tokens = PositionTokens(header="X-Read-After", query="since", timeout=0.2)
    app = dogschool_api(projection_lifespan(lambda: dogschool_runner(store)), tokens)
    async with client_of(app) as client:
        token = await register(client, "Fido", header="X-Read-After")
        response = await client.get("/dogs/count", headers={"X-Read-After": token})
        assert response.json() == {"dogs": 1, "after": int(token)}
        response = await client.get("/dogs/count", params={"since": token})
        assert response.json() == {"dogs": 1, "after": int(token)}

        # The default names mean nothing here: no wait, even for a far position.
        response = await client.get(
            "/dogs/count", headers={"X-Position": "999"}, params={"after": "999"}
        )
        assert response.status_code == 200
        assert response.json()["after"] is None

        openapi = (await client.get("/openapi.json")).json()
        parameters = openapi["paths"]["/dogs/count"]["get"]["parameters"]
        assert {(p["in"], p["name"]) for p in parameters} == {
            ("header", "X-Read-After"),
            ("query", "since"),
        }


@pytest.mark.parametrize(
    ("where", "name", "value", "error"),
    [
        ("header", "X-Position", "soon", "int_parsing"),
        ("header", "X-Position", "-1", "greater_than_equal"),
        ("query", "after", "1.5", "int_parsing"),
        ("query", "after", "-1", "greater_than_equal"),
    ],
)
async def test_a_bad_token_is_422_naming_the_parameter(
    store: Store, where: str, name: str, value: str, error: str
) -> None:
    app = dogschool_api(projection_lifespan(lambda: dogschool_runner(store)))
    async with client_of(app) as client:
        if where == "header":
            response = await client.get("/dogs/count", headers={name: value})
        else:
            response = await client.get("/dogs/count", params={name: value})
    assert response.status_code == 422
    [detail] = response.json()["detail"]
    assert detail["loc"] == [where, name]
    assert detail["type"] == error
    assert detail["input"] == value


@durable_backends
async def test_a_position_not_reached_in_time_is_504(store: Store) -> None:
    # The view is served, but no runner processes the events.
    tokens = PositionTokens(timeout=0.2)
    app = dogschool_api(dogschool_view_lifespan(store), tokens)
    async with client_of(app) as client:
        token = await register(client, "Fido")
        started = time.perf_counter()
        response = await client.get("/dogs/count", params={"after": token})
        assert 0.2 <= time.perf_counter() - started < 2
    assert response.status_code == 504
    assert response.json() == {
        "detail": f"The view has not processed position {token} of DogSchool "
        "within 0.2 s; try again later"
    }


async def test_a_stopped_projection_is_503_at_once(store: Store) -> None:
    app = dogschool_api(projection_lifespan(lambda: dogschool_runner(store)))
    async with running_lifespan(app) as served:
        transport = httpx.ASGITransport(app=served)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            served.state["runner"].stop()
            await served.state["runner"].run_forever()  # returns once stopped
            token = await register(c, "Fido")
            started = time.perf_counter()
            response = await c.get("/dogs/count", params={"after": token})
            assert time.perf_counter() - started < 1
    assert response.status_code == 503
    assert response.json() == {
        "detail": "The projection of DogSchool has stopped; "
        f"the view cannot reach position {token}"
    }


async def test_without_the_lifespan_requests_fail_clearly(store: Store) -> None:
    app = dogschool_api(projection_lifespan(lambda: dogschool_runner(store)))
    transport = httpx.ASGITransport(app=app)  # runs no lifespan
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        with pytest.raises(RuntimeError, match="no asyncsourcing lifespan state"):
            await client.get("/dogs/count", params={"after": "1"})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"header": ""}, "must be names"),
        ({"query": ""}, "must be names"),
        ({"timeout": 0}, "timeout must be a positive number"),
        ({"timeout": float("nan")}, "timeout must be a positive number"),
    ],
)
def test_position_tokens_reject_bad_settings(
    kwargs: Mapping[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        PositionTokens(**kwargs)


# A web process that only reads the view, its runner in another process.


@durable_backends
async def test_view_lifespan_reads_your_writes_with_the_runner_in_another_process(
    store: Store,
) -> None:
    app = dogschool_api(dogschool_view_lifespan(store), PositionTokens(timeout=30))
    async with client_of(app) as client, run_projection_process(store):
        for name in ("Fido", "Milly", "Rex"):
            token = await register(client, name)
            response = await client.get("/dogs/count", headers={"X-Position": token})
            assert response.status_code == 200, response.text
            # Each dog's registration is the next event: 1, 2, 3.
            assert response.json()["dogs"] == int(token)


@asynccontextmanager
async def run_projection_process(store: Store) -> AsyncIterator[None]:
    """``asyncsourcing run`` of the dog counters, in a process of its own."""
    view = store.view_class(VIEWS)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "asyncsourcing",
        "run",
        "--app",
        "examples.dogschool.application:DogSchool",
        "--projection",
        "examples.dogschool.projections:DogCountersProjection",
        "--view",
        f"{view.__module__}:{view.__qualname__}",
        "--no-progress",
        "--timeout",
        "60",
        cwd=ROOT,
        env={**os.environ, **store.env, "PYTHONPATH": str(ROOT)},
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 0, stderr.decode()


# The test helper that runs lifespans.


async def test_running_lifespan_raises_the_apps_startup_error() -> None:
    @asynccontextmanager
    async def failing(app: object) -> AsyncIterator[None]:
        raise LookupError("no database")
        yield

    with pytest.raises(LookupError, match="no database"):
        async with running_lifespan(FastAPI(lifespan=failing)):
            pass  # pragma: no cover


async def test_running_lifespan_serves_no_requests_after_shutdown(
    store: Store,
) -> None:
    app = dogschool_api(projection_lifespan(lambda: dogschool_runner(store)))
    async with running_lifespan(app) as served:
        pass
    transport = httpx.ASGITransport(app=served)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        with pytest.raises(RuntimeError, match="lifespan has ended"):
            await client.get("/dogs/count")


def test_the_core_imports_no_web_framework() -> None:
    script = (
        "import sys\n"
        "import asyncsourcing, asyncsourcing.asgi, asyncsourcing.testing.asgi\n"
        "web = {'fastapi', 'starlette', 'httpx'}\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & web))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert result.stdout.strip() == "[]"
