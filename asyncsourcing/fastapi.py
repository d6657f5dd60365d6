"""FastAPI dependencies for read-your-writes (the ``fastapi`` extra).

Install with ``pip install 'asyncsourcing[fastapi]'``. On the lifespans of
:mod:`asyncsourcing.asgi` (re-exported here):

* :func:`lifespan_state` is a dependency that returns the lifespan state.
  Type it once with :data:`~typing.Annotated`::

      State = Annotated[ProjectionState[DogSchool, Counters], Depends(lifespan_state)]

  and a handler's ``state: State`` is typed: ``state["view"]`` is a
  ``Counters``. (Starlette's own ``request: Request[ProjectionState[...]]``
  works in plain Starlette 0.52 and later, but FastAPI rejects it.)
* :class:`PositionTokens` carries positions over HTTP: a command sets the
  position of its last event in a response header, and the dependency
  ``Depends(tokens.wait)`` of a query reads it back, from the same request
  header or a query parameter, and waits until the view has processed it.
"""

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Header, HTTPException, Query, Request, Response, status

from asyncsourcing.asgi import (
    PositionNotReachedError,
    ProjectionState,
    ViewState,
    projection_lifespan,
    view_lifespan,
    wait_for_position,
)

# No ``from __future__ import annotations`` here: FastAPI reads the
# annotations of PositionTokens' dependency, whose parameter names are only
# known when the dependency is made (they are closure variables).

__all__ = [
    "DEFAULT_HEADER",
    "DEFAULT_QUERY",
    "DEFAULT_TIMEOUT",
    "PositionTokens",
    "ProjectionState",
    "ViewState",
    "lifespan_state",
    "projection_lifespan",
    "view_lifespan",
]

DEFAULT_HEADER = "X-Position"
"""The default header of position tokens, in responses and in requests."""

DEFAULT_QUERY = "after"
"""The default query parameter of position tokens."""

DEFAULT_TIMEOUT = 5.0
"""The default longest wait for a position, in seconds."""

_NO_STATE = (
    "This request has no asyncsourcing lifespan state: create the app with "
    "lifespan=projection_lifespan(...) or view_lifespan(...), and serve it "
    "with a server that supports lifespan state (uvicorn, hypercorn; in "
    "tests, asyncsourcing.testing.asgi.running_lifespan), while its lifespan "
    "runs"
)


def lifespan_state(request: Request) -> ViewState[Any, Any]:
    """The lifespan state of the request: a dependency.

    Returns the request's copy of the state yielded by
    :func:`~asyncsourcing.asgi.projection_lifespan` (a
    :class:`~asyncsourcing.asgi.ProjectionState`) or
    :func:`~asyncsourcing.asgi.view_lifespan` (a
    :class:`~asyncsourcing.asgi.ViewState`).

    :raises RuntimeError: if there is none (the lifespan is not running, or
        the server does not support lifespan state); the app answers 500.
    """
    state = request.scope.get("state")
    if not state or "view" not in state or "application" not in state:
        raise RuntimeError(_NO_STATE)
    result: ViewState[Any, Any] = state
    return result


class PositionTokens:
    """Position tokens over HTTP, for read-your-writes.

    A position token is the position of an event in the application
    sequence (its notification id), in decimal. A command endpoint sets the
    position of its last event in the response header ``header`` with
    :meth:`set`. A query endpoint that reads the view depends on
    :attr:`wait`: if the request carries a position, in the same header or
    in the query parameter ``query`` (``?after=<position>``), the
    dependency waits until the view has processed it, then the endpoint
    reads. With both, it waits for the larger. The dependency returns the
    position waited for, or None.

    Errors of the dependency:

    * 422 for a token that is not a non-negative integer (FastAPI's
      validation error, whose ``loc`` names the header or the parameter);
    * 504 if the view has not processed the position within ``timeout``
      seconds (the message says which position of which application);
    * 503 at once if the projection runner of the app
      (:func:`~asyncsourcing.asgi.projection_lifespan`) has stopped;
    * 500 (:class:`RuntimeError`) if the app's lifespan is not running.

    Browsers let scripts read the response header from another origin only
    if CORS exposes it (``CORSMiddleware(expose_headers=[header])``).

    :raises ValueError: for an empty name or a timeout that is not positive.
    """

    def __init__(
        self,
        *,
        header: str = DEFAULT_HEADER,
        query: str = DEFAULT_QUERY,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if not header or not query:
            msg = f"header and query must be names, not {header!r} and {query!r}"
            raise ValueError(msg)
        if not timeout > 0:
            msg = f"timeout must be a positive number of seconds, not {timeout!r}"
            raise ValueError(msg)
        self.header = header
        self.query = query
        self.timeout = timeout
        self.wait = self._make_dependency()
        """The dependency: ``Depends(tokens.wait)``."""

    def set(self, response: Response, position: int) -> None:
        """Set ``position`` in the ``header`` of ``response``.

        ``response`` is the :class:`~fastapi.Response` parameter of the
        endpoint (FastAPI merges its headers into the endpoint's response).
        """
        response.headers[self.header] = str(position)

    def _make_dependency(self) -> Callable[..., Awaitable[int | None]]:
        tokens = self
        description = "Wait until the view has processed this position"

        async def wait_for_token(
            request: Request,
            from_header: Annotated[
                int | None, Header(alias=self.header, ge=0, description=description)
            ] = None,
            from_query: Annotated[
                int | None, Query(alias=self.query, ge=0, description=description)
            ] = None,
        ) -> int | None:
            given = [p for p in (from_header, from_query) if p is not None]
            position = max(given, default=None)
            if position is None:
                return None
            try:
                await wait_for_position(
                    lifespan_state(request), position, tokens.timeout
                )
            except PositionNotReachedError as error:
                code = (
                    status.HTTP_503_SERVICE_UNAVAILABLE
                    if error.projection_stopped
                    else status.HTTP_504_GATEWAY_TIMEOUT
                )
                raise HTTPException(code, detail=str(error)) from None
            return position

        return wait_for_token

    def __repr__(self) -> str:
        return (
            f"PositionTokens(header={self.header!r}, query={self.query!r}, "
            f"timeout={self.timeout!r})"
        )
