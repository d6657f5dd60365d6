"""Two ways to count dogs and tricks: into a view, and into counter aggregates."""

from __future__ import annotations

from functools import singledispatchmethod
from typing import Any
from uuid import UUID

from asyncsourcing.application import AggregateNotFoundError, ProcessingEvent
from asyncsourcing.persistence import Tracking
from asyncsourcing.projection import EventSourcedProjection, Projection
from asyncsourcing.utils import get_topic
from examples.dogschool.domain import Counter, Dog
from examples.dogschool.views import CountersView

DOGS = "dogs"
TRICKS = "tricks"


class DogCountersProjection(Projection[CountersView]):
    """Counts registered dogs and added tricks into a :class:`CountersView`."""

    name = "dogcounters"
    topics = (get_topic(Dog.Registered), get_topic(Dog.TrickAdded))

    @singledispatchmethod
    async def process_event(self, _: Any, tracking: Tracking) -> None:
        await self.view.insert_tracking(tracking)

    @process_event.register
    async def dog_registered(self, _: Dog.Registered, tracking: Tracking) -> None:
        await self.view.incr_count(DOGS, tracking)

    @process_event.register
    async def trick_added(self, _: Dog.TrickAdded, tracking: Tracking) -> None:
        await self.view.incr_count(TRICKS, tracking)


class DogCounters(EventSourcedProjection[UUID]):
    """Counts dogs and tricks as :class:`Counter` aggregates of its own.

    The counters' new events are recorded atomically with the tracking of
    the dog school's event that caused them.
    """

    topics = (get_topic(Dog.Registered), get_topic(Dog.TrickAdded))

    @singledispatchmethod
    async def policy(
        self, domain_event: Any, processing_event: ProcessingEvent[UUID]
    ) -> None:
        """Events of other kinds change nothing; only their tracking is recorded."""

    @policy.register
    async def dog_registered(
        self, _: Dog.Registered, processing_event: ProcessingEvent[UUID]
    ) -> None:
        await self._increment(DOGS, processing_event)

    @policy.register
    async def trick_added(
        self, _: Dog.TrickAdded, processing_event: ProcessingEvent[UUID]
    ) -> None:
        await self._increment(TRICKS, processing_event)

    async def _increment(
        self, name: str, processing_event: ProcessingEvent[UUID]
    ) -> None:
        try:
            counter: Counter = await self.repository.get(Counter.create_id(name))
        except AggregateNotFoundError:
            counter = Counter(name)
        counter.increment()
        processing_event.collect_events(counter)

    async def get_count(self, name: str) -> int:
        try:
            counter: Counter = await self.repository.get(Counter.create_id(name))
        except AggregateNotFoundError:
            return 0
        return counter.count
