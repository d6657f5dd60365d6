"""Event-sourced projections that several test modules run."""

from __future__ import annotations

from functools import singledispatchmethod
from typing import Any
from uuid import UUID

from asyncsourcing.application import ProcessingEvent
from asyncsourcing.domain import Aggregate
from asyncsourcing.projection import EventSourcedProjection
from asyncsourcing.utils import get_topic
from examples.eventcounters.projection import SpannerThrown, SpannerThrownError

__all__ = ["Copies", "Counted"]


class Counted(EventSourcedProjection[UUID]):
    """Records a copy of every created aggregate."""

    topics = (get_topic(Aggregate.Created),)

    @singledispatchmethod
    async def policy(
        self, domain_event: Any, processing_event: ProcessingEvent[UUID]
    ) -> None:
        pass

    @policy.register
    async def created(
        self, _: Aggregate.Created, processing_event: ProcessingEvent[UUID]
    ) -> None:
        processing_event.collect_events(Aggregate())


class Copies(Counted):
    """Copies created aggregates, as :class:`Counted`; fails on spanners."""

    topics = (get_topic(Aggregate.Created), get_topic(SpannerThrown))

    @singledispatchmethod
    async def policy(
        self, domain_event: Any, processing_event: ProcessingEvent[UUID]
    ) -> None:
        await super().policy(domain_event, processing_event)

    @policy.register
    async def spanner(
        self, _: SpannerThrown, processing_event: ProcessingEvent[UUID]
    ) -> None:
        processing_event.collect_events(Aggregate())
        msg = "This is a deliberate bug"
        raise SpannerThrownError(msg)
