"""Projection runners: a projection of an application, processed in a task."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, Generic, Self, TypeVar, cast

from eventsourcing.domain import DomainEventProtocol
from eventsourcing.utils import Environment, EnvType, strtobool

from asyncsourcing.application import Application
from asyncsourcing.leases import FencedError, Lease, LeaseSettings
from asyncsourcing.persistence import (
    InfrastructureFactory,
    IntegrityError,
    InterfaceError,
    Notification,
    OperationalError,
    PersistenceError,
    Tracking,
    TrackingBatch,
    TrackingRecorder,
    WaitInterruptedError,
)
from asyncsourcing.policies import (
    Backoff,
    ErrorPolicy,
    ErrorPolicyLike,
    OnError,
)
from asyncsourcing.projection.leadership import Leadership, Role
from asyncsourcing.projection.projections import (
    EventSourcedProjection,
    Projection,
    TView,
)
from asyncsourcing.projection.subscription import (
    ApplicationSubscription,
    decode_notification,
)
from asyncsourcing.statistics import RunnerCounters, RunnerStatistics

__all__ = [
    "BaseProjectionRunner",
    "EventSourcedProjectionRunner",
    "ProjectionRunner",
    "ProjectionStoppedError",
]

logger = logging.getLogger(__name__)

TApplication = TypeVar("TApplication", bound=Application[Any])


_CONNECTION_ERRORS = (OperationalError, InterfaceError)
"""Errors of the database, not of the event: reconnect or stop, never skip."""

_NOT_THE_EVENTS = (*_CONNECTION_ERRORS, FencedError)
"""Errors that no error policy applies to: the event is not at fault."""


class _StopRequestedError(Exception):
    """:meth:`BaseProjectionRunner.stop` was called while an event was retried."""


class ProjectionStoppedError(Exception):
    """The runner stopped by an error, which is this one's ``__cause__``.

    Raised by :meth:`BaseProjectionRunner.wait` to every waiter and every
    later call, and by :meth:`~BaseProjectionRunner.run_forever` once the
    error itself has been raised: a fresh one each time, since one exception
    raised in several tasks would have its traceback and context rewritten
    by each.
    """


class BaseProjectionRunner(Generic[TApplication]):
    """Runs a projection of an application in a task of its own.

    While catching up, events already read are processed in batches of up
    to :attr:`max_batch_size` inside one view transaction (when the view's
    backend offers :meth:`~TrackingRecorder.batch_transaction`); live events
    are processed one at a time. A failing batch is rolled back and replayed
    one event at a time; the runner's :attr:`error_policy` then applies to
    the failing event (see :class:`Projection`), and what follows it is
    batched again.

    After a database connection error, a runner whose policy reconnects
    resubscribes from the view's recorded position, backing off while the
    database is unreachable: nothing is lost, nothing processed twice.

    Plain asyncio tasks, not an anyio task group: the runner is entered and
    exited in one place (``async with``) and awaited in another
    (:meth:`run_forever`, perhaps from another task), which a task group's
    nested cancel scopes do not allow.
    """

    max_batch_size = 500

    filtered_tracking_interval = 0.1
    """Seconds at least between two recordings of a position past events
    that the projection's topics filter out: once caught up, the runner
    records the position it has read up to, so that :meth:`wait` for such
    an event returns, without one write per event."""

    def __init__(
        self,
        *,
        projection: Projection[Any] | EventSourcedProjection[Any],
        application_class: type[TApplication],
        tracking_recorder: TrackingRecorder,
        topics: Sequence[str],
        env: EnvType | None = None,
        error_policy: ErrorPolicyLike | None = None,
    ) -> None:
        self.error_policy: ErrorPolicy = ErrorPolicy.of(
            projection.error_policy if error_policy is None else error_policy
        )
        self.app: TApplication = application_class(env)
        self.app_name = self.app.name
        self._projection = projection
        self._projection_name = projection.name
        self._tracking_recorder = tracking_recorder
        self._topics = tuple(topics)
        self._stopping = asyncio.Event()
        self._has_called_stop = False
        self._subscription: ApplicationSubscription[Any] | None = None
        self._task: asyncio.Task[None] | None = None
        self._announcing: asyncio.Task[None] | None = None
        # The error that stopped the runner, kept; whether it has been raised
        # itself (to run_forever() or on exit), and whether anyone was told.
        self._error: BaseException | None = None
        self._error_raised = False
        self._error_told = False
        self._is_started = False
        self._is_closed = False
        self._counters = RunnerCounters()
        self._leadership = Leadership(
            tracking_recorder.leases,
            self.app_name,
            projection.name,
            self._lease_settings(self._construct_env(projection.name, env)),
        )
        # The failures in a row of reconnecting: (first failure's time, count).
        self._reconnect_streak: tuple[float, int] | None = None
        self._recovered_at = 0.0
        self._processed_at_recovery = 0
        # The last position recorded past filtered-out events, and when.
        self._filtered_recorded = 0
        self._filtered_recorded_at = float("-inf")

    @staticmethod
    def _with_defaults(
        env: EnvType | None, env_defaults: Mapping[str, str] | None
    ) -> EnvType | None:
        """``env`` with the ``env_defaults`` that the process environment lacks.

        Laid over the process environment (by :meth:`_construct_env` and by
        the application), it gives each variable name the precedence
        ``env`` > :data:`os.environ` > ``env_defaults``. Per name, as for the
        application's class attribute ``env``: a prefixed default
        (``EVENTCOUNTERS_X``) still wins over a plain ``X`` of the process
        environment.
        """
        if not env_defaults:
            return env
        merged = {k: v for k, v in env_defaults.items() if k not in os.environ}
        if env is not None:
            merged.update(env)
        return merged

    @staticmethod
    def _construct_env(name: str, env: EnvType | None = None) -> Environment:
        """The projection's configuration: the process environment, then ``env``."""
        _env: dict[str, str] = dict(os.environ)
        if env is not None:
            _env.update(env)
        return Environment(name, _env)

    @staticmethod
    def _lease_settings(env: Environment) -> LeaseSettings:
        """``LEADERSHIP``, ``LEASE_TTL`` and ``LEASE_FAST_TAKEOVER``."""
        defaults = LeaseSettings()
        values: dict[str, bool | float] = {}
        for name, field, parse in (
            ("LEADERSHIP", "enabled", strtobool),
            ("LEASE_TTL", "ttl", float),
            ("LEASE_FAST_TAKEOVER", "fast_takeover", strtobool),
        ):
            text = env.get(name)
            if text is None:
                continue
            try:
                values[field] = parse(text)
            except ValueError:
                msg = f"{name} must be {type(getattr(defaults, field)).__name__}, "
                raise ValueError(msg + f"got {text!r}") from None
        try:
            return LeaseSettings(**values)  # type: ignore[arg-type]
        except ValueError as error:
            raise ValueError(str(error)) from None

    @property
    def role(self) -> Role:
        """Leader (processes the events) or standby (waits to take over)."""
        return self._leadership.role

    @property
    def lease(self) -> Lease | None:
        """The lease this runner leads by, or None while it stands by.

        Also None when leadership is off (``LEADERSHIP=false``) or the
        view is in memory: then the runner leads without a lease.
        """
        return self._leadership.lease

    @property
    def is_running(self) -> bool:
        """Whether the runner's task is processing (or standing by)."""
        return self._task is not None and not self._task.done()

    @property
    def tracking_recorder(self) -> TrackingRecorder:
        """Where the projection's positions are recorded: the view of a
        :class:`ProjectionRunner`, the process recorder of the projection of
        an :class:`EventSourcedProjectionRunner`.

        Read-only; it answers :meth:`~TrackingRecorder.max_tracking_id` and
        its ``leases`` (None in memory) name the projection's runners.
        """
        return self._tracking_recorder

    @property
    def topics(self) -> tuple[str, ...]:
        """The topics of the events the projection processes; empty: all."""
        return self._topics

    @property
    def projection_name(self) -> str:
        """The projection's name: the prefix of its environment variables,
        and its name in leases and :class:`RunnerStatistics`."""
        return self._projection_name

    async def start(self) -> None:
        """Subscribe from the view's position and start processing; idempotent."""
        if self._is_started:
            return
        if self._is_closed:
            msg = "The runner has been closed"
            raise RuntimeError(msg)
        self._is_started = True
        await self._prepare()
        if await self._leadership.try_acquire():
            await self._resubscribe()
            self._counters.start(self._counters.position)
        else:
            position = await self._tracking_recorder.max_tracking_id(self.app_name)
            self._counters.start(position)
        self._task = asyncio.create_task(
            self._run(), name=f"projection {self.app_name}"
        )
        self._announcing = asyncio.create_task(
            self._leadership.announce(), name=f"presence {self.app_name}"
        )

    async def _prepare(self) -> None:
        """Make the view ready (create its tables) before reading its position."""

    async def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                if self._subscription is None and not await self._stand_by():
                    return
                if not await self._lead():
                    return
        except asyncio.CancelledError:
            raise
        except _StopRequestedError:
            logger.warning(
                "Projection %r of application %r stopped while retrying an event",
                self._projection_name,
                self.app_name,
            )
        except Exception as error:
            logger.exception(
                "Projection %r of application %r stopped by an error",
                type(self._projection).__qualname__,
                self.app_name,
            )
            self._counters.stopped_by(error)
            self._error = error
        finally:
            self._stopping.set()
            if self._announcing is not None:
                self._announcing.cancel()  # Stopped: neither leader nor standby.

    async def _stand_by(self) -> bool:
        """Wait to lead, then subscribe; False if stopped meanwhile."""
        while True:
            acquiring = asyncio.create_task(self._leadership.acquire())
            stopping = asyncio.create_task(self._stopping.wait())
            try:
                await asyncio.wait(
                    {acquiring, stopping}, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for task in (acquiring, stopping):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
            if self._stopping.is_set():
                return False
            try:
                acquiring.result()
                await self._resubscribe()
            except _CONNECTION_ERRORS as error:
                if not await self._reconnect(error, resubscribe=False):
                    return False
                continue
            return True

    async def _lead(self) -> bool:
        """Process while leading; True if the lease was lost (stand by then)."""
        keeping = asyncio.create_task(self._leadership.keep())
        following = asyncio.create_task(self._follow_reconnecting())
        try:
            await asyncio.wait(
                {keeping, following}, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            keeping.cancel()
            if not following.done():
                following.cancel()
            for task in (keeping, following):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if not following.cancelled() and not following.result():
            return False
        await self._unsubscribe()
        return True

    async def _follow_reconnecting(self) -> bool:
        """Process until stopped (False), or until fenced off (True)."""
        while True:
            subscription = self._subscription
            if subscription is None:  # pragma: no cover (set before)
                return False
            try:
                await self._follow(subscription)
            except FencedError as error:
                self._leadership.lost(str(error))
                return True
            except _CONNECTION_ERRORS as error:
                if not await self._reconnect(error):
                    return False
            else:
                return False

    async def _follow(self, subscription: ApplicationSubscription[Any]) -> None:
        notifications = subscription.subscription
        async for notification in notifications:
            batch = [notification, *notifications.take_ready(self.max_batch_size - 1)]
            await self._process_batch(batch)

    async def _process_batch(self, batch: Sequence[Notification]) -> None:
        """Process ``batch`` in one transaction, or one event at a time.

        If the batch fails, its transaction rolls back and the events are
        processed again one at a time: the good prefix is committed, the
        error policy applies to the failing event, and the rest is tried as
        a batch again (unless the policy stops the runner).
        """
        start = 0
        while start < len(batch):
            if len(batch) - start > 1 and await self._process_in_one_transaction(
                batch[start:]
            ):
                return
            for i in range(start, len(batch)):
                if await self._process_one(batch[i]):
                    start = i + 1  # The error is dealt with: batch the rest.
                    break
            else:
                return

    def _view_transaction(self) -> AbstractAsyncContextManager[TrackingBatch] | None:
        """The transaction to process events in, or None: the view's own.

        It checks the runner's lease (fencing), and locks the application's
        tracking before anything else, so that runners of one projection
        take their locks in one order; it tells which events another runner
        has processed meanwhile.
        """
        return self._tracking_recorder.batch_transaction(
            self.app_name, fence=self._leadership.lease
        )

    async def _process_in_one_transaction(self, batch: Sequence[Notification]) -> bool:
        """True if ``batch`` was processed in a batch transaction."""
        transaction = self._view_transaction()
        if transaction is None:
            return False
        processed = 0
        try:
            async with transaction as locked:
                for notification in self._not_processed(batch, locked.position):
                    await self._projection.process_event(
                        self._decode(notification), self._tracking(notification)
                    )
                    processed += 1
        except _NOT_THE_EVENTS:
            self._rolled_back()
            raise
        except Exception:
            self._rolled_back()
            logger.debug("Batch of %d events failed; one at a time", len(batch))
            return False
        except BaseException:
            self._rolled_back()
            raise
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
            self._projection_name,
            self.app_name,
            position,
        )
        return [n for n in batch if n.id > position]

    def _rolled_back(self) -> None:
        """Hook: a view transaction of the runner rolled back."""

    async def _process_one(self, notification: Notification) -> bool:
        """Process one event under the error policy; True if it had an error."""
        tracking = self._tracking(notification)
        policy = self.error_policy
        loop = asyncio.get_running_loop()
        failures = 0
        first_failure = 0.0
        while True:
            try:
                processed = await self._process_alone(notification, tracking)
            except _NOT_THE_EVENTS:
                raise
            except Exception as error:
                if await self._is_processed_elsewhere(notification):
                    return failures > 0
                self._counters.error(error)
                failures += 1
                action = policy.action
                if action is OnError.RETRY:
                    if failures == 1:
                        first_failure = loop.time()
                    delay = policy.backoff.delay(failures, loop.time() - first_failure)
                    if delay is not None:
                        self._counters.retries += 1
                        logger.warning(
                            "Projection %r of application %r failed on notification "
                            "%d (topic %r), attempt %d: %r; retrying in %.2fs",
                            self._projection_name,
                            self.app_name,
                            notification.id,
                            notification.topic,
                            failures,
                            error,
                            delay,
                        )
                        if await self._is_stopped_within(delay):
                            raise _StopRequestedError from error
                        continue
                    action = policy.then
                if action is OnError.SKIP:
                    await self._skip(notification, tracking, error)
                elif action is OnError.PARK:
                    await self._park(notification, tracking, error)
                else:
                    raise
                return True
            else:
                self._counters.processed_up_to(notification.id, int(processed))
                return failures > 0

    async def _process_alone(
        self, notification: Notification, tracking: Tracking
    ) -> bool:
        """Process one event in a transaction of its own; False if another
        runner has processed it."""
        return await self._alone(
            notification,
            lambda: self._projection.process_event(
                self._decode(notification), tracking
            ),
        )

    async def _alone(
        self, notification: Notification, work: Callable[[], Awaitable[Any]]
    ) -> bool:
        """Do ``work`` for ``notification`` in a view transaction of the
        runner, unless another runner has processed it (False then)."""
        transaction = self._view_transaction()
        if transaction is None:
            await work()
            return True
        try:
            async with transaction as locked:
                if not self._not_processed([notification], locked.position):
                    return False
                await work()
        except BaseException:
            self._rolled_back()
            raise
        return True

    async def _is_processed_elsewhere(self, notification: Notification) -> bool:
        """Whether the view records ``notification`` as processed, by another
        runner (after an error that may be its tracking conflict)."""
        try:
            position = await self._tracking_recorder.max_tracking_id(self.app_name)
        except PersistenceError:
            return False
        if position is None or position < notification.id:
            return False
        logger.info(
            "Projection %r of application %r: notification %d was processed "
            "by another runner",
            self._projection_name,
            self.app_name,
            notification.id,
        )
        self._counters.position = max(self._counters.position or 0, position)
        return True

    def _decode(self, notification: Notification) -> DomainEventProtocol[Any]:
        return decode_notification(self.app.mapper, self.app_name, notification)

    def _tracking(self, notification: Notification) -> Tracking:
        return Tracking(self.app_name, notification.id)

    async def _skip(
        self, notification: Notification, tracking: Tracking, error: Exception
    ) -> None:
        if not await self._alone(notification, lambda: self._record_skipped(tracking)):
            return
        self._counters.skipped += 1
        self._counters.processed_up_to(notification.id)
        logger.error(
            "Projection %r of application %r skipped notification %d (topic %r) "
            "after an error: %r",
            self._projection_name,
            self.app_name,
            notification.id,
            notification.topic,
            error,
            exc_info=error,
        )

    async def _record_skipped(self, tracking: Tracking) -> None:
        """Record ``tracking`` with no update of the view."""
        await self._tracking_recorder.insert_tracking(tracking)

    async def _park(
        self, notification: Notification, tracking: Tracking, error: Exception
    ) -> None:
        error_text = "".join(traceback.format_exception(error)).rstrip()
        if not await self._alone(
            notification,
            lambda: self._tracking_recorder.park(
                tracking, notification.topic, notification.state, error_text
            ),
        ):
            return
        self._counters.parked += 1
        self._counters.processed_up_to(notification.id)
        logger.error(
            "Projection %r of application %r parked notification %d (topic %r) "
            "after an error: %r",
            self._projection_name,
            self.app_name,
            notification.id,
            notification.topic,
            error,
            exc_info=error,
        )

    async def _reconnect(self, error: Exception, *, resubscribe: bool = True) -> bool:
        """Resubscribe after a connection error; False if stopped meanwhile.

        With ``resubscribe=False`` (a standby), only check that the
        database answers again.

        Raises an :class:`OperationalError` when the policy does not
        reconnect, or gives up.
        """
        self._counters.error(error)
        backoff = self.error_policy.reconnect_backoff
        if backoff is None:
            msg = (
                f"Projection {self._projection_name!r} of application "
                f"{self.app_name!r} stopped by a database error "
                f"({type(error).__name__}: {error}); error_policy='retry' (or "
                "an ErrorPolicy with reconnect) would reconnect and carry on"
            )
            raise OperationalError(msg) from error
        loop = asyncio.get_running_loop()
        first_failure, failures = self._continued_streak(backoff, loop.time())
        while True:
            elapsed = loop.time() - first_failure
            delay = backoff.delay(failures, elapsed)
            if delay is None:
                msg = (
                    f"Projection {self._projection_name!r} of application "
                    f"{self.app_name!r} gave up reconnecting after {failures} "
                    f"failures in {elapsed:.1f}s: {type(error).__name__}: {error}"
                )
                raise OperationalError(msg) from error
            self._reconnect_streak = (first_failure, failures)
            logger.warning(
                "Projection %r of application %r: database error (%s: %s); "
                "resubscribing in %.2fs",
                self._projection_name,
                self.app_name,
                type(error).__name__,
                error,
                delay,
            )
            if await self._is_stopped_within(delay):
                return False
            try:
                if resubscribe:
                    await self._resubscribe()
                else:
                    await self._tracking_recorder.max_tracking_id(self.app_name)
            except _CONNECTION_ERRORS as next_error:
                self._counters.error(next_error)
                error = next_error
                failures += 1
                continue
            self._counters.reconnections += 1
            self._recovered_at = loop.time()
            self._processed_at_recovery = self._counters.processed
            logger.info(
                "Projection %r of application %r resubscribed at position %s",
                self._projection_name,
                self.app_name,
                self._counters.position,
            )
            return True

    def _continued_streak(self, backoff: Backoff, now: float) -> tuple[float, int]:
        """The first failure's time and the count of failures, this one included.

        A resubscription ends a streak of failures once an event is processed
        after it, or once it has lasted ``max_delay`` seconds without error.
        """
        streak = self._reconnect_streak
        if (
            streak is None
            or self._counters.processed != self._processed_at_recovery
            or now - self._recovered_at > backoff.max_delay
        ):
            return now, 1
        return streak[0], streak[1] + 1

    async def _unsubscribe(self) -> None:
        old, self._subscription = self._subscription, None
        if old is not None:
            with contextlib.suppress(Exception):
                await old.__aexit__(None, None, None)

    async def _resubscribe(self) -> None:
        """Subscribe again from the position recorded in the view."""
        await self._unsubscribe()
        position = await self._tracking_recorder.max_tracking_id(self.app_name)
        subscription = ApplicationSubscription(
            self.app, gt=position, topics=self._topics
        )
        subscription.subscription.on_caught_up = self._caught_up
        self._subscription = subscription
        await subscription.__aenter__()
        if self._has_called_stop:
            subscription.stop()
        self._counters.position = position

    async def _caught_up(self, position: int) -> float | None:
        """Record ``position``, up to which the subscription has read: the
        events after the last one processed are all filtered out by the
        projection's topics. So :meth:`wait` for them returns, other runners'
        views wake up, and a new subscription starts after them.

        The subscription calls it from the task that processes the events,
        once it has processed everything read: each event of the topics up
        to ``position`` is committed. It records in a view transaction of
        the runner (fenced by its lease), only forward, and at most once
        every :attr:`filtered_tracking_interval` seconds: else it returns
        the delay after which to be called again.
        """
        if position <= self._filtered_recorded:
            return None
        loop = asyncio.get_running_loop()
        interval = self.filtered_tracking_interval
        delay = self._filtered_recorded_at + interval - loop.time()
        if delay > 0:
            return delay
        tracking = Tracking(self.app_name, position)
        transaction = self._view_transaction()
        try:
            if transaction is None:
                await self._record_skipped(tracking)
            else:
                async with transaction as locked:
                    if locked.position is None or locked.position < position:
                        await self._record_skipped(tracking)
        except IntegrityError:
            # Recorded meanwhile by another runner (without leadership).
            self._rolled_back()
        except BaseException:
            self._rolled_back()
            raise
        self._filtered_recorded = position
        self._filtered_recorded_at = loop.time()
        return None

    async def _is_stopped_within(self, delay: float) -> bool:
        """Sleep ``delay`` seconds, or less if :meth:`stop` is called: True then."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)
        return self._stopping.is_set()

    async def statistics(self) -> RunnerStatistics:
        """What the runner has done since it started (reads the view's
        position, and the application's last notification id for
        :attr:`RunnerStatistics.lag`).

        The reads come first; the counters are then taken in one step, with
        no await between them, so that the snapshot is consistent.
        """
        recorded: int | None = None
        if self._is_started and not self._is_closed:
            # The view's own record: it counts what was committed before
            # the counters are bumped, and what another runner processed.
            with contextlib.suppress(PersistenceError):
                recorded = await self._tracking_recorder.max_tracking_id(self.app_name)
        max_notification_id: int | None = None
        is_readable = False
        with contextlib.suppress(PersistenceError):
            max_notification_id = await self.app.recorder.max_notification_id()
            is_readable = True
        # From here on, no await: the counters of one moment.
        return self._snapshot(recorded, max_notification_id, is_readable=is_readable)

    def counters(self) -> RunnerStatistics:
        """What the runner has done since it started, without IO.

        The snapshot of :meth:`statistics` from the runner's counters alone,
        taken in one step: :attr:`~RunnerStatistics.position` is the runner's
        own count (not the view's record, which may be ahead), and
        :attr:`~RunnerStatistics.lag` is None (not read). Cheap enough to
        call as often as wished, from synchronous code too.
        """
        return self._snapshot(None, None, is_readable=False)

    def _snapshot(
        self,
        recorded: int | None,
        max_notification_id: int | None,
        *,
        is_readable: bool,
    ) -> RunnerStatistics:
        """The counters of one moment, with what was read: no await."""
        counters = self._counters
        leadership = self._leadership
        position = counters.position
        if recorded is not None and (position is None or recorded > position):
            position = recorded
        lag: int | None = None
        if is_readable:
            lag = max(0, (max_notification_id or 0) - (position or 0))
        return RunnerStatistics(
            application_name=self.app_name,
            projection_name=self._projection_name,
            is_running=self.is_running,
            position=position,
            lag=lag,
            events_processed=counters.processed,
            events_per_second=counters.events_per_second(),
            errors=counters.errors,
            retries=counters.retries,
            skipped=counters.skipped,
            parked=counters.parked,
            reconnections=counters.reconnections,
            last_error=counters.last_error,
            last_error_at=counters.last_error_at,
            started_at=counters.started_at,
            role=str(leadership.role),
            owner=leadership.owner if leadership.coordinates else None,
            epoch=None if leadership.lease is None else leadership.lease.epoch,
            role_since=leadership.since,
        )

    def stop(self) -> None:
        """Stop processing after the event in hand; :meth:`run_forever` returns."""
        self._has_called_stop = True
        self._stopping.set()
        if self._subscription is not None:
            self._subscription.stop()

    async def run_forever(self, timeout: float | None = None) -> None:
        """Process until ``timeout``, :meth:`stop` or an error, which is re-raised.

        After :meth:`stop`, it returns once the event in hand is processed.
        The error that stopped the runner is raised itself the first time;
        later calls raise a :class:`ProjectionStoppedError` from it.
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
            self._raise_error(itself=True)
        finally:
            if owns_lifetime:
                await self.aclose()

    async def wait(self, notification_id: int | None, timeout: float = 1.0) -> None:
        """Return once the view has processed ``notification_id``.

        Raises :class:`ProjectionStoppedError`, from the error that stopped
        the runner, if processing stopped with one before: every waiter and
        every later call, a fresh one each. Raises :class:`TimeoutError`
        after ``timeout`` seconds.
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

    def _raise_error(self, *, itself: bool = False) -> None:
        """Raise a :class:`ProjectionStoppedError` from the error that stopped
        the runner, if it stopped with one; with ``itself`` (the runner's
        owner), the error itself if that has not been raised yet."""
        error = self._error
        if error is None:
            return
        self._error_told = True
        if itself and not self._error_raised:
            self._error_raised = True
            raise error
        msg = (
            f"Projection {self._projection_name!r} of application "
            f"{self.app_name!r} stopped by an error: {error!r}"
        )
        raise ProjectionStoppedError(msg) from error

    async def close(self) -> None:
        """Stop, wait for the event in hand, and close what the runner holds.

        Releases the lease, ends the subscription and closes the
        application's and the view's (or the projection's) connections.
        Idempotent; a closed runner cannot be started again. Leaving
        ``async with`` and a :meth:`run_forever` that started the runner
        call it; :meth:`aclose` is the same.
        """
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
            if self._announcing is not None:
                self._announcing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._announcing
            try:
                await self._leadership.release()
            finally:
                await self._unsubscribe()
                await self.app.close()
                await self._close_projection()

    async def aclose(self) -> None:
        """The same as :meth:`close` (the name of :mod:`contextlib`'s
        ``aclosing()``)."""
        await self.close()

    async def _close_projection(self) -> None:
        """Close the view's or the projection's connections."""

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            # Failed or cancelled while starting: close what was opened so far.
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        await self.aclose()
        if exc_val is None and not self._error_told:
            self._raise_error(itself=True)  # Nobody was told of it.


class ProjectionRunner(
    BaseProjectionRunner[TApplication], Generic[TApplication, TView]
):
    """Runs a :class:`Projection` into a view of class ``view_class``.

    The view is constructed by the infrastructure factory of the projection's
    environment (variables prefixed with the projection's name win), the
    application by its own.

    Each variable is taken from ``env``, else the process environment, else
    ``env_defaults``: defaults that the process environment overrides.
    """

    def __init__(
        self,
        *,
        application_class: type[TApplication],
        projection_class: type[Projection[TView]],
        view_class: type[TView],
        env: EnvType | None = None,
        env_defaults: Mapping[str, str] | None = None,
        error_policy: ErrorPolicyLike | None = None,
    ) -> None:
        env = self._with_defaults(env, env_defaults)
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
            error_policy=error_policy,
        )

    async def _prepare(self) -> None:
        if self.factory.env_create_table():
            await self.view.create_table()
            await self._leadership.create_table()

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

    Each variable is taken from ``env``, else the process environment, else
    ``env_defaults``: defaults that the process environment overrides.
    """

    max_batch_size = 1

    def __init__(
        self,
        *,
        application_class: type[TApplication],
        projection_class: type[TEventSourcedProjection],
        env: EnvType | None = None,
        env_defaults: Mapping[str, str] | None = None,
        error_policy: ErrorPolicyLike | None = None,
    ) -> None:
        env = self._with_defaults(env, env_defaults)
        self.projection: TEventSourcedProjection = projection_class(
            env=self._construct_env(projection_class.name, env)
        )
        super().__init__(
            projection=self.projection,
            application_class=application_class,
            tracking_recorder=cast("TrackingRecorder", self.projection.recorder),
            topics=self.projection.topics,
            env=env,
            error_policy=error_policy,
        )

    async def _prepare(self) -> None:
        if self.projection.factory.env_create_table():
            await self._leadership.create_table()

    async def _record_skipped(self, tracking: Tracking) -> None:
        """An empty processing event: the tracking, no new events."""
        await self.projection.record_tracking(tracking)

    def _rolled_back(self) -> None:
        """Forget cached aggregates: they may hold events that were not recorded."""
        self.projection.repository.clear_cache()

    async def _close_projection(self) -> None:
        await self.projection.close()
