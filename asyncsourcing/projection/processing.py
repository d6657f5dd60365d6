"""Processing an application's events into a projection, each exactly once."""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from eventsourcing.domain import DomainEventProtocol

from asyncsourcing.application import Application
from asyncsourcing.leases import FencedError, Lease
from asyncsourcing.persistence import (
    Notification,
    PartitionTracking,
    PersistenceError,
    Tracking,
    TrackingBatch,
    TrackingRecorder,
)
from asyncsourcing.policies import ErrorHandler, ErrorPolicy, Park, Retry, Skip, Stop
from asyncsourcing.projection.batches import bisect_batch, process_events
from asyncsourcing.projection.projections import EventSourcedProjection, Projection
from asyncsourcing.projection.reconnection import CONNECTION_ERRORS
from asyncsourcing.projection.subscription import (
    ApplicationSubscription,
    decode_notification,
)
from asyncsourcing.projection.versioning import RunnerVersion
from asyncsourcing.statistics import RunnerCounters

__all__ = ["NOT_THE_EVENTS", "Processor", "RunnerSettings", "StopRequestedError"]

# The runner's messages, whichever of its modules logs them.
logger = logging.getLogger("asyncsourcing.projection.runners")

NOT_THE_EVENTS = (*CONNECTION_ERRORS, FencedError)
"""Errors that no error policy applies to: the event is not at fault."""


class StopRequestedError(Exception):
    """The runner was stopped while an event waited to be retried."""


class RunnerSettings(Protocol):
    """What a runner's parts read of it, at each use: the runner's public
    attributes, which may be changed on a running runner."""

    @property
    def error_policy(self) -> ErrorPolicy: ...

    @property
    def max_batch_size(self) -> int: ...

    @property
    def filtered_tracking_interval(self) -> float: ...


class Processor:
    """Processes notifications into a projection, under the runner's policy.

    Each view transaction checks the lease that ``fence()`` gives (the
    runner's, or its partition's; None: no fencing) and tells which events
    another runner of the projection has processed meanwhile: those are
    left alone. ``record_skipped`` records a tracking with no update of the
    view, ``rolled_back`` is told that a view transaction rolled back, and
    ``sleep`` waits out a retry's delay (True if the runner was stopped
    meanwhile). With ``partition``, the events are that partition's, and
    their positions are recorded as its own (:class:`PartitionTracking`).
    """

    def __init__(
        self,
        settings: RunnerSettings,
        app: Application[Any],
        projection: Projection[Any] | EventSourcedProjection[Any],
        tracking_recorder: TrackingRecorder,
        fence: Callable[[], Lease | None],
        version: RunnerVersion,
        counters: RunnerCounters,
        *,
        record_skipped: Callable[[Tracking], Awaitable[None]],
        rolled_back: Callable[[], None],
        sleep: Callable[[float], Awaitable[bool]],
        partition: int | None = None,
    ) -> None:
        self._settings = settings
        self._app = app
        self._projection = projection
        self._tracking_recorder = tracking_recorder
        self._fence = fence
        self._partition = partition
        self._version = version
        self._counters = counters
        self._record_skipped = record_skipped
        self._rolled_back = rolled_back
        self._sleep = sleep

    async def follow(self, subscription: ApplicationSubscription[Any]) -> None:
        """Process what ``subscription`` yields until it ends: what it has
        already read in batches of up to ``max_batch_size``, live events one
        at a time."""
        notifications = subscription.subscription
        async for notification in notifications:
            more = notifications.take_ready(self._settings.max_batch_size - 1)
            await self.process_batch([notification, *more])

    async def process_batch(self, batch: Sequence[Notification]) -> None:
        """Process ``batch`` in one transaction; if that fails, split it to
        process the failing event alone (:func:`.batches.bisect_batch`).
        Replays and live events are never in one transaction."""
        for run in self._version.split(batch):
            if len(run) == 1:
                await self._process_one(run[0])
            else:
                await bisect_batch(run, self._try_batch, self._process_one)

    def view_transaction(self) -> AbstractAsyncContextManager[TrackingBatch] | None:
        """The transaction to process events in, or None: the view's own.

        It checks the runner's lease (fencing), and locks the application's
        tracking before anything else, so that runners of one projection
        take their locks in one order; it tells which events another runner
        has processed meanwhile.
        """
        if self._partition is None:
            return self._tracking_recorder.batch_transaction(
                self._app.name, fence=self._fence()
            )
        return self._tracking_recorder.batch_transaction(
            self._app.name, fence=self._fence(), partition=self._partition
        )

    async def _try_batch(self, batch: Sequence[Notification]) -> bool:
        """Process ``batch`` by ``process_events()`` in a batch transaction;
        False if that failed and rolled back.

        Where the backend has none (in memory), a failed batch could not be
        rolled back: the events are processed one at a time (True then).
        """
        transaction = self.view_transaction()
        if transaction is None:
            for notification in batch:
                await self._process_one(notification)
            return True
        processed = 0
        try:
            async with transaction as locked:
                todo = self._not_processed(batch, locked.position)
                if todo:
                    events = [(self._decode(n), self._tracking(n)) for n in todo]
                    with await self._version.context(todo):
                        await process_events(self._projection, events)
                    processed = len(todo)
        except BaseException as error:
            self._rolled_back()
            # Only the events' own errors are worth finding the event for.
            if isinstance(error, NOT_THE_EVENTS) or not isinstance(error, Exception):
                raise
            logger.debug("Batch of %d events failed; splitting it", len(batch))
            return False
        self._counters.processed_up_to(batch[-1].id, processed)
        return True

    def _not_processed(
        self, batch: Sequence[Notification], position: int | None
    ) -> Sequence[Notification]:
        """The events of ``batch`` after ``position``, which another runner of
        the projection may have recorded since ours read the events."""
        if position is None or batch[0].id > position:
            return batch
        logger.info(
            "Projection %r of application %r: notifications up to %d were "
            "processed by another runner",
            self._projection.name,
            self._app.name,
            position,
        )
        return [n for n in batch if n.id > position]

    async def _process_one(self, notification: Notification) -> bool:
        """Process one event under the error policy; True if it had an error."""
        tracking = self._tracking(notification)
        handler = ErrorHandler(
            self._settings.error_policy, asyncio.get_running_loop().time
        )
        while True:
            try:
                processed = await self._alone(
                    notification,
                    lambda: self._projection.process_event(
                        self._decode(notification), tracking
                    ),
                )
            except NOT_THE_EVENTS:
                raise
            except Exception as error:
                if await self._is_processed_elsewhere(notification):
                    return handler.failures > 0
                self._counters.error(error)
                match handler.failed():
                    case Retry(delay=delay):
                        self._counters.retried()
                        logger.warning(
                            "Projection %r of application %r failed on "
                            "notification %d (topic %r), attempt %d: %r; "
                            "retrying in %.2fs",
                            self._projection.name,
                            self._app.name,
                            notification.id,
                            notification.topic,
                            handler.failures,
                            error,
                            delay,
                        )
                        if await self._sleep(delay):
                            raise StopRequestedError from error
                        continue
                    case Skip():
                        await self._skip(notification, tracking, error)
                    case Park():
                        await self._park(notification, tracking, error)
                    case Stop():
                        raise
                return True
            else:
                self._counters.processed_up_to(notification.id, int(processed))
                return handler.failures > 0

    async def _alone(
        self, notification: Notification, work: Callable[[], Awaitable[Any]]
    ) -> bool:
        """Do ``work`` for ``notification`` in a view transaction of the
        runner, unless another runner has processed it (False then)."""
        transaction = self.view_transaction()
        if transaction is None:
            await work()
            return True
        try:
            async with transaction as locked:
                if not self._not_processed([notification], locked.position):
                    return False
                with await self._version.context([notification]):
                    await work()
        except BaseException:
            self._rolled_back()
            raise
        return True

    async def _is_processed_elsewhere(self, notification: Notification) -> bool:
        """Whether the view records ``notification`` as processed, by another
        runner (after an error that may be its tracking conflict)."""
        try:
            position = await self._recorded_position()
        except PersistenceError:
            return False
        if position is None or position < notification.id:
            return False
        logger.info(
            "Projection %r of application %r: notification %d was processed "
            "by another runner",
            self._projection.name,
            self._app.name,
            notification.id,
        )
        self._counters.advanced_to(position)
        return True

    async def _recorded_position(self) -> int | None:
        """The position recorded for the events processed here."""
        recorder = self._tracking_recorder
        if self._partition is None:
            return await recorder.max_tracking_id(self._app.name)
        positions = await recorder.partition_positions(self._app.name)
        return positions.get(self._partition)

    def _decode(self, notification: Notification) -> DomainEventProtocol[Any]:
        return decode_notification(self._app.mapper, self._app.name, notification)

    def _tracking(self, notification: Notification) -> Tracking:
        if self._partition is None:
            return Tracking(self._app.name, notification.id)
        return PartitionTracking(self._app.name, notification.id, self._partition)

    async def _skip(
        self, notification: Notification, tracking: Tracking, error: Exception
    ) -> None:
        if await self._alone(notification, lambda: self._record_skipped(tracking)):
            self._counters.skipped(notification.id)
            self._log_set_aside("skipped", notification, error)

    async def _park(
        self, notification: Notification, tracking: Tracking, error: Exception
    ) -> None:
        error_text = "".join(traceback.format_exception(error)).rstrip()
        if await self._alone(
            notification,
            lambda: self._tracking_recorder.park(
                tracking, notification.topic, notification.state, error_text
            ),
        ):
            self._counters.parked(notification.id)
            self._log_set_aside("parked", notification, error)

    def _log_set_aside(
        self, how: str, notification: Notification, error: Exception
    ) -> None:
        logger.error(
            "Projection %r of application %r %s notification %d (topic %r) "
            "after an error: %r",
            self._projection.name,
            self._app.name,
            how,
            notification.id,
            notification.topic,
            error,
            exc_info=error,
        )
