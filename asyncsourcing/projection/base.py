"""The base of projection runners: their lifetime and their public face.

What a runner runs is in the modules beside this one: :mod:`.loop` (lead or
stand by, follow, reconnect), :mod:`.processing` (batches, one event at a
time, the error policy's decisions), :mod:`.batches` (splitting a failed
batch), :mod:`.reconnection` and :mod:`.filtered`; the concrete runners are
in :mod:`.runners`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Generic, Self, TypeVar
from uuid import UUID

from eventsourcing.utils import EnvType

from asyncsourcing.application import Application
from asyncsourcing.leases import Lease
from asyncsourcing.partitions import mismatch_error
from asyncsourcing.persistence import (
    PersistenceError,
    Tracking,
    TrackingRecorder,
    WaitInterruptedError,
)
from asyncsourcing.policies import ErrorPolicy, ErrorPolicyLike
from asyncsourcing.projection.environment import construct_env, lease_settings
from asyncsourcing.projection.leadership import Leadership, Role
from asyncsourcing.projection.loop import RunnerLoop
from asyncsourcing.projection.partition_leadership import PartitionLeadership
from asyncsourcing.projection.partitioned import PartitionedLoop
from asyncsourcing.projection.projections import EventSourcedProjection, Projection
from asyncsourcing.projection.versioning import RunnerVersion
from asyncsourcing.statistics import RunnerCounters, RunnerStatistics
from asyncsourcing.versions import VersionRecord, Versions, versioned_name

__all__ = ["BaseProjectionRunner", "ProjectionStoppedError"]

TApplication = TypeVar("TApplication", bound=Application[Any])


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
    backend offers :meth:`~TrackingRecorder.batch_transaction`), by the
    projection's ``process_events()``; live events are processed one at a
    time. A failing batch is rolled back and split in halves until the
    failing event is alone; the runner's :attr:`error_policy` then applies
    to it (see :class:`Projection`), and what follows it is batched again.

    After a database connection error, a runner whose policy reconnects
    resubscribes from the view's recorded position, backing off while the
    database is unreachable: nothing is lost, nothing processed twice.
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
        version: int = 1,
        versions: Versions | None = None,
    ) -> None:
        self.version = version
        """The version of the projection run (see :mod:`asyncsourcing.versions`)."""
        name = versioned_name(projection.name, version)
        self.error_policy: ErrorPolicy = ErrorPolicy.of(
            projection.error_policy if error_policy is None else error_policy
        )
        self.app: TApplication = application_class(env)
        self.app_name = self.app.name
        self._projection_name = name
        self._tracking_recorder = tracking_recorder
        self._topics = tuple(topics)
        self._has_called_stop = False
        # Whether the error that stopped the runner has been raised itself
        # (to run_forever() or on exit), and whether anyone was told.
        self._error_raised = False
        self._error_told = False
        self._is_started = False
        self._is_closed = False
        settings = lease_settings(construct_env(projection.name, env, version=version))
        self._version = RunnerVersion(
            versions,
            projection.name,
            version,
            side_effects_during_replay=projection.side_effects_during_replay,
        )
        # The hooks are bound here, so a subclass's overrides apply.
        self._loop: RunnerLoop | PartitionedLoop
        partitions = getattr(projection, "partitions", 1)
        self._partitions = partitions
        if partitions > 1 and isinstance(projection, Projection):
            self._loop = PartitionedLoop(
                self,
                self.app,
                projection,
                tracking_recorder,
                self._topics,
                PartitionLeadership(
                    tracking_recorder.leases, self.app_name, name, partitions, settings
                ),
                self._version,
                RunnerCounters(),
                record_skipped=self._record_skipped,
                rolled_back=self._rolled_back,
                mark_interval=lambda: self.filtered_tracking_interval,
            )
        else:
            self._loop = RunnerLoop(
                self,
                self.app,
                projection,
                tracking_recorder,
                self._topics,
                Leadership(tracking_recorder.leases, self.app_name, name, settings),
                self._version,
                RunnerCounters(),
                record_skipped=self._record_skipped,
                rolled_back=self._rolled_back,
            )
        self._stopping = self._loop.stopping

    @property
    def role(self) -> Role:
        """Leader (processes the events) or standby (waits to take over).

        A runner of a partitioned projection leads while it owns partitions.
        """
        return self._loop.role

    @property
    def lease(self) -> Lease | None:
        """The lease this runner leads by, or None while it stands by.

        Also None when leadership is off (``LEADERSHIP=false``) or the
        view is in memory: then the runner leads without a lease; and for
        a partitioned projection, whose leases are its partitions' (see
        :attr:`partitions_owned`).
        """
        return self._loop.lease

    @property
    def partitions(self) -> int:
        """In how many partitions the projection is processed (1: not
        partitioned; see :mod:`asyncsourcing.projection.partitioned`)."""
        return self._partitions

    @property
    def partitions_owned(self) -> frozenset[int]:
        """The partitions this runner processes: all of them (``{0}``) for
        a projection that is not partitioned, while it leads."""
        return self._loop.partitions_owned

    @property
    def is_running(self) -> bool:
        """Whether the runner's task is processing (or standing by)."""
        return self._loop.is_running

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
        """The projection's name, with its version above 1
        (``dogs_v2``): the prefix of its environment variables, and its
        name in leases and :class:`RunnerStatistics`."""
        return self._projection_name

    @property
    def version_record(self) -> VersionRecord | None:
        """The record of the version run, as the runner last read it, once
        started; None in memory (see :mod:`asyncsourcing.versions`)."""
        return self._version.record

    async def start(self) -> None:
        """Subscribe from the view's position and start processing; idempotent."""
        if self._is_started:
            return
        if self._is_closed:
            msg = "The runner has been closed"
            raise RuntimeError(msg)
        self._is_started = True
        await self._prepare()
        if self._partitions == 1:
            await self._check_not_partitioned()
        await self._version.register(self.app_name)
        await self._loop.start()

    async def _check_not_partitioned(self) -> None:
        """Refuse to run a projection without partitions where its view has
        them: it would start from the least partition's position and
        process the other partitions' events again."""
        positions = await self._tracking_recorder.partition_positions(self.app_name)
        if positions:
            where = f"in the view of projection {self._projection_name!r}"
            raise mismatch_error(where, self.app_name, len(positions), 1)

    async def _prepare(self) -> None:
        """Make the view ready (create its tables) before reading its position."""

    async def _record_skipped(self, tracking: Tracking) -> None:
        """Record ``tracking`` with no update of the view."""
        await self._tracking_recorder.insert_tracking(tracking)

    def _rolled_back(self) -> None:
        """Hook: a view transaction of the runner rolled back."""

    async def _close_projection(self) -> None:
        """Close the view's or the projection's connections."""

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
        head: int | None = None
        with contextlib.suppress(PersistenceError):
            head = await self.app.recorder.max_notification_id() or 0
        # From here on, no await: the counters of one moment.
        return self._loop.snapshot(recorded, head)

    def counters(self) -> RunnerStatistics:
        """What the runner has done since it started, without IO.

        The snapshot of :meth:`statistics` from the runner's counters alone,
        taken in one step: :attr:`~RunnerStatistics.position` is the runner's
        own count (not the view's record, which may be ahead), and
        :attr:`~RunnerStatistics.lag` is None (not read). Cheap enough to
        call as often as wished, from synchronous code too.
        """
        return self._loop.snapshot(None, None)

    def stop(self) -> None:
        """Stop processing after the event in hand; :meth:`run_forever` returns."""
        self._has_called_stop = True
        self._loop.stop()

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
            if self._stopping.is_set():
                await self._loop.finished()
            self._raise_error(itself=True)
        finally:
            if owns_lifetime:
                await self.aclose()

    async def wait(
        self,
        notification_id: int | None,
        timeout: float = 1.0,
        *,
        originator_id: UUID | str | None = None,
    ) -> None:
        """Return once the view has processed ``notification_id``: for a
        partitioned projection, once every partition has passed it, or with
        ``originator_id``, once that aggregate's partition has.

        Raises :class:`ProjectionStoppedError`, from the error that stopped
        the runner, if processing stopped with one before: every waiter and
        every later call, a fresh one each. Raises :class:`TimeoutError`
        after ``timeout`` seconds.
        """
        try:
            if originator_id is None:
                await self._tracking_recorder.wait(
                    self.app_name, notification_id, timeout, interrupt=self._stopping
                )
            else:
                await self._tracking_recorder.wait(
                    self.app_name,
                    notification_id,
                    timeout,
                    interrupt=self._stopping,
                    originator_id=originator_id,
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
        error = self._loop.error
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
            await self._loop.close()
        finally:
            await self.app.close()
            await self._close_projection()

    async def aclose(self) -> None:
        """The same as :meth:`close` (the name of :mod:`contextlib`'s
        ``aclosing()``)."""
        await self.close()

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
