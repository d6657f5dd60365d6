"""A runner's task: lead or stand by, follow the subscription, reconnect."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from asyncsourcing.application import Application
from asyncsourcing.leases import FencedError, Lease
from asyncsourcing.persistence import Tracking, TrackingRecorder
from asyncsourcing.policies import Backoff
from asyncsourcing.projection.filtered import FilteredPositions
from asyncsourcing.projection.leadership import Leadership, Role
from asyncsourcing.projection.processing import (
    Processor,
    RunnerSettings,
    StopRequestedError,
)
from asyncsourcing.projection.projections import EventSourcedProjection, Projection
from asyncsourcing.projection.reconnection import CONNECTION_ERRORS, Reconnection
from asyncsourcing.projection.subscription import Subscriber
from asyncsourcing.projection.tasks import finish, stopped_within
from asyncsourcing.projection.versioning import RunnerVersion
from asyncsourcing.statistics import RunnerCounters, RunnerStatistics
from asyncsourcing.versions import versioned_name

__all__ = ["RunnerLoop"]

# The runner's messages, whichever of its modules logs them.
logger = logging.getLogger("asyncsourcing.projection.runners")

STANDBY_RECONNECT = Backoff(
    initial_delay=0.1, max_delay=5.0, max_attempts=None, max_total_time=None
)
"""How a standby whose policy does not reconnect waits for its database
while taking over: for as long as it takes, as a standby waits for its lock."""


class RunnerLoop:
    """What a runner runs, in a task of its own, from :meth:`start` until
    :attr:`stopping` is set.

    While it leads, it follows the :attr:`subscriber`'s subscription (a
    :class:`Processor` processes the events) and keeps the lease; once the
    lease is lost, or a view transaction is fenced off, it unsubscribes and
    stands by until it leads again. After a database connection error it
    reconnects, as the runner's policy says, or stops. The error that stops
    it is counted, logged and kept in :attr:`error`, not raised.

    Plain asyncio tasks, not an anyio task group: the runner is entered and
    exited in one place (``async with``) and awaited in another
    (``run_forever()``, perhaps from another task), which a task group's
    nested cancel scopes do not allow.
    """

    def __init__(
        self,
        settings: RunnerSettings,
        app: Application[Any],
        projection: Projection[Any] | EventSourcedProjection[Any],
        tracking_recorder: TrackingRecorder,
        topics: Sequence[str],
        leadership: Leadership,
        version: RunnerVersion,
        counters: RunnerCounters,
        *,
        record_skipped: Callable[[Tracking], Awaitable[None]],
        rolled_back: Callable[[], None],
    ) -> None:
        self._settings = settings
        self._application_name = app.name
        self._projection_name = versioned_name(projection.name, version.version)
        # Who stopped by an error: the projection's class, where the bug is.
        self._culprit = type(projection).__qualname__
        self._tracking_recorder = tracking_recorder
        self._leadership = leadership
        self._version = version
        self._counters = counters
        self.stopping = asyncio.Event()
        """Set to stop the loop; set by the loop once it stops."""
        self.error: Exception | None = None
        """The error that stopped the loop, if one did."""
        self._processor = Processor(
            settings,
            app,
            projection,
            tracking_recorder,
            lambda: leadership.lease,
            version,
            counters,
            record_skipped=record_skipped,
            rolled_back=rolled_back,
            sleep=self._is_stopped_within,
        )
        filtered = FilteredPositions(
            app.name,
            lambda: settings.filtered_tracking_interval,
            self._processor.view_transaction,
            record_skipped,
            rolled_back,
        )
        self.subscriber = Subscriber(app, tracking_recorder, topics, filtered.caught_up)
        self._reconnection = Reconnection(
            counters, app.name, self._projection_name, self._is_stopped_within
        )
        self._task: asyncio.Task[None] | None = None
        self._announcing: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Lead now if the lease can be taken, and subscribe; count from the
        view's position; then run in a task, and announce the runner in
        another."""
        if await self._leadership.try_acquire():
            position = await self.subscriber.subscribe()
        else:
            position = await self._tracking_recorder.max_tracking_id(
                self._application_name
            )
        self._counters.start(position)
        name = self._application_name
        self._task = asyncio.create_task(self._run(), name=f"projection {name}")
        self._announcing = asyncio.create_task(
            self._leadership.announce(), name=f"presence {name}"
        )

    def stop(self) -> None:
        """Stop after the event in hand; a subscription that is being made
        stops too."""
        self.stopping.set()
        self.subscriber.stop()

    @property
    def role(self) -> Role:
        """Leader (processes the events) or standby (waits to take over)."""
        return self._leadership.role

    @property
    def lease(self) -> Lease | None:
        """The lease the runner leads by, or None (standing by, or no lease)."""
        return self._leadership.lease

    @property
    def partitions_owned(self) -> frozenset[int]:
        """``{0}`` while the runner leads: it processes the whole projection."""
        return frozenset({0}) if self.role is Role.LEADER else frozenset()

    async def create_table(self) -> None:
        """Create the tables of the leases, if the runner shares them."""
        await self._leadership.create_table()

    @property
    def is_running(self) -> bool:
        """Whether the loop's task is processing (or standing by)."""
        return self._task is not None and not self._task.done()

    def snapshot(self, recorded: int | None, head: int | None) -> RunnerStatistics:
        """The counters and the role of this moment, with what the runner
        read before (see :meth:`RunnerCounters.snapshot`): no await."""
        leadership = self._leadership
        return self._counters.snapshot(
            self._application_name,
            self._projection_name,
            is_running=self.is_running,
            recorded=recorded,
            head=head,
            role=str(leadership.role),
            owner=leadership.owner if leadership.coordinates else None,
            epoch=None if leadership.lease is None else leadership.lease.epoch,
            role_since=leadership.since,
        )

    async def finished(self) -> None:
        """Return once the loop's task has ended, which cancelling the caller
        does not cancel."""
        if self._task is not None:
            await asyncio.shield(self._task)

    async def close(self) -> None:
        """Wait for the task to end (once :attr:`stopping` is set), then give
        back the lease and unsubscribe. Cancelling the caller cancels the
        task too: nothing is left behind."""
        try:
            await finish(self._task)
        finally:
            if self._announcing is not None:
                self._announcing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._announcing
            try:
                await self._leadership.release()
            finally:
                await self.subscriber.unsubscribe()

    async def _run(self) -> None:
        try:
            while not self.stopping.is_set():
                if self.subscriber.current is None and not await self._stand_by():
                    return
                if not await self._lead():
                    return
        except asyncio.CancelledError:
            raise
        except StopRequestedError:
            logger.warning(
                "Projection %r of application %r stopped while retrying an event",
                self._projection_name,
                self._application_name,
            )
        except Exception as error:
            logger.exception(
                "Projection %r of application %r stopped by an error",
                self._culprit,
                self._application_name,
            )
            self._counters.stopped_by(error)
            self.error = error
        finally:
            self.stopping.set()
            if self._announcing is not None:
                self._announcing.cancel()  # Stopped: neither leader nor standby.

    async def _stand_by(self) -> bool:
        """Wait to lead, then subscribe; False if stopped meanwhile."""
        while True:
            acquiring = asyncio.create_task(self._leadership.acquire())
            stopping = asyncio.create_task(self.stopping.wait())
            try:
                await asyncio.wait(
                    {acquiring, stopping}, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for task in (acquiring, stopping):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
            if self.stopping.is_set():
                return False
            try:
                acquiring.result()
                # A switch may have retired the version while it stood by.
                await self._version.register(self._application_name)
                await self._resubscribe()
            except CONNECTION_ERRORS as error:
                # Nothing is processed yet: as for its lock waits, whatever
                # the policy, a standby's database errors never stop it (a
                # leader's own pooled connections, terminated with it, would
                # otherwise stop its successor too). It stands by again once
                # the view answers.
                reason = f"{type(error).__name__} taking over: {error}"
                await self._leadership.step_down(reason)
                backoff = self._settings.error_policy.reconnect_backoff
                if not await self._reconnection.reconnect(
                    error, backoff or STANDBY_RECONNECT, self._check_database
                ):
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
        await self.subscriber.unsubscribe()
        return True

    async def _follow_reconnecting(self) -> bool:
        """Process until stopped (False), or until fenced off (True)."""
        while True:
            subscription = self.subscriber.current
            if subscription is None:  # pragma: no cover (set before)
                return False
            try:
                await self._processor.follow(subscription)
            except FencedError as error:
                self._leadership.lost(str(error))
                return True
            except CONNECTION_ERRORS as error:
                if not await self._reconnect(error, self._resubscribe):
                    return False
            else:
                return False

    async def _resubscribe(self) -> None:
        """Subscribe again from the position recorded in the view."""
        self._counters.resubscribed_at(await self.subscriber.subscribe())

    async def _check_database(self) -> None:
        await self._tracking_recorder.max_tracking_id(self._application_name)

    async def _reconnect(
        self, error: Exception, attempt: Callable[[], Awaitable[object]]
    ) -> bool:
        """Reconnect by ``attempt`` after ``error``; False if stopped meanwhile."""
        backoff = self._settings.error_policy.reconnect_backoff
        return await self._reconnection.reconnect(error, backoff, attempt)

    async def _is_stopped_within(self, delay: float) -> bool:
        """Sleep ``delay`` seconds, or less if the loop is stopped: True then."""
        return await stopped_within(self.stopping, delay)
