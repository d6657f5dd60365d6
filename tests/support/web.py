"""Serving the ASGI apps under test in the test's own event loop."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI

from asyncsourcing.testing.asgi import LifespanApp, running_lifespan

__all__ = ["served"]


@contextlib.asynccontextmanager
async def served(
    app: FastAPI,
) -> AsyncIterator[tuple[httpx.AsyncClient, LifespanApp]]:
    """A client of ``app``, and the app as served (with its lifespan state)."""
    async with running_lifespan(app) as lifespan_app:
        transport = httpx.ASGITransport(app=lifespan_app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://test"
        ) as client:
            yield client, lifespan_app
