"""The event store: domain events in, stored events out, and back."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Generic
from uuid import UUID

from eventsourcing.domain import DomainEventProtocol, TAggregateID

from asyncsourcing.persistence import (
    AggregateRecorder,
    Mapper,
    Notification,
    Recording,
)

__all__ = ["EventStore"]


class EventStore(Generic[TAggregateID]):
    """Maps domain events to stored events and records them with a recorder."""

    def __init__(self, mapper: Mapper[TAggregateID], recorder: AggregateRecorder):
        self.mapper: Mapper[TAggregateID] = mapper
        self.recorder = recorder

    async def put(
        self, domain_events: Sequence[DomainEventProtocol[TAggregateID]], **kwargs: Any
    ) -> list[Recording[TAggregateID]]:
        """Record ``domain_events`` atomically.

        Returns a recording per event when the recorder gives notification
        ids (application recorders do; snapshot stores do not).
        """
        stored_events = [self.mapper.to_stored_event(e) for e in domain_events]
        notification_ids = await self.recorder.insert_events(stored_events, **kwargs)
        if not notification_ids:
            return []
        return [
            Recording(
                domain_event,
                Notification(
                    id=notification_id,
                    originator_id=s.originator_id,
                    originator_version=s.originator_version,
                    topic=s.topic,
                    state=s.state,
                ),
            )
            for domain_event, s, notification_id in zip(
                domain_events, stored_events, notification_ids, strict=True
            )
        ]

    async def get(
        self,
        originator_id: TAggregateID | UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> list[DomainEventProtocol[TAggregateID]]:
        """The domain events of one aggregate sequence."""
        stored_events = await self.recorder.select_events(
            originator_id, gt=gt, lte=lte, desc=desc, limit=limit
        )
        return [self.mapper.to_domain_event(s) for s in stored_events]
