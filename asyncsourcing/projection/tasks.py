"""What both kinds of runner loop do with their tasks and their stop event."""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["finish", "stopped_within"]


async def finish(task: asyncio.Task[None] | None) -> None:
    """Wait for ``task`` to end; if the caller is cancelled meanwhile, cancel
    ``task`` too and wait for that, so that nothing is left running."""
    if task is None:
        return
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise


async def stopped_within(stopping: asyncio.Event, delay: float) -> bool:
    """Sleep ``delay`` seconds, or less if ``stopping`` is set: True then."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), delay)
    return stopping.is_set()
