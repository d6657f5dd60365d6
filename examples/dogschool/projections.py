"""Ways to project the dog school: counts into a view, counts into counter
aggregates, and a row per dog updated once per batch."""

from __future__ import annotations

from collections.abc import Sequence
from functools import singledispatchmethod
from typing import Any
from uuid import UUID

from asyncsourcing.application import AggregateNotFoundError, ProcessingEvent
from asyncsourcing.persistence import Tracking
from asyncsourcing.projection import EventSourcedProjection, Projection
from asyncsourcing.projection.batches import group_by_originator
from asyncsourcing.utils import get_topic
from examples.dogschool.domain import Counter, Dog
from examples.dogschool.views import CountersView, DogsView, DogUpdate

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


class BulkDogsProjection(Projection[DogsView]):
    """Keeps a row per dog (name and tricks) and the counts of dogs and
    tricks in a :class:`DogsView`, updating them once per batch.

    :meth:`process_events` groups the batch by dog
    (:func:`~asyncsourcing.projection.batches.group_by_originator`), folds
    each dog's events into one :class:`DogUpdate` and the batch into counts,
    and makes one :meth:`DogsView.update_dogs` call with the tracking of the
    batch's last event: in SQL, one query loads the batch's dogs, one
    statement writes them, one adds the counts. An event alone goes the same
    way, as a batch of one, so the two paths cannot differ.

    Its counts equal those of :class:`DogCountersProjection`; its
    :attr:`name` is its own, so are its tables and tracking.
    """

    name = "bulkdogs"
    topics = (get_topic(Dog.Registered), get_topic(Dog.TrickAdded))

    async def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        await self.process_events([(domain_event, tracking)])

    async def process_events(self, events: Sequence[tuple[Any, Tracking]]) -> None:
        updates: dict[UUID, DogUpdate] = {}
        counts = {DOGS: 0, TRICKS: 0}
        for dog_id, dog_events in group_by_originator(events).items():
            name: str | None = None
            tricks: list[str] = []
            for domain_event, _ in dog_events:
                if isinstance(domain_event, Dog.Registered):
                    name = domain_event.name
                    counts[DOGS] += 1
                elif isinstance(domain_event, Dog.TrickAdded):
                    tricks.append(domain_event.trick)
                    counts[TRICKS] += 1
            if name is not None or tricks:
                updates[dog_id] = DogUpdate(name, tuple(tricks))
        _, last_tracking = events[-1]
        await self.view.update_dogs(
            updates, {name: n for name, n in counts.items() if n}, last_tracking
        )


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
