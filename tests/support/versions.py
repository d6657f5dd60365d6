"""Version 2 of the event counters projection, for the tests of the
``versions``, ``rebuild`` and ``reset`` commands (``--projection
tests.support.versions:EventCountersV2``)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from asyncsourcing.domain import DomainEventProtocol
from asyncsourcing.persistence import Tracking
from examples.eventcounters.projection import EventCountersProjection

__all__ = ["EventCountersV2", "SlowEventCountersV2"]


class EventCountersV2(EventCountersProjection):
    """The event counters, as the code of version 2 declares them."""

    name = "eventcounters"  # A subclass is named after its class otherwise.
    version = 2


class SlowEventCountersV2(EventCountersV2):
    """Version 2, half a second a batch: a rebuild that a signal can stop
    halfway (catching up, the runner processes up to 500 events a batch)."""

    name = "eventcounters"
    version = 2
    batch_delay = 0.5

    async def process_events(
        self, events: Sequence[tuple[DomainEventProtocol[Any], Tracking]]
    ) -> None:
        await asyncio.sleep(self.batch_delay)
        await super().process_events(events)
