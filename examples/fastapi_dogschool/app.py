"""The FastAPI app of the dog school: :func:`create_app`.

Endpoints:

* ``POST /dogs`` ``{"name": ...}`` -> 201 ``{"id": ..., "position": ...}``
* ``POST /dogs/{id}/tricks`` ``{"trick": ...}`` -> ``{"position": ...}``
  (404 for an unknown dog)
* ``GET /dogs/{id}`` -> ``{"name": ..., "tricks": [...]}`` (404 for an unknown
  dog). Read from the event store, so it is always up to date: no ``after``.
* ``GET /counters?after=<position>`` -> ``{"dogs": n, "tricks": m}``. With
  ``after``, first waits until the counters view has processed that position
  (read-your-writes); 504 if it has not within ``WAIT_TIMEOUT`` seconds, 503
  if the projection has stopped.

The :class:`~asyncsourcing.projection.ProjectionRunner` (the dog school, the
:class:`~examples.dogschool.projections.DogCountersProjection` and the view
class of the chosen backend) is started by the app's lifespan and closed at
shutdown; while the app serves, it is ``app.state.runner`` and its dog school
``app.state.application``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Any, TypeAlias
from uuid import UUID

from fastapi import Depends, FastAPI, HTTPException, Query, Request, status
from pydantic import BaseModel, Field

from asyncsourcing.application import AggregateNotFoundError
from asyncsourcing.asgi import projection_lifespan
from asyncsourcing.persistence import TrackingRecorder
from asyncsourcing.projection import BaseProjectionRunner, ProjectionRunner
from asyncsourcing.utils import Environment, resolve_topic
from examples.dogschool.__main__ import DEFAULTS, VIEW_CLASSES
from examples.dogschool.application import DogSchool
from examples.dogschool.projections import DOGS, TRICKS, DogCountersProjection
from examples.dogschool.views import CountersView

__all__ = [
    "DEFAULT_WAIT_TIMEOUT",
    "WAIT_TIMEOUT",
    "create_app",
    "wait_for_position",
]

WAIT_TIMEOUT = "WAIT_TIMEOUT"
"""Environment variable: how long a query waits for its position, in seconds."""

DEFAULT_WAIT_TIMEOUT = 5.0

DogSchoolRunner: TypeAlias = ProjectionRunner[DogSchool, CountersView]


# The HTTP face of view.wait().


async def wait_for_position(
    runner: BaseProjectionRunner[Any],
    view: TrackingRecorder,
    position: int | None,
    timeout: float,
) -> None:
    """Return once ``view`` has processed ``position`` of the runner's application.

    Returns at once when ``position`` is None. Raises :class:`HTTPException`
    503 if it times out after ``timeout`` seconds because the projection has
    stopped (the error is in the server's log), and 504 if it times out while
    the projection runs (the position is not processed yet, or does not exist).
    """
    if position is None:
        return
    try:
        await view.wait(runner.app_name, position, timeout=timeout)
    except TimeoutError:
        if not runner.is_running:
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                detail=(
                    f"The projection of {runner.app_name} has stopped; "
                    f"the view cannot reach position {position}"
                ),
            ) from None
        raise HTTPException(
            status.HTTP_504_GATEWAY_TIMEOUT,
            detail=(
                f"The view has not processed position {position} of "
                f"{runner.app_name} within {timeout:g} s; try again later"
            ),
        ) from None


# The dog school's app.


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


def get_runner(request: Request) -> DogSchoolRunner:
    """The running projection runner (dependency)."""
    runner: DogSchoolRunner | None = getattr(request.app.state, "runner", None)
    if runner is None:
        msg = "The app is not running: its lifespan has not started, or has ended"
        raise RuntimeError(msg)
    return runner


def get_wait_timeout(request: Request) -> float:
    """The app's wait timeout in seconds (dependency)."""
    timeout: float = request.app.state.wait_timeout
    return timeout


Runner = Annotated[DogSchoolRunner, Depends(get_runner)]
WaitTimeout = Annotated[float, Depends(get_wait_timeout)]


def configure(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The dog school's defaults, overridden by ``os.environ``, then by ``env``."""
    return {**DEFAULTS, **os.environ, **(env or {})}


def view_class_for(env: Mapping[str, str]) -> type[CountersView]:
    """The counters view class of the backend that the projection will use.

    Honours ``DOGCOUNTERS_PERSISTENCE_MODULE`` over ``PERSISTENCE_MODULE``,
    as the projection's infrastructure factory does.
    """
    projection_env = Environment(DogCountersProjection.name, dict(env))
    module = projection_env.get("PERSISTENCE_MODULE", "asyncsourcing.popo")
    try:
        topic = VIEW_CLASSES[module]
    except KeyError:
        msg = f"No counters view for PERSISTENCE_MODULE={module!r}: {[*VIEW_CLASSES]}"
        raise ValueError(msg) from None
    view_class: type[CountersView] = resolve_topic(topic)
    return view_class


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


def create_app(env: dict[str, str] | None = None) -> FastAPI:
    """The dog school service, configured by ``os.environ`` updated with ``env``.

    Backend settings are those of the dog school example (default: SQLite file
    ``dogschool.sqlite``; ``PERSISTENCE_MODULE`` picks the backend and its
    counters view class); ``WAIT_TIMEOUT`` (seconds, default 5) bounds the
    wait of ``GET /counters?after=``. Raises :class:`ValueError` for an
    unknown backend or a bad timeout. Does no IO: the runner is constructed
    and started by the app's lifespan, so the app can be started again after
    a shutdown.
    """
    config = configure(env)
    view_class = view_class_for(config)
    wait_timeout = parse_wait_timeout(config)

    def make_runner() -> DogSchoolRunner:
        return ProjectionRunner(
            application_class=DogSchool,
            projection_class=DogCountersProjection,
            view_class=view_class,
            env=config,
        )

    app = FastAPI(title="Dog school", lifespan=projection_lifespan(make_runner))
    app.state.wait_timeout = wait_timeout

    @app.post("/dogs", status_code=status.HTTP_201_CREATED, response_model=Registered)
    async def register_dog(body: RegisterDog, runner: Runner) -> Registered:
        """Register a dog; returns its id and the position of its event."""
        dog_id, position = await runner.app.register_dog(body.name)
        return Registered(id=dog_id, position=position)

    @app.post("/dogs/{dog_id}/tricks", response_model=Recorded)
    async def add_trick(dog_id: UUID, body: AddTrick, runner: Runner) -> Recorded:
        """Teach a dog a trick; returns the position of the event."""
        try:
            position = await runner.app.add_trick(dog_id, body.trick)
        except AggregateNotFoundError:
            raise dog_not_found(dog_id) from None
        return Recorded(position=position)

    @app.get("/dogs/{dog_id}", response_model=DogDetails)
    async def get_dog(dog_id: UUID, runner: Runner) -> DogDetails:
        """A dog's name and tricks, from its events (always up to date)."""
        try:
            dog = await runner.app.get_dog(dog_id)
        except AggregateNotFoundError:
            raise dog_not_found(dog_id) from None
        return DogDetails(name=dog["name"], tricks=list(dog["tricks"]))

    @app.get("/counters", response_model=Counters)
    async def get_counters(
        runner: Runner,
        wait_timeout: WaitTimeout,
        after: Annotated[
            int | None,
            Query(ge=0, description="Wait until the view has processed this position"),
        ] = None,
    ) -> Counters:
        """The numbers of dogs and tricks counted by the view.

        With ``after``, first waits until the view has processed that position.
        """
        view = runner.projection.view
        await wait_for_position(runner, view, after, wait_timeout)
        return Counters(
            dogs=await view.get_count(DOGS), tricks=await view.get_count(TRICKS)
        )

    return app


def dog_not_found(dog_id: UUID) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, detail=f"Dog {dog_id} not found")
