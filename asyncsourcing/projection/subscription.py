"""An application's domain events with their tracking, as an async iterator."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Any, Self

from eventsourcing.domain import DomainEventProtocol, TAggregateID
from eventsourcing.persistence import MapperDeserialisationError
from eventsourcing.utils import TopicError

from asyncsourcing.application import Application
from asyncsourcing.persistence import (
    Mapper,
    Notification,
    Subscription,
    Tracking,
)

__all__ = ["ApplicationSubscription", "decode_notification"]


class ApplicationSubscription(
    AsyncIterator[tuple[DomainEventProtocol[TAggregateID], Tracking]]
):
    """An application's domain events after ``gt``, each with its tracking.

    Catches up with what is recorded, then waits for new events. ``topics``
    filters the events in the database. Use with ``async with``.
    """

    def __init__(
        self,
        app: Application[TAggregateID],
        gt: int | None = None,
        topics: Sequence[str] = (),
    ) -> None:
        self.name = app.name
        self.recorder = app.recorder
        self.mapper: Mapper[TAggregateID] = app.mapper
        self.subscription: Subscription[Any] = self.recorder.subscribe(
            gt=gt, topics=topics
        )

    def stop(self) -> None:
        """End the iteration."""
        self.subscription.stop()

    async def __aenter__(self) -> Self:
        await self.subscription.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        await self.subscription.__aexit__(exc_type, exc_val, exc_tb)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> tuple[DomainEventProtocol[TAggregateID], Tracking]:
        notification = await self.subscription.__anext__()
        return self.to_domain_event(notification), Tracking(self.name, notification.id)

    def take_ready(
        self, limit: int
    ) -> list[tuple[DomainEventProtocol[TAggregateID], Tracking]]:
        """Up to ``limit`` events that are already read, without waiting."""
        return [
            (self.to_domain_event(n), Tracking(self.name, n.id))
            for n in self.subscription.take_ready(limit)
        ]

    def to_domain_event(
        self, notification: Notification
    ) -> DomainEventProtocol[TAggregateID]:
        """The domain event of ``notification``; errors name the notification."""
        return decode_notification(self.mapper, self.name, notification)


def decode_notification(
    mapper: Mapper[TAggregateID], application_name: str, notification: Notification
) -> DomainEventProtocol[TAggregateID]:
    """The domain event of ``notification``; errors name the notification."""
    try:
        return mapper.to_domain_event(notification)
    except TopicError as error:
        msg = (
            f"Cannot resolve topic {notification.topic!r} of notification "
            f"{notification.id} from application '{application_name}': {error}"
        )
        raise TopicError(msg) from error
    except MapperDeserialisationError as error:
        msg = (
            f"Cannot decode notification {notification.id} (topic "
            f"{notification.topic!r}) from application '{application_name}': {error}"
        )
        raise MapperDeserialisationError(msg) from error
