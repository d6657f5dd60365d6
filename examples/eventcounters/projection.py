"""The projection that counts an application's events into an EventCountersView."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from functools import singledispatchmethod
from typing import Any

from asyncsourcing.domain import Aggregate
from asyncsourcing.persistence import Tracking
from asyncsourcing.projection import Projection
from asyncsourcing.utils import get_topic
from examples.eventcounters.views import BulkEventCountersView, EventCountersView


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


class BulkEventCountersProjection(EventCountersProjection):
    """The event counters, counting a catch-up batch with one view command.

    :meth:`process_events` counts the batch's created and subsequent events
    and makes one call of :meth:`BulkEventCountersView.add_to_counters`, with
    the tracking of the batch's last event: one transaction, one counters
    statement, one tracking row, for up to the runner's ``max_batch_size``
    events. Events that come alone (live ones, those of a failing batch being
    split, all of them in memory) go to the inherited :meth:`process_event`,
    which has the same effect one event at a time.

    Its :attr:`name` is its own, so its tracking and counters (its tables,
    its ``BULKEVENTCOUNTERS_*`` settings) are not those of
    :class:`EventCountersProjection`: the two can count the same application
    side by side, and switching from one to the other starts from scratch
    rather than from the other's position.
    """

    name = "bulkeventcounters"

    @property
    def view(self) -> BulkEventCountersView:
        """The view, which must have the bulk command."""
        view = super().view
        if not isinstance(view, BulkEventCountersView):
            msg = f"{type(view).__name__} is not a BulkEventCountersView"
            raise TypeError(msg)
        return view

    async def process_events(self, events: Sequence[tuple[Any, Tracking]]) -> None:
        created = subsequent = 0
        # The events counted by class, then each class sorted once, in the
        # order of process_event()'s dispatch: the most derived class first
        # (Created and SpannerThrown are Events).
        classes = Counter(type(domain_event) for domain_event, _ in events)
        for cls, count in classes.items():
            if issubclass(cls, SpannerThrown):
                # Raised before anything is written, as process_event() does;
                # the runner then splits the batch to process it alone.
                msg = "This is a deliberate bug"
                raise SpannerThrownError(msg)
            if issubclass(cls, Aggregate.Created):
                created += count
            elif issubclass(cls, Aggregate.Event):
                subsequent += count
        _, last_tracking = events[-1]
        await self.view.add_to_counters(created, subsequent, last_tracking)
