"""Serve an ASGI app in tests, lifespan state included.

httpx's :class:`~httpx.ASGITransport` sends requests to an app but does not
run its lifespan, and so gives requests no lifespan state.
:func:`running_lifespan` runs the lifespan as a server does (the ASGI
lifespan protocol: startup on entry, shutdown on exit) and yields
:class:`LifespanApp`, the app as served: each request gets a shallow copy of
the lifespan state. :func:`lifespan_client` adds an httpx client::

    async with lifespan_client(create_app()) as client:
        response = await client.get("/counters")

No web framework is imported; :func:`lifespan_client` imports httpx when
called.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any, TypeAlias, cast

if TYPE_CHECKING:
    import httpx

__all__ = ["ASGIApp", "LifespanApp", "lifespan_client", "running_lifespan"]

Scope: TypeAlias = MutableMapping[str, Any]
Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]
ASGIApp: TypeAlias = Callable[[Scope, Receive, Send], Awaitable[None]]
"""An ASGI 3 application, such as a Starlette or FastAPI app."""


class LifespanApp:
    """An ASGI app whose lifespan is running: it serves with :attr:`state`.

    Requests (``http`` and ``websocket`` scopes) get a shallow copy of the
    lifespan state in ``scope["state"]``, as from a server. Once the
    lifespan has ended, requests raise :class:`RuntimeError`.
    """

    def __init__(self, app: ASGIApp, state: dict[str, Any]) -> None:
        self.app = app
        self.state = state
        """The lifespan state, as the app's lifespan left it."""
        self.is_serving = True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            if not self.is_serving:
                msg = "The app's lifespan has ended: it serves no more requests"
                raise RuntimeError(msg)
            scope = {**scope, "state": dict(self.state)}
        await self.app(scope, receive, send)


@contextlib.asynccontextmanager
async def running_lifespan(app: ASGIApp) -> AsyncIterator[LifespanApp]:
    """Run the lifespan of ``app`` meanwhile; yield the app as served.

    Sends ``lifespan.startup`` and returns once the app has started, then
    sends ``lifespan.shutdown`` on exit and waits for the app's shutdown.

    :raises Exception: the app's own exception if its startup or shutdown
        fails with one (Starlette re-raises it, e.g. the error that stopped
        a projection); else :class:`RuntimeError` with the app's message.
    """
    state: dict[str, Any] = {}
    scope: Scope = {
        "type": "lifespan",
        "asgi": {"version": "3.0", "spec_version": "2.0"},
        "state": state,
    }
    to_app: asyncio.Queue[Message] = asyncio.Queue()
    from_app: asyncio.Queue[Message] = asyncio.Queue()
    task = asyncio.create_task(
        _call(app, scope, to_app.get, from_app.put), name="lifespan"
    )
    try:
        await to_app.put({"type": "lifespan.startup"})
        await _completed(task, from_app, "startup")
        served = LifespanApp(app, state)
        try:
            yield served
        finally:
            served.is_serving = False
            await to_app.put({"type": "lifespan.shutdown"})
            await _completed(task, from_app, "shutdown")
            await task
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _call(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    await app(scope, receive, send)


async def _completed(
    task: asyncio.Task[None], from_app: asyncio.Queue[Message], phase: str
) -> None:
    """Wait for the app's answer to ``lifespan.<phase>``; raise if it failed."""
    answer = asyncio.ensure_future(from_app.get())
    done, _ = await asyncio.wait({task, answer}, return_when=asyncio.FIRST_COMPLETED)
    message: Message | None = None
    if answer in done:
        message = answer.result()
        if message["type"] == f"lifespan.{phase}.complete":
            return
        # Failed: Starlette sends ".failed", then re-raises the error.
        await asyncio.wait({task}, timeout=1.0)
    else:
        answer.cancel()
    if task.done() and not task.cancelled():
        error = task.exception()
        if error is not None:
            raise error
    reason = message.get("message") if message is not None else None
    msg = f"The app's lifespan {phase} failed: {reason or 'no answer from the app'}"
    raise RuntimeError(msg)


@contextlib.asynccontextmanager
async def lifespan_client(
    app: ASGIApp, base_url: str = "http://test"
) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client of ``app``, whose lifespan runs meanwhile.

    :func:`running_lifespan` with an :class:`httpx.AsyncClient` on an
    :class:`httpx.ASGITransport`. Needs httpx.
    """
    import httpx

    async with running_lifespan(app) as served:
        transport = httpx.ASGITransport(app=cast("Any", served))
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
            yield client
