"""Stopping a command cleanly at the first SIGINT or SIGTERM, and at once at
the second."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["stopped_by_signals"]

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def stopped_by_signals(
    first: Callable[[signal.Signals], None], main_task: asyncio.Task[Any] | None
) -> Iterator[list[str]]:
    """Call ``first`` at the first SIGINT or SIGTERM; cancel ``main_task`` at
    each later one. Gives the names of the signals received."""
    loop = asyncio.get_running_loop()
    received: list[str] = []

    def on_signal(signum: signal.Signals) -> None:
        received.append(signum.name)
        if len(received) == 1:
            first(signum)
        elif main_task is not None:
            # The user will not wait for a clean stop.
            logger.warning("%s received again: cancelling", signum.name)
            main_task.cancel()

    handled = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        # Not on Windows' event loops: Ctrl-C raises KeyboardInterrupt there.
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, on_signal, signum)
            handled.append(signum)
    try:
        yield received
    finally:
        for signum in handled:
            loop.remove_signal_handler(signum)
