"""Recording a runner's position past the events its topics filter out."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager

from asyncsourcing.persistence import IntegrityError, Tracking, TrackingBatch

__all__ = ["FilteredPositions"]


class FilteredPositions:
    """Records the position up to which a subscription has read, past events
    that the projection's topics filter out; at most once every
    ``interval()`` seconds, and only forward.

    So the runner's ``wait()`` for such an event returns, other runners'
    views wake up, and a new subscription starts after them, without one
    write per event. ``transaction()`` is the runner's view transaction (or
    None: the view's own), ``record_skipped`` records a tracking with no
    update of the view, and ``rolled_back`` is told that a transaction
    rolled back.
    """

    def __init__(
        self,
        application_name: str,
        interval: Callable[[], float],
        transaction: Callable[[], AbstractAsyncContextManager[TrackingBatch] | None],
        record_skipped: Callable[[Tracking], Awaitable[None]],
        rolled_back: Callable[[], None],
    ) -> None:
        self._application_name = application_name
        self._interval = interval
        self._transaction = transaction
        self._record_skipped = record_skipped
        self._rolled_back = rolled_back
        self._recorded = 0
        self._recorded_at = float("-inf")

    async def caught_up(self, position: int) -> float | None:
        """Record ``position``: the events after the last one processed, up
        to it, are all filtered out.

        The subscription calls it from the task that processes the events,
        once that task has processed everything read: each event of the
        topics up to ``position`` is committed. It records in a view
        transaction of the runner (fenced by its lease) unless the view is
        there already; within the interval of the last recording, it returns
        the delay after which to be called again instead.
        """
        if position <= self._recorded:
            return None
        loop = asyncio.get_running_loop()
        delay = self._recorded_at + self._interval() - loop.time()
        if delay > 0:
            return delay
        tracking = Tracking(self._application_name, position)
        transaction = self._transaction()
        try:
            if transaction is None:
                await self._record_skipped(tracking)
            else:
                async with transaction as locked:
                    if locked.position is None or locked.position < position:
                        await self._record_skipped(tracking)
        except IntegrityError:
            # Recorded meanwhile by another runner (without leadership).
            self._rolled_back()
        except BaseException:
            self._rolled_back()
            raise
        self._recorded = position
        self._recorded_at = loop.time()
        return None
