"""Projections: follow an application's sequence into a materialised view.

A :class:`ProjectionRunner` subscribes to an application from the position
its view last recorded, and awaits the projection's ``process_event()`` for
each event, in a task of its own. Usage::

    async with ProjectionRunner(
        application_class=DogSchool,
        projection_class=CountersProjection,
        view_class=POPOCounters,
    ) as runner:
        recordings = await runner.app.save(dog)
        view = runner.projection.view
        await view.wait(runner.app.name, recordings[-1].notification.id)

or, in a script, ``asyncio.run(runner.run_forever())``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Any, Generic, Self, TypeVar, cast

from eventsourcing.application import ProcessingEvent
from eventsourcing.domain import DomainEventProtocol, TAggregateID
from eventsourcing.persistence import MapperDeserialisationError
from eventsourcing.utils import Environment, EnvType, TopicError

from asyncsourcing.application import Application
from asyncsourcing.persistence import (
    InfrastructureFactory,
    Mapper,
    Notification,
    ProcessRecorder,
    Subscription,
    Tracking,
    TrackingRecorder,
    WaitInterruptedError,
)

__all__ = [
    "ApplicationSubscription",
    "BaseProjectionRunner",
    "EventSourcedProjection",
    "EventSourcedProjectionRunner",
    "Projection",
    "ProjectionRunner",
]

logger = logging.getLogger(__name__)

TView = TypeVar("TView", bound=TrackingRecorder)
TApplication = TypeVar("TApplication", bound=Application[Any])


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
        try:
            return self.mapper.to_domain_event(notification)
        except TopicError as error:
            msg = (
                f"Cannot resolve topic {notification.topic!r} of notification "
                f"{notification.id} from application '{self.name}': {error}"
            )
            raise TopicError(msg) from error
        except MapperDeserialisationError as error:
            msg = (
                f"Cannot decode notification {notification.id} (topic "
                f"{notification.topic!r}) from application '{self.name}': {error}"
            )
            raise MapperDeserialisationError(msg) from error


class Projection(ABC, Generic[TView]):
    """How the events of an application update a materialised view.

    Subclasses implement ``async def process_event(domain_event, tracking)``,
    typically with :func:`functools.singledispatchmethod`, calling command
    methods of :attr:`view` that record ``tracking`` atomically with their update.
    """

    name: str = ""
    """Picks prefixed environment variables and names the view's tables;
    defaults to the class name."""

    topics: tuple[str, ...] = ()
    """Topics of the events to process, filtered in the database; all when empty."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = cls.__name__

    def __init__(self, view: TView) -> None:
        self._view = view

    @property
    def view(self) -> TView:
        """The materialised view."""
        return self._view

    @abstractmethod
    async def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        """Update the view with ``domain_event``, recording ``tracking`` with it."""


class EventSourcedProjection(Application[TAggregateID], ABC):
    """An application that processes another application's events into new events.

    Its recorder is a process recorder: the events collected by :meth:`policy`
    are recorded atomically with the tracking of the processed event.
    """

    topics: Sequence[str] = ()

    recorder: ProcessRecorder

    def construct_recorder(self) -> ProcessRecorder:
        return self.factory.construct_process_recorder()

    async def process_event(
        self, domain_event: DomainEventProtocol[TAggregateID], tracking: Tracking
    ) -> list[Any]:
        """Run :meth:`policy` and record its new events with ``tracking``."""
        processing_event = ProcessingEvent[TAggregateID](tracking=tracking)
        await self.policy(domain_event, processing_event)
        recordings = await self._record(processing_event)
        await self._take_snapshots(processing_event)
        self._notify(recordings)
        return recordings

    @abstractmethod
    async def policy(
        self,
        domain_event: DomainEventProtocol[TAggregateID],
        processing_event: ProcessingEvent[TAggregateID],
    ) -> None:
        """Collect new events on ``processing_event`` (``collect_events()``),
        never with :meth:`save`, so they are recorded with the tracking."""


class BaseProjectionRunner(Generic[TApplication]):
    """Runs a projection of an application in a task of its own.

    While catching up, events already read are processed in batches of up
    to :attr:`max_batch_size` inside one view transaction (when the view's
    backend offers :meth:`~TrackingRecorder.batch_transaction`); live events
    are processed one at a time.

    Plain asyncio tasks, not an anyio task group: the runner is entered and
    exited in one place (``async with``) and awaited in another
    (:meth:`run_forever`, perhaps from another task), which a task group's
    nested cancel scopes do not allow.
    """

    max_batch_size = 500

    def __init__(
        self,
        *,
        projection: Projection[Any] | EventSourcedProjection[Any],
        application_class: type[TApplication],
        tracking_recorder: TrackingRecorder,
        topics: Sequence[str],
        env: EnvType | None = None,
    ) -> None:
        self.app: TApplication = application_class(env)
        self.app_name = self.app.name
        self._projection = projection
        self._tracking_recorder = tracking_recorder
        self._topics = tuple(topics)
        self._stopping = asyncio.Event()
        self._has_called_stop = False
        self._subscription: ApplicationSubscription[Any] | None = None
        self._task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        self._is_started = False
        self._is_closed = False

    @staticmethod
    def _construct_env(name: str, env: EnvType | None = None) -> Environment:
        """The projection's configuration: the process environment, then ``env``."""
        _env: dict[str, str] = dict(os.environ)
        if env is not None:
            _env.update(env)
        return Environment(name, _env)

    @property
    def is_running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Subscribe from the view's position and start processing; idempotent."""
        if self._is_started:
            return
        if self._is_closed:
            msg = "The runner has been closed"
            raise RuntimeError(msg)
        self._is_started = True
        await self._prepare()
        position = await self._tracking_recorder.max_tracking_id(self.app_name)
        subscription = ApplicationSubscription(
            self.app, gt=position, topics=self._topics
        )
        await subscription.__aenter__()
        self._subscription = subscription
        self._task = asyncio.create_task(
            self._process_events(subscription), name=f"projection {self.app_name}"
        )

    async def _prepare(self) -> None:
        """Make the view ready (create its tables) before reading its position."""

    async def _process_events(self, subscription: ApplicationSubscription[Any]) -> None:
        try:
            async for item in subscription:
                batch = [item, *subscription.take_ready(self.max_batch_size - 1)]
                await self._process_batch(batch)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            logger.exception(
                "Projection %r of application %r stopped by an error",
                type(self._projection).__qualname__,
                self.app_name,
            )
            self._error = error
        finally:
            self._stopping.set()

    async def _process_batch(self, batch: list[tuple[Any, Tracking]]) -> None:
        """Process ``batch`` in one transaction, or one event at a time.

        If the batch fails, its transaction rolls back and the events are
        processed again one at a time: the good prefix is committed and the
        error is raised at the failing event, as if there were no batch.
        """
        transaction = None
        if len(batch) > 1:
            transaction = self._tracking_recorder.batch_transaction()
        if transaction is not None:
            try:
                async with transaction:
                    for domain_event, tracking in batch:
                        await self._projection.process_event(domain_event, tracking)
            except Exception:
                logger.debug("Batch of %d events failed; one at a time", len(batch))
            else:
                return
        for domain_event, tracking in batch:
            await self._projection.process_event(domain_event, tracking)

    def stop(self) -> None:
        """Stop processing after the event in hand; :meth:`run_forever` returns."""
        self._has_called_stop = True
        self._stopping.set()
        if self._subscription is not None:
            self._subscription.stop()

    async def run_forever(self, timeout: float | None = None) -> None:
        """Process until ``timeout``, :meth:`stop` or an error, which is re-raised.

        After :meth:`stop`, it returns once the event in hand is processed.
        A runner that was not started is started here and closed on return,
        so ``asyncio.run(runner.run_forever())`` releases everything.
        """
        owns_lifetime = not self._is_started
        try:
            await self.start()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout)
            if self._stopping.is_set() and self._task is not None:
                await asyncio.shield(self._task)
            self._raise_error()
        finally:
            if owns_lifetime:
                await self.aclose()

    async def wait(self, notification_id: int | None, timeout: float = 1.0) -> None:
        """Return once the view has processed ``notification_id``.

        Raises the runner's error if processing stopped with one, and
        :class:`TimeoutError` after ``timeout`` seconds.
        """
        try:
            await self._tracking_recorder.wait(
                self.app_name, notification_id, timeout, interrupt=self._stopping
            )
        except WaitInterruptedError:
            self._raise_error()
            if self._has_called_stop:
                return
            raise

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    async def aclose(self) -> None:
        """Stop, wait for the event in hand, and close what the runner holds."""
        if self._is_closed:
            return
        self._is_closed = True
        self.stop()
        try:
            if self._task is not None:
                try:
                    await asyncio.shield(self._task)
                except asyncio.CancelledError:
                    # Our caller is being cancelled: don't leave the task behind.
                    self._task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await self._task
                    raise
        finally:
            if self._subscription is not None:
                await self._subscription.__aexit__(None, None, None)
            await self.app.close()
            await self._close_projection()

    async def _close_projection(self) -> None:
        """Close the view's or the projection's connections."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        await self.aclose()
        if exc_val is None:
            self._raise_error()


class ProjectionRunner(
    BaseProjectionRunner[TApplication], Generic[TApplication, TView]
):
    """Runs a :class:`Projection` into a view of class ``view_class``.

    The view is constructed by the infrastructure factory of the projection's
    environment (variables prefixed with the projection's name win), the
    application by its own.
    """

    def __init__(
        self,
        *,
        application_class: type[TApplication],
        projection_class: type[Projection[TView]],
        view_class: type[TView],
        env: EnvType | None = None,
    ) -> None:
        self.factory: InfrastructureFactory[TView] = InfrastructureFactory.construct(
            self._construct_env(projection_class.name, env)
        )
        self.view: TView = self.factory.construct_tracking_recorder(view_class)
        self.projection: Projection[TView] = projection_class(view=self.view)
        super().__init__(
            projection=self.projection,
            application_class=application_class,
            tracking_recorder=self.view,
            topics=self.projection.topics,
            env=env,
        )

    async def _prepare(self) -> None:
        if self.factory.env_create_table():
            await self.view.create_table()

    async def _close_projection(self) -> None:
        await self.factory.close()


TEventSourcedProjection = TypeVar(
    "TEventSourcedProjection", bound=EventSourcedProjection[Any]
)


class EventSourcedProjectionRunner(
    BaseProjectionRunner[TApplication], Generic[TApplication, TEventSourcedProjection]
):
    """Runs an :class:`EventSourcedProjection` of an application.

    One event per transaction: the projection's repository may cache
    aggregates that a rolled-back batch would leave wrong.
    """

    max_batch_size = 1

    def __init__(
        self,
        *,
        application_class: type[TApplication],
        projection_class: type[TEventSourcedProjection],
        env: EnvType | None = None,
    ) -> None:
        self.projection: TEventSourcedProjection = projection_class(
            env=self._construct_env(projection_class.name, env)
        )
        super().__init__(
            projection=self.projection,
            application_class=application_class,
            tracking_recorder=cast("TrackingRecorder", self.projection.recorder),
            topics=self.projection.topics,
            env=env,
        )

    async def _close_projection(self) -> None:
        await self.projection.close()
