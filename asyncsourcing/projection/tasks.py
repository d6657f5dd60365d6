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
    # asyncio.timeout(), not wait_for(): on Python 3.11, wait_for() can
    # swallow a cancellation that comes as the event is set.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(delay):
            await stopping.wait()
    return stopping.is_set()
