"""The FastAPI app of the dog school: :func:`create_app`.

Endpoints:

* ``POST /dogs`` ``{"name": ...}`` -> 201 ``{"id": ..., "position": ...}``
* ``POST /dogs/{id}/tricks`` ``{"trick": ...}`` -> ``{"position": ...}``
  (404 for an unknown dog)
* ``GET /dogs/{id}`` -> ``{"name": ..., "tricks": [...]}`` (404 for an unknown
  dog). Read from the event store, so it is always up to date: no token.
* ``GET /counters`` -> ``{"dogs": n, "tricks": m}``, read from the counters
  view.
* ``GET /status`` -> ``{"pid": ..., "role": ..., "owner": ..., "position": ...}``:
  the process that answered, and the part its projection runner plays
  (``"leader"`` or ``"standby"``; None with ``RUN_PROJECTION=no``), for
  health checks of a service that runs several workers.

Commands also set the position of their event in the ``X-Position``
response header. ``GET /counters`` given a position (the same header, or
``?after=<position>``) first waits until the view has processed it
(read-your-writes): 504 if it has not within ``WAIT_TIMEOUT`` seconds, 503 if
the projection has stopped, 422 for a token that is not a position. These
are :class:`~asyncsourcing.fastapi.PositionTokens`.

By default the app's lifespan runs the
:class:`~asyncsourcing.projection.ProjectionRunner` of the
:class:`~examples.dogschool.projections.DogCountersProjection`
(:func:`~asyncsourcing.asgi.projection_lifespan`). With ``RUN_PROJECTION=no``
it only opens the view (:func:`~asyncsourcing.asgi.view_lifespan`), and the
projection runs in a process of its own::

    asyncsourcing run --app examples.dogschool.application:DogSchool \\
        --projection examples.dogschool.projections:DogCountersProjection \\
        --view examples.dogschool.sqlite:SQLiteCounters
"""

# No ``from __future__ import annotations``: FastAPI evaluates the endpoints'
# annotations, which name variables local to create_app().

import os
from collections.abc import Mapping
from typing import Annotated, Any, cast
from uuid import UUID

from eventsourcing.utils import strtobool
from fastapi import Depends, FastAPI, HTTPException, Response, status
from pydantic import BaseModel, Field

from asyncsourcing.application import AggregateNotFoundError
from asyncsourcing.asgi import Lifespan
from asyncsourcing.fastapi import (
    PositionTokens,
    ViewState,
    lifespan_state,
    projection_lifespan,
    view_lifespan,
)
from asyncsourcing.projection import BaseProjectionRunner, ProjectionRunner
from asyncsourcing.utils import Environment, resolve_topic
from examples.dogschool.__main__ import DEFAULTS, VIEW_CLASSES
from examples.dogschool.application import DogSchool
from examples.dogschool.projections import DOGS, TRICKS, DogCountersProjection
from examples.dogschool.views import CountersView

__all__ = [
    "DEFAULT_WAIT_TIMEOUT",
    "RUN_PROJECTION",
    "WAIT_TIMEOUT",
    "create_app",
]

WAIT_TIMEOUT = "WAIT_TIMEOUT"
"""Environment variable: how long a query waits for its position, in seconds."""

DEFAULT_WAIT_TIMEOUT = 5.0

RUN_PROJECTION = "RUN_PROJECTION"
"""Environment variable: "no" when the projection runs in another process."""

State = Annotated[ViewState[DogSchool, CountersView], Depends(lifespan_state)]
"""The lifespan state of either lifespan, typed: a dependency."""


class RegisterDog(BaseModel):
    name: str = Field(min_length=1)


class AddTrick(BaseModel):
    trick: str = Field(min_length=1)


class Registered(BaseModel):
    id: UUID
    position: int = Field(description="Position of the event; for ?after=")


class Recorded(BaseModel):
    position: int = Field(description="Position of the event; for ?after=")


class DogDetails(BaseModel):
    name: str
    tricks: list[str]


class Counters(BaseModel):
    dogs: int
    tricks: int


class Status(BaseModel):
    pid: int = Field(description="The process that answered (one of the workers)")
    role: str | None = Field(
        description='Its runner\'s role, "leader" or "standby"; None without one'
    )
    owner: str | None = Field(description="Its runner's name in leases")
    position: int | None = Field(description="The view's position")


def configure(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The dog school's defaults, overridden by ``os.environ``, then by ``env``."""
    return {**DEFAULTS, **os.environ, **(env or {})}


def view_class_for(env: Mapping[str, str]) -> type[CountersView]:
    """The counters view class of the backend that the projection will use.

    Honours ``DOGCOUNTERS_PERSISTENCE_MODULE`` over ``PERSISTENCE_MODULE``,
    as the projection's infrastructure factory does.
    """
    module = projection_module(env)
    try:
        topic = VIEW_CLASSES[module]
    except KeyError:
        msg = f"No counters view for PERSISTENCE_MODULE={module!r}: {[*VIEW_CLASSES]}"
        raise ValueError(msg) from None
    view_class: type[CountersView] = resolve_topic(topic)
    return view_class


def projection_module(env: Mapping[str, str]) -> str:
    """The persistence module of the projection's view."""
    projection_env = Environment(DogCountersProjection.name, dict(env))
    return projection_env.get("PERSISTENCE_MODULE", "asyncsourcing.popo")


def parse_wait_timeout(env: Mapping[str, str]) -> float:
    """``WAIT_TIMEOUT`` (positive seconds) from ``env``, else the default."""
    value = env.get(WAIT_TIMEOUT)
    if not value:
        return DEFAULT_WAIT_TIMEOUT
    try:
        timeout = float(value)
    except ValueError:
        timeout = 0.0
    if not timeout > 0:
        msg = f"{WAIT_TIMEOUT} must be a positive number of seconds, not {value!r}"
        raise ValueError(msg)
    return timeout


def lifespan_for(env: dict[str, str]) -> Lifespan[ViewState[DogSchool, Any]]:
    """The runner's lifespan, or the view's with ``RUN_PROJECTION=no``."""
    view_class = view_class_for(env)
    try:
        runs_projection = strtobool(env.get(RUN_PROJECTION) or "yes")
    except ValueError:
        msg = f"{RUN_PROJECTION} must be yes or no, not {env[RUN_PROJECTION]!r}"
        raise ValueError(msg) from None
    if runs_projection:
        return projection_lifespan(
            lambda: ProjectionRunner(
                application_class=DogSchool,
                projection_class=DogCountersProjection,
                view_class=view_class,
                env=env,
            )
        )
    if projection_module(env) == "asyncsourcing.popo":
        msg = (
            f"{RUN_PROJECTION}=no needs a view that another process can update: "
            "SQLite or PostgreSQL, not the in-memory backend"
        )
        raise ValueError(msg)
    return view_lifespan(
        application_class=DogSchool,
        projection_class=DogCountersProjection,
        view_class=view_class,
        env=env,
    )


def create_app(env: dict[str, str] | None = None) -> FastAPI:
    """The dog school service, configured by ``os.environ`` updated with ``env``.

    Backend settings are those of the dog school example (default: SQLite file
    ``dogschool.sqlite``; ``PERSISTENCE_MODULE`` picks the backend and its
    counters view class); ``WAIT_TIMEOUT`` (seconds, default 5) bounds the
    wait for a position; ``RUN_PROJECTION=no`` leaves the projection to
    another process. Raises :class:`ValueError` for an unknown backend, a
    bad timeout, or ``RUN_PROJECTION=no`` in memory. Does no IO: the
    lifespan opens what the app uses, anew at each start.
    """
    config = configure(env)
    lifespan = lifespan_for(config)
    tokens = PositionTokens(timeout=parse_wait_timeout(config))
    app = FastAPI(title="Dog school", lifespan=lifespan)

    @app.post("/dogs", status_code=status.HTTP_201_CREATED, response_model=Registered)
    async def register_dog(
        body: RegisterDog, state: State, response: Response
    ) -> Registered:
        """Register a dog; returns its id and the position of its event."""
        dog_id, position = await state["application"].register_dog(body.name)
        tokens.set(response, position)
        return Registered(id=dog_id, position=position)

    @app.post("/dogs/{dog_id}/tricks", response_model=Recorded)
    async def add_trick(
        dog_id: UUID, body: AddTrick, state: State, response: Response
    ) -> Recorded:
        """Teach a dog a trick; returns the position of the event."""
        try:
            position = await state["application"].add_trick(dog_id, body.trick)
        except AggregateNotFoundError:
            raise dog_not_found(dog_id) from None
        tokens.set(response, position)
        return Recorded(position=position)

    @app.get("/dogs/{dog_id}", response_model=DogDetails)
    async def get_dog(dog_id: UUID, state: State) -> DogDetails:
        """A dog's name and tricks, from its events (always up to date)."""
        try:
            dog = await state["application"].get_dog(dog_id)
        except AggregateNotFoundError:
            raise dog_not_found(dog_id) from None
        return DogDetails(name=dog["name"], tricks=list(dog["tricks"]))

    @app.get("/counters", response_model=Counters, dependencies=[Depends(tokens.wait)])
    async def get_counters(state: State) -> Counters:
        """The numbers of dogs and tricks counted by the view.

        Given a position, first waits until the view has processed it.
        """
        view = state["view"]
        return Counters(
            dogs=await view.get_count(DOGS), tricks=await view.get_count(TRICKS)
        )

    @app.get("/status", response_model=Status)
    async def get_status(state: State) -> Status:
        """This process, and the role of its projection runner, if it runs one.

        Under several workers, each runs a runner: one leads (processes the
        events), the others stand by; any of them answers queries.
        """
        runner = cast("Mapping[str, object]", state).get("runner")
        if isinstance(runner, BaseProjectionRunner):
            statistics = await runner.statistics()
            return Status(
                pid=os.getpid(),
                role=statistics.role,
                owner=statistics.owner,
                position=statistics.position,
            )
        position = await state["view"].max_tracking_id(state["application"].name)
        return Status(pid=os.getpid(), role=None, owner=None, position=position)

    return app


def dog_not_found(dog_id: UUID) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, detail=f"Dog {dog_id} not found")
