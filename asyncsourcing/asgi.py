"""Projections and views for the lifetime of an ASGI app (Starlette, FastAPI).

Two lifespans, for the two ways of deploying a web service with projections:

* :func:`projection_lifespan` runs a projection in the web process: it enters
  a runner at startup and closes it at shutdown;
* :func:`view_lifespan` is for a web process whose projection runs in another
  process (``asyncsourcing run``): it opens only the view, to read it and to
  wait on it, and the application, for commands.

Each yields its *lifespan state*, a :class:`~typing.TypedDict`
(:class:`ProjectionState`, :class:`ViewState`), as Starlette's lifespan
protocol has it: the server gives each request a shallow copy of it
(``request.scope["state"]``). Nothing is put in ``app.state``.

Commands return the position of their last event
(``recording.notification.id``); a query that was given one awaits
:func:`wait_for_position` before it reads the view: read-your-writes.
:mod:`asyncsourcing.fastapi` turns this into FastAPI dependencies.
Nothing here imports a web framework.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Generic, TypeAlias, TypedDict, TypeVar, cast, overload
from uuid import UUID

from asyncsourcing.application import Application
from asyncsourcing.persistence import InfrastructureFactory, TrackingRecorder
from asyncsourcing.projection import (
    BaseProjectionRunner,
    EventSourcedProjectionRunner,
    Projection,
    ProjectionRunner,
)
from asyncsourcing.utils import Environment

__all__ = [
    "Lifespan",
    "PositionNotReachedError",
    "ProjectionState",
    "ViewState",
    "projection_lifespan",
    "view_lifespan",
    "wait_for_position",
]

TApplication = TypeVar("TApplication", bound=Application[Any])
TView = TypeVar("TView", bound=TrackingRecorder)
TState = TypeVar("TState")

Lifespan: TypeAlias = Callable[[Any], AbstractAsyncContextManager[TState]]
"""A lifespan that yields a state of type ``TState``, for any app."""


class ViewState(TypedDict, Generic[TApplication, TView]):
    """The lifespan state of :func:`view_lifespan`: what requests can use."""

    application: TApplication
    """The application whose events the view projects, for commands."""
    view: TView
    """The view (a tracking recorder) to read and to wait on."""


class ProjectionState(ViewState[TApplication, TView]):
    """The lifespan state of :func:`projection_lifespan`.

    A :class:`ViewState` whose application is the runner's (``runner.app``)
    and whose view is the runner's, plus the runner itself.
    """

    runner: BaseProjectionRunner[TApplication]
    """The running projection runner (``is_running``, ``statistics()``)."""


@overload
def projection_lifespan(
    make_runner: Callable[[], ProjectionRunner[TApplication, TView]],
) -> Lifespan[ProjectionState[TApplication, TView]]: ...


@overload
def projection_lifespan(
    make_runner: Callable[[], EventSourcedProjectionRunner[TApplication, Any]],
) -> Lifespan[ProjectionState[TApplication, TrackingRecorder]]: ...


def projection_lifespan(
    make_runner: Callable[[], BaseProjectionRunner[Any]],
) -> Lifespan[ProjectionState[Any, Any]]:
    """A lifespan that runs a projection runner while the app serves.

    ``FastAPI(lifespan=projection_lifespan(make_runner))`` or
    ``Starlette(lifespan=...)``. At startup, constructs a runner with
    ``make_runner()`` and enters it (it subscribes and starts processing),
    then yields the :class:`ProjectionState`: the runner, its application
    (``runner.app``) and its view (``runner.view`` of a
    :class:`~asyncsourcing.projection.ProjectionRunner`, the projection's
    recorder for an
    :class:`~asyncsourcing.projection.EventSourcedProjectionRunner`).

    At shutdown, closes the runner: it finishes the event in hand, stops its
    task and closes its connections; an error that stopped the projection is
    raised then, so that it is not lost. A closed runner cannot start again,
    hence the factory: each start of the app gets a runner of its own.

    :raises TypeError: at startup, if the runner is neither kind.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: object) -> AsyncIterator[ProjectionState[Any, Any]]:
        async with make_runner() as runner:
            yield ProjectionState(
                application=runner.app, view=_view_of(runner), runner=runner
            )

    return lifespan


def _view_of(runner: BaseProjectionRunner[Any]) -> TrackingRecorder:
    """The tracking recorder that ``runner`` records its positions in."""
    if isinstance(runner, ProjectionRunner):
        view: TrackingRecorder = runner.view
        return view
    if isinstance(runner, EventSourcedProjectionRunner):
        return cast("TrackingRecorder", runner.projection.recorder)
    msg = (
        f"{type(runner).__qualname__} is neither a ProjectionRunner nor an "
        "EventSourcedProjectionRunner: its view is unknown"
    )
    raise TypeError(msg)


def view_lifespan(
    *,
    application_class: type[TApplication],
    projection_class: type[Projection[TView]],
    view_class: type[TView],
    env: Mapping[str, str] | None = None,
) -> Lifespan[ViewState[TApplication, TView]]:
    """A lifespan for a web process whose projection runs in another process.

    Takes the arguments of the
    :class:`~asyncsourcing.projection.ProjectionRunner` that runs elsewhere
    (e.g. ``asyncsourcing run``), and processes nothing. At startup, opens
    the view as that runner does: with the infrastructure factory of the
    projection's environment (``os.environ`` updated with ``env``; variables
    prefixed with the projection's name win), creating its tables unless
    ``CREATE_TABLE`` is false, so that queries work before the runner first
    starts. Constructs the application too, for commands: it connects on
    first use only. Then yields the :class:`ViewState`.

    ``view.wait()`` is woken by the other process's commits: at once on
    PostgreSQL (LISTEN/NOTIFY), at the view's poll interval on SQLite. The
    in-memory backend cannot be shared between processes, so this lifespan
    is of no use with it.

    At shutdown, closes the application and the view's connections.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: object) -> AsyncIterator[ViewState[TApplication, TView]]:
        projection_env = Environment(
            projection_class.name, {**os.environ, **(env or {})}
        )
        factory: InfrastructureFactory[TView] = InfrastructureFactory.construct(
            projection_env
        )
        async with factory, application_class(env) as application:
            view = await factory.tracking_recorder(view_class)
            yield ViewState(application=application, view=view)

    return lifespan


class PositionNotReachedError(TimeoutError):
    """A view has not processed a position within the time given.

    :attr:`projection_stopped` tells why when it is known: True if the
    projection runner of the same process has stopped (its error is in the
    log), so the view will not get there; False if it may still.
    """

    def __init__(
        self,
        application_name: str,
        position: int,
        timeout: float,
        *,
        projection_stopped: bool = False,
    ) -> None:
        self.application_name = application_name
        self.position = position
        self.timeout = timeout
        self.projection_stopped = projection_stopped
        if projection_stopped:
            msg = (
                f"The projection of {application_name} has stopped; "
                f"the view cannot reach position {position}"
            )
        else:
            msg = (
                f"The view has not processed position {position} of "
                f"{application_name} within {timeout:g} s; try again later"
            )
        super().__init__(msg)


async def wait_for_position(
    state: ViewState[Any, Any],
    position: int | None,
    timeout: float,
    *,
    originator_id: UUID | str | None = None,
) -> None:
    """Return once the view of ``state`` has processed ``position``.

    ``state`` is the lifespan state of either lifespan. Returns at once when
    ``position`` is None or already processed; otherwise waits, woken by the
    commit that records it. For a partitioned projection, ``originator_id``
    (the aggregate written) waits only for that aggregate's partition (see
    :mod:`asyncsourcing.projection.partitioned`).

    :raises PositionNotReachedError: after ``timeout`` seconds; at once if
        the state's runner (:class:`ProjectionState`) has stopped.
    """
    if position is None:
        return
    view: TrackingRecorder = state["view"]
    application_name: str = state["application"].name
    runner = cast("Mapping[str, object]", state).get("runner")
    if isinstance(runner, BaseProjectionRunner) and not runner.is_running:
        if await view.has_tracking_id(application_name, position):
            return
        raise PositionNotReachedError(
            application_name, position, timeout, projection_stopped=True
        )
    try:
        if originator_id is None:
            await view.wait(application_name, position, timeout=timeout)
        else:
            await view.wait(
                application_name, position, timeout=timeout, originator_id=originator_id
            )
    except TimeoutError:
        stopped = isinstance(runner, BaseProjectionRunner) and not runner.is_running
        raise PositionNotReachedError(
            application_name, position, timeout, projection_stopped=stopped
        ) from None
