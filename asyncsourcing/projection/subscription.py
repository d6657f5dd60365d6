"""An application's domain events with their tracking, as an async iterator."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
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
    TrackingRecorder,
)

__all__ = ["ApplicationSubscription", "Subscriber", "decode_notification"]


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


class Subscriber:
    """A runner's subscription to its application: one at a time, from the
    position recorded in its view.

    Each subscription is entered as a context manager on an
    :class:`~contextlib.AsyncExitStack` of its own, which :meth:`unsubscribe`
    closes: subscribing and unsubscribing happen in different calls, often
    in different tasks (the runner subscribes in ``start()`` and follows in
    its own task), so no ``async with`` block can span the lifetime.
    """

    def __init__(
        self,
        app: Application[Any],
        tracking_recorder: TrackingRecorder,
        topics: Sequence[str],
        on_caught_up: Callable[[int], Awaitable[float | None]],
    ) -> None:
        self._app = app
        self._tracking_recorder = tracking_recorder
        self._topics = tuple(topics)
        self._on_caught_up = on_caught_up
        self._exit_stack: AsyncExitStack | None = None
        self._is_stopped = False
        self.current: ApplicationSubscription[Any] | None = None
        """The subscription being entered or followed, or None."""

    async def subscribe(self) -> int | None:
        """End the current subscription, and subscribe after the position
        recorded in the view, which is returned."""
        await self.unsubscribe()
        position = await self._tracking_recorder.max_tracking_id(self._app.name)
        subscription = ApplicationSubscription(
            self._app, gt=position, topics=self._topics
        )
        subscription.subscription.on_caught_up = self._on_caught_up
        # Current while it is entered too, so that stop() reaches it.
        self.current = subscription
        exit_stack = AsyncExitStack()
        try:
            await exit_stack.enter_async_context(subscription)
        except BaseException:
            self.current = None  # Entering failed: nothing to exit.
            raise
        self._exit_stack = exit_stack
        if self._is_stopped:
            subscription.stop()
        return position

    async def unsubscribe(self) -> None:
        """Exit the current subscription, if any, whatever it raises:
        there is nothing left to read from it."""
        exit_stack, self._exit_stack = self._exit_stack, None
        self.current = None
        if exit_stack is not None:
            with contextlib.suppress(Exception):
                await exit_stack.aclose()

    def stop(self) -> None:
        """End the iteration of the current subscription and of any later one."""
        self._is_stopped = True
        if self.current is not None:
            self.current.stop()


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
