"""Helpers for tests that run several projection runners at once."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import TypeVar

__all__ = ["running"]

R = TypeVar("R", bound=AbstractAsyncContextManager[object])


@contextlib.asynccontextmanager
async def running(*runners: R) -> AsyncIterator[tuple[R, ...]]:
    """Enter every runner, in order; leave them in reverse order."""
    async with contextlib.AsyncExitStack() as stack:
        for runner in runners:
            await stack.enter_async_context(runner)
        yield runners
