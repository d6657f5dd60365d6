"""Partitioned projections: the events processed in partitions, by many runners.

A :class:`~asyncsourcing.projection.projections.Projection` that declares
``partitions = N`` (N > 1) has its events processed in N partitions: an
event's partition is a stable hash of its originator id
(:func:`~asyncsourcing.partitions.partition_of`), so each aggregate's
events are processed in order, in one partition, while the partitions are
processed concurrently. Each partition has its own position, in the view's
partition table beside eventsourcing's tracking table, recorded in the same
transaction as the view's update, and its own lease: the runners of the
projection, in one process or many, share the partitions between them and
rebalance when one joins, leaves or dies
(:class:`~asyncsourcing.projection.partition_leadership.PartitionLeadership`).

A runner reads the application's sequence once and hands each event of the
partitions it owns to that partition's worker
(:mod:`.partition_workers`). ``wait(app, position)`` returns once every
partition has passed the position; ``wait(app, position, originator_id=...)``
only waits for that aggregate's partition.

When the partitions it owns change, a runner lets its workers finish the
batches in hand and starts reading again, from the lowest position of its
new set: nothing is processed twice (each batch transaction reads its
partition's position under lock and leaves what another runner processed),
nothing is skipped (positions only move once the events up to them are
processed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from asyncsourcing.application import Application
from asyncsourcing.leases import FencedError, Lease
from asyncsourcing.persistence import Tracking, TrackingRecorder
from asyncsourcing.projection.leadership import Role
from asyncsourcing.projection.partition_leadership import PartitionLeadership
from asyncsourcing.projection.partition_workers import (
    Generation,
    PartitionFencedError,
)
from asyncsourcing.projection.processing import (
    Processor,
    RunnerSettings,
    StopRequestedError,
)
from asyncsourcing.projection.projections import Projection
from asyncsourcing.projection.reconnection import CONNECTION_ERRORS, Reconnection
from asyncsourcing.projection.tasks import finish, stopped_within
from asyncsourcing.projection.versioning import RunnerVersion
from asyncsourcing.statistics import RunnerCounters, RunnerStatistics
from asyncsourcing.versions import versioned_name

__all__ = ["PartitionedLoop"]

logger = logging.getLogger("asyncsourcing.projection.runners")


class PartitionedLoop:
    """What a runner of a partitioned projection runs, in tasks of its own:
    the leadership of its partitions, and a :class:`Generation` of reader
    and workers for the partitions it owns, started again at each change.

    The same face as :class:`~asyncsourcing.projection.loop.RunnerLoop`:
    set :attr:`stopping` to stop; the error that stops it is counted,
    logged and kept in :attr:`error`, not raised.
    """

    def __init__(
        self,
        settings: RunnerSettings,
        app: Application[Any],
        projection: Projection[Any],
        tracking_recorder: TrackingRecorder,
        topics: Sequence[str],
        leadership: PartitionLeadership,
        version: RunnerVersion,
        counters: RunnerCounters,
        *,
        record_skipped: Callable[[Tracking], Awaitable[None]],
        rolled_back: Callable[[], None],
        mark_interval: Callable[[], float],
    ) -> None:
        self._settings = settings
        self._app = app
        self._projection = projection
        self._partitions = projection.partitions
        self._projection_name = versioned_name(projection.name, version.version)
        self._culprit = type(projection).__qualname__
        self._tracking_recorder = tracking_recorder
        self._topics = tuple(topics)
        self.leadership = leadership
        self._version = version
        self._counters = counters
        self._record_skipped = record_skipped
        self._rolled_back = rolled_back
        self._mark_interval = mark_interval
        self.stopping = asyncio.Event()
        """Set to stop the loop; set by the loop once it stops."""
        self.error: Exception | None = None
        """The error that stopped the loop, if one did."""
        self._changed = asyncio.Event()
        self._generation: Generation | None = None
        self._generation_ended = asyncio.Event()
        self._generation_ended.set()
        self._reconnection = Reconnection(
            counters, app.name, self._projection_name, self._is_stopped_within
        )
        self._task: asyncio.Task[None] | None = None
        self._leading: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Record the partitions' layout (or check it), count from the
        view's position, then lead and process in tasks of their own."""
        name = self._app.name
        await self._tracking_recorder.claim_partitions(name, self._partitions)
        self._counters.start(await self._tracking_recorder.max_tracking_id(name))
        self._leading = asyncio.create_task(
            self.leadership.run(self._on_change), name=f"partitions of {name}"
        )
        self._task = asyncio.create_task(self._run(), name=f"projection {name}")

    def stop(self) -> None:
        """Stop after the batches in hand."""
        self.stopping.set()
        if self._generation is not None:
            self._generation.stop()

    @property
    def is_running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def role(self) -> Role:
        """Leader while the runner owns partitions, else standby."""
        return Role.LEADER if self.leadership.owned else Role.STANDBY

    @property
    def lease(self) -> Lease | None:
        """None: the runner's leases are its partitions' (:attr:`leadership`)."""
        return None

    @property
    def partitions_owned(self) -> frozenset[int]:
        """The partitions whose leases the runner holds and has renewed in time."""
        return self.leadership.owned

    async def create_table(self) -> None:
        """Create the tables of the leases, if the runner shares them."""
        await self.leadership.create_table()

    def snapshot(self, recorded: int | None, head: int | None) -> RunnerStatistics:
        """The counters of this moment (see :meth:`RunnerCounters.snapshot`)."""
        return self._counters.snapshot(
            self._app.name,
            self._projection_name,
            is_running=self.is_running,
            recorded=recorded,
            head=head,
            role=str(self.role),
            owner=self.leadership.owner,
        )

    async def finished(self) -> None:
        """Return once the loop's task has ended (not cancelled with the caller)."""
        if self._task is not None:
            await asyncio.shield(self._task)

    async def close(self) -> None:
        """Wait for the task to end (once :attr:`stopping` is set), then give
        back the partitions' leases. Cancelling the caller cancels the task
        too: nothing is left behind."""
        try:
            await finish(self._task)
        finally:
            await self._stop_leading()

    async def _on_change(self, gained: frozenset[int], lost: frozenset[int]) -> None:
        """The partitions owned changed: start reading again. Partitions lost
        are given back once their workers have finished the batch in hand."""
        logger.info(
            "Projection %r of application %r: partitions gained %s, lost %s",
            self._projection_name,
            self._app.name,
            sorted(gained),
            sorted(lost),
        )
        self._changed.set()
        generation = self._generation
        if generation is not None:
            generation.stop()
            if lost:
                await self._generation_ended.wait()

    async def _run(self) -> None:
        try:
            while not self.stopping.is_set():
                if not self.leadership.owned and not await self._wait_for_change():
                    return
                self._changed.clear()
                try:
                    await self._run_generation(self.leadership.owned)
                except PartitionFencedError as error:
                    self.leadership.lost(error.partition, str(error))
                except CONNECTION_ERRORS as error:
                    backoff = self._settings.error_policy.reconnect_backoff
                    if not await self._reconnection.reconnect(
                        error, backoff, self._check_database
                    ):
                        return
        except asyncio.CancelledError:
            raise
        except StopRequestedError:
            logger.warning(
                "Projection %r of application %r stopped while retrying an event",
                self._projection_name,
                self._app.name,
            )
        except Exception as error:
            logger.exception(
                "Projection %r of application %r stopped by an error",
                self._culprit,
                self._app.name,
            )
            self._counters.stopped_by(error)
            self.error = error
        finally:
            self.stopping.set()
            if self._generation is not None:
                self._generation.stop()
            # Stopped: the others take the partitions over at once.
            await self._stop_leading()

    async def _stop_leading(self) -> None:
        """Stop renewing the partitions' leases, and give them back."""
        if self._leading is not None:
            self._leading.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._leading
        await self.leadership.release()

    async def _wait_for_change(self) -> bool:
        """Wait for partitions to be owned; False if stopped meanwhile."""
        changed = asyncio.create_task(self._changed.wait())
        stopping = asyncio.create_task(self.stopping.wait())
        try:
            await asyncio.wait({changed, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (changed, stopping):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        return not self.stopping.is_set()

    async def _run_generation(self, owned: frozenset[int]) -> None:
        """Read and process for the partitions ``owned`` until they change,
        the loop stops, or an error."""
        if not owned:
            return  # Lost meanwhile: the loop waits for partitions again.
        positions = await self._tracking_recorder.partition_positions(self._app.name)
        generation = Generation(
            self._app,
            self._tracking_recorder,
            self._topics,
            self._partitions,
            {p: positions.get(p) for p in sorted(owned)},
            self._processor,
            self._fence,
            max_batch_size=self._settings.max_batch_size,
            mark_interval=self._mark_interval(),
        )
        self._generation = generation
        self._generation_ended.clear()
        if self._changed.is_set() or self.stopping.is_set():
            generation.stop()  # Changed while the positions were read.
        try:
            await generation.run()
        finally:
            self._generation = None
            self._generation_ended.set()

    def _processor(self, partition: int) -> Processor:
        return Processor(
            self._settings,
            self._app,
            self._projection,
            self._tracking_recorder,
            lambda: self._fence(partition),
            self._version,
            self._counters,
            record_skipped=self._record_skipped,
            rolled_back=self._rolled_back,
            sleep=self._is_stopped_within,
            partition=partition,
        )

    def _fence(self, partition: int) -> Lease | None:
        """The lease that a view transaction of ``partition`` checks; None
        without leases. Raises :class:`FencedError` when the runner shares
        the partitions and holds that one no more (a lease it could not
        renew in time): it must not commit there, even unfenced."""
        lease = self.leadership.lease(partition)
        if lease is None and self.leadership.coordinates:
            msg = (
                f"Runner {self.leadership.owner!r} holds partition {partition} "
                f"of projection {self._projection_name!r} no more"
            )
            raise FencedError(msg)
        return lease

    async def _check_database(self) -> None:
        await self._tracking_recorder.partition_positions(self._app.name)

    async def _is_stopped_within(self, delay: float) -> bool:
        """Sleep ``delay`` seconds, or less if the loop is stopped: True then."""
        return await stopped_within(self.stopping, delay)
