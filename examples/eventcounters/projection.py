"""The projection that counts an application's events into an EventCountersView."""

from __future__ import annotations

from functools import singledispatchmethod

from asyncsourcing.domain import Aggregate
from asyncsourcing.persistence import Tracking
from asyncsourcing.projection import Projection
from asyncsourcing.utils import get_topic
from examples.eventcounters.views import EventCountersView


class SpannerThrown(Aggregate.Event):
    """An event the projection cannot process: it shows how errors surface."""


class SpannerThrownError(Exception):
    pass


class EventCountersProjection(Projection[EventCountersView]):
    name = "eventcounters"
    topics: tuple[str, ...] = (
        get_topic(Aggregate.Created),
        get_topic(Aggregate.Event),
        get_topic(SpannerThrown),
    )

    @singledispatchmethod
    async def process_event(self, _: Aggregate.Event, tracking: Tracking) -> None:
        await self.view.insert_tracking(tracking)

    @process_event.register
    async def aggregate_created(self, _: Aggregate.Created, tracking: Tracking) -> None:
        await self.view.incr_created_event_counter(tracking)

    @process_event.register
    async def aggregate_event(self, _: Aggregate.Event, tracking: Tracking) -> None:
        await self.view.incr_subsequent_event_counter(tracking)

    @process_event.register
    async def spanner_thrown(self, _: SpannerThrown, __: Tracking) -> None:
        msg = "This is a deliberate bug"
        raise SpannerThrownError(msg)
