"""Running a projection while an ASGI application serves (Starlette, FastAPI).

::

    app = FastAPI(lifespan=projection_lifespan(lambda: ProjectionRunner(...)))

Commands return the position of their events (``recording.notification.id``);
queries accept it and ``await app.state.runner.projection.view.wait(...)``
before reading: read-your-writes. Nothing here imports a web framework.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from asyncsourcing.projection import BaseProjectionRunner

__all__ = ["HasState", "projection_lifespan"]


class HasState(Protocol):
    """An application with a ``state`` namespace, as Starlette's has."""

    @property
    def state(self) -> Any: ...


def projection_lifespan(
    make_runner: Callable[[], BaseProjectionRunner[Any]],
) -> Callable[[HasState], AbstractAsyncContextManager[None]]:
    """A lifespan that runs a projection runner while the application serves.

    At startup, constructs a runner with ``make_runner()`` and enters it
    (subscribes and starts processing); while the application serves, the
    runner is ``app.state.runner`` and its event-sourced application
    ``app.state.application``. At shutdown, removes both from ``app.state``
    (so late requests fail clearly) and closes the runner: it finishes the
    event in hand, stops its task and closes its connections. A closed
    runner cannot start again, hence the factory: each start gets a runner
    of its own. An error that stopped the projection is raised at shutdown.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: HasState) -> AsyncIterator[None]:
        async with make_runner() as runner:
            app.state.runner = runner
            app.state.application = runner.app
            try:
                yield
            finally:
                del app.state.runner
                del app.state.application

    return lifespan
