"""What projections are: how an application's events update a view."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, Generic, TypeVar

from eventsourcing.application import ProcessingEvent
from eventsourcing.domain import DomainEventProtocol, TAggregateID

from asyncsourcing.application import Application
from asyncsourcing.persistence import (
    ProcessRecorder,
    Tracking,
    TrackingRecorder,
)
from asyncsourcing.policies import (
    ErrorPolicyLike,
)
from asyncsourcing.projection.replay import side_effects_suppressed

__all__ = ["EventSourcedProjection", "Projection", "TView"]

TView = TypeVar("TView", bound=TrackingRecorder)


class Projection(ABC, Generic[TView]):
    """How the events of an application update a materialised view.

    Subclasses implement ``async def process_event(domain_event, tracking)``,
    typically with :func:`functools.singledispatchmethod`, calling command
    methods of :attr:`view` that record ``tracking`` atomically with their update.

    When ``process_event()`` raises, the runner follows :attr:`error_policy`
    (a runner's ``error_policy=`` argument overrides it):

    * ``"stop"`` (the default): processing stops, ``run_forever()`` and
      ``wait()`` raise the error; a new run starts again at that event.
    * ``"retry"``: the event is processed again after growing delays
      (:meth:`ErrorPolicy.retry` sets the delays, the number of attempts or
      the time to try for, and what to do then: stop by default).
    * ``"skip"``: the event's tracking is recorded (``view.insert_tracking``)
      with no update, and the error is logged (``logger.error``, with the
      notification id and topic): the event is never processed again.
    * ``"park"``: the notification and the error are recorded in the view's
      dead-letter table atomically with its tracking (``view.park()``; read
      them with ``await view.parked(application_name)``), and logged.

    Only the failing event is concerned: the events around it are
    processed exactly once. Database connection errors are not the event's
    fault: they are never skipped or parked; the ``retry`` policy (or
    ``ErrorPolicy(..., reconnect=...)``) reconnects and resumes from the
    view's position, other policies stop with an :class:`OperationalError`.

    While catching up on a backend that batches (SQLite, PostgreSQL: its
    view's :meth:`~TrackingRecorder.batch_transaction` is not None), the
    runner gives the events it has read to :meth:`process_events` in
    batches of up to its ``max_batch_size``. A batch is a sequence of
    events of the application, in the order of their notification ids, with
    none left out but those the projection's :attr:`topics` filter out and
    those another runner of the projection has processed meanwhile; it is
    never empty. It is processed in one view transaction, which the view's
    own transactions join: everything it records commits or rolls back
    together, and the tracking is written once, the batch's last position,
    as it commits. So a command method of the view may record the tracking
    of the last event alone, for the updates of the whole batch (one
    statement for many events, say); the positions recorded must go up, and
    the last event's must be recorded. Other events (live ones, those of a
    batch being split, and all events in memory, where a transaction could
    not be rolled back) go to :meth:`process_event` one at a time, each in
    a transaction of its own: both methods must have the same effect.

    When :meth:`process_events` raises, the batch's transaction rolls back,
    leaving nothing of it, and the runner splits the batch in halves to find
    the failing event: the first half is processed as a batch, split again
    if it fails, until one event is left, which :meth:`process_event`
    processes alone, under the error policy; the rest is then batched
    again. So each event is processed (committed) once, in order, and only
    the failing one is skipped, parked or stops the runner. Connection
    errors and :class:`~asyncsourcing.leases.FencedError` are not split on:
    the runner reconnects or stops, or stands by, at once.
    """

    name: str = ""
    """Picks prefixed environment variables and names the view's tables;
    defaults to the class name."""

    version: ClassVar[int] = 1
    """Part of the projection's identity: each version has tables, tracking
    and a lease of its own (``<name>_v<version>_...`` above 1), so a new
    version builds beside the serving one (see :mod:`asyncsourcing.versions`
    and ``asyncsourcing rebuild``). Bump it when a change of the code needs
    the view rebuilt."""

    side_effects_during_replay: ClassVar[bool] = False
    """Whether :func:`~asyncsourcing.projection.replay.side_effect`
    functions run while the runner replays events (see
    :mod:`asyncsourcing.projection.replay`)."""

    partitions: ClassVar[int] = 1
    """In how many partitions the events are processed (see
    :mod:`asyncsourcing.projection.partitioned`): an event's partition is a
    stable hash of its originator id, so each aggregate's events are
    processed in order, and the partitions are processed concurrently, by
    the runners of one process or of many. Fixed when the projection (its
    version) is first run: another count needs a new :attr:`version`."""

    topics: tuple[str, ...] = ()
    """Topics of the events to process, filtered in the database; all when empty."""

    error_policy: ClassVar[ErrorPolicyLike] = "stop"
    """What the runner does when :meth:`process_event` raises: "stop",
    "retry", "skip", "park", or an :class:`ErrorPolicy`."""

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

    async def process_events(
        self, events: Sequence[tuple[DomainEventProtocol[Any], Tracking]]
    ) -> None:
        """Update the view with a batch of ``(domain_event, tracking)`` pairs,
        in one view transaction (see the class's description of batches).

        Awaits :meth:`process_event` for each, in order; override it to
        process the batch at once, recording at least the last tracking.
        """
        for domain_event, tracking in events:
            await self.process_event(domain_event, tracking)


class EventSourcedProjection(Application[TAggregateID], ABC):
    """An application that processes another application's events into new events.

    Its recorder is a process recorder: the events collected by :meth:`policy`
    are recorded atomically with the tracking of the processed event.

    :attr:`error_policy` works as for :class:`Projection`; a skipped event
    is recorded as an empty processing event (its tracking only), a parked
    one in the process recorder's dead-letter table.
    """

    topics: Sequence[str] = ()

    error_policy: ClassVar[ErrorPolicyLike] = "stop"
    """What the runner does when :meth:`policy` raises: see :class:`Projection`."""

    side_effects_during_replay: ClassVar[bool] = False
    """Whether the new events that :meth:`policy` collects are recorded
    while replaying (see :mod:`asyncsourcing.projection.replay`): by
    default only the tracking is, the events being side effects."""

    recorder: ProcessRecorder

    def construct_recorder(self) -> ProcessRecorder:
        return self.factory.construct_process_recorder()

    async def process_event(
        self, domain_event: DomainEventProtocol[TAggregateID], tracking: Tracking
    ) -> list[Any]:
        """Run :meth:`policy` and record its new events with ``tracking``."""
        processing_event = ProcessingEvent[TAggregateID](tracking=tracking)
        await self.policy(domain_event, processing_event)
        if side_effects_suppressed():
            # The new events were recorded when the event was first processed.
            processing_event = ProcessingEvent[TAggregateID](tracking=tracking)
        recordings = await self._record(processing_event)
        await self._take_snapshots(processing_event)
        self._notify(recordings)
        return recordings

    async def record_tracking(self, tracking: Tracking) -> list[Any]:
        """Record ``tracking`` alone, with no new events: an event that the
        projection has not processed (skipped by the error policy, or
        filtered out by its topics) counts as processed.

        Raises :class:`~asyncsourcing.persistence.IntegrityError` when the
        position is recorded already.
        """
        return await self._record(ProcessingEvent[TAggregateID](tracking=tracking))

    @abstractmethod
    async def policy(
        self,
        domain_event: DomainEventProtocol[TAggregateID],
        processing_event: ProcessingEvent[TAggregateID],
    ) -> None:
        """Collect new events on ``processing_event`` (``collect_events()``),
        never with :meth:`save`, so they are recorded with the tracking."""
