"""Async persistence interfaces: recorders, subscriptions and the factory.

The value objects (:class:`StoredEvent`, :class:`Notification`,
:class:`Tracking`, :class:`Recording`) and the PEP 249 errors are the very
objects of :mod:`eventsourcing.persistence`, so ``except IntegrityError``
catches the errors of both libraries. Everything that does IO is async.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any, Generic, Self, TypeVar
from uuid import UUID

from eventsourcing.persistence import (
    BaseInfrastructureFactory,
    Cipher,
    Compressor,
    DatabaseError,
    DataError,
    InfrastructureFactoryError,
    IntegrityError,
    InterfaceError,
    InternalError,
    Mapper,
    Notification,
    NotSupportedError,
    OperationalError,
    PersistenceError,
    ProgrammingError,
    Recording,
    StoredEvent,
    Tracking,
    Transcoder,
    WaitInterruptedError,
)
from eventsourcing.utils import Environment, EnvType, resolve_topic, strtobool

from asyncsourcing.resources import Resource
from asyncsourcing.waiting import PositionBoard

if TYPE_CHECKING:
    from eventsourcing.domain import TAggregateID

    from asyncsourcing.leases import Lease, Leases

__all__ = [
    "AggregateRecorder",
    "ApplicationRecorder",
    "DataError",
    "DatabaseError",
    "InfrastructureFactory",
    "InfrastructureFactoryError",
    "IntegrityError",
    "InterfaceError",
    "InternalError",
    "Mapper",
    "NotSupportedError",
    "Notification",
    "OperationalError",
    "ParkedEvent",
    "PersistenceError",
    "ProcessRecorder",
    "ProgrammingError",
    "Recorder",
    "Recording",
    "StoredEvent",
    "Subscription",
    "Tracking",
    "TrackingBatch",
    "TrackingRecorder",
    "WaitInterruptedError",
    "parked_table_name",
]


class Recorder:
    """Base class of recorders.

    Constructing a recorder never does IO. Backends that keep tables create
    them with :meth:`create_table`, which is idempotent.
    """

    async def create_table(self) -> None:
        """Create the recorder's tables if they do not exist."""


class AggregateRecorder(Recorder, ABC):
    """Records and selects stored events in aggregate sequences."""

    @abstractmethod
    async def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """Write ``stored_events`` atomically.

        Raises :class:`IntegrityError`, recording nothing, when an event's
        originator version is already taken. Application recorders return
        the notification ids given to the events.
        """

    @abstractmethod
    async def select_events(
        self,
        originator_id: UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Sequence[StoredEvent]:
        """Read the stored events of one aggregate sequence."""


class ApplicationRecorder(AggregateRecorder):
    """Records events in aggregate sequences and in the application sequence."""

    @abstractmethod
    async def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Notification]:
        """Read up to ``limit`` notifications in order of their ids.

        Ids run from ``start`` (included unless ``inclusive_of_start`` is
        false) to ``stop`` (included); ``topics``, when not empty, keeps only
        the notifications whose topic is one of them.
        """

    @abstractmethod
    async def max_notification_id(self) -> int | None:
        """The largest notification id, or None when nothing is recorded."""

    @abstractmethod
    def subscribe(
        self, gt: int | None = None, topics: Sequence[str] = ()
    ) -> Subscription[ApplicationRecorder]:
        """Follow the application sequence from after ``gt``.

        Returns at once, without IO: the subscription reads when it is
        iterated. It first yields what is recorded, then waits for new events.
        """


@dataclass(frozen=True)
class ParkedEvent:
    """A notification that a projection could not process, kept with its error.

    ``state`` is the notification's stored state (as recorded: compressed or
    encrypted if the application's mapper does so).
    """

    application_name: str
    notification_id: int
    topic: str
    state: bytes
    error: str
    parked_at: datetime


def parked_table_name(tracking_table_name: str) -> str:
    """The dead-letter table beside ``tracking_table_name``.

    ``x_tracking`` gives ``x_parked``, ``tracking`` gives ``parked``, and
    another name gets ``_parked`` appended.
    """
    if tracking_table_name == "tracking":
        return "parked"
    if tracking_table_name.endswith("_tracking"):
        return tracking_table_name.removesuffix("_tracking") + "_parked"
    return tracking_table_name + "_parked"


class TrackingBatch:
    """A batch transaction of a tracking recorder, as its ``async with`` gives it.

    :attr:`position` is the position of :attr:`application_name` recorded
    when the batch began, read under a lock of its tracking row that the
    batch holds until it ends: events up to it were processed by another
    runner and must not be processed again. None when no application was
    named, or nothing is recorded for it yet.
    """

    def __init__(self, application_name: str | None) -> None:
        self.application_name = application_name
        self.position: int | None = None


class TrackingRecorder(Recorder, ABC):
    """Records the positions of processed events, atomically with a view's update.

    :meth:`wait` is event-driven: backends feed the recorder's
    :class:`~asyncsourcing.waiting.PositionBoard` when tracking is committed.
    """

    _position_board: PositionBoard | None = None

    @abstractmethod
    async def insert_tracking(self, tracking: Tracking) -> None:
        """Record ``tracking``.

        Raises :class:`IntegrityError`, changing nothing, when its position
        is not greater than the recorded maximum for its application.
        """

    @abstractmethod
    async def max_tracking_id(self, application_name: str) -> int | None:
        """The largest recorded position for ``application_name``, or None."""

    async def has_tracking_id(
        self, application_name: str, notification_id: int | None
    ) -> bool:
        """True if ``notification_id`` is None or has been reached."""
        if notification_id is None:
            return True
        max_tracking_id = await self.max_tracking_id(application_name)
        return max_tracking_id is not None and max_tracking_id >= notification_id

    async def wait(
        self,
        application_name: str,
        notification_id: int | None,
        timeout: float = 1.0,
        interrupt: asyncio.Event | None = None,
    ) -> None:
        """Return once ``notification_id`` has been recorded for ``application_name``.

        Woken by the commit that records it, not by polling. Raises the builtin
        :class:`TimeoutError` after ``timeout`` seconds, and
        :class:`WaitInterruptedError` when ``interrupt`` is set first.
        Concurrent waiters share their database reads.
        """
        if notification_id is None:
            return
        board = self.position_board
        await board.wait(application_name, notification_id, timeout, interrupt)

    @property
    def position_board(self) -> PositionBoard:
        """The board through which this recorder's waiters are woken."""
        if self._position_board is None:
            self._position_board = self._construct_position_board()
        return self._position_board

    def _construct_position_board(self) -> PositionBoard:
        """Backends override this to share a board or to listen across processes."""
        return PositionBoard(self.max_tracking_id)

    async def park(
        self, tracking: Tracking, topic: str, state: bytes, error: str
    ) -> None:
        """Record a notification that could not be processed, with ``tracking``.

        The dead letter and the tracking are recorded atomically (raising
        :class:`IntegrityError`, recording neither, when the position is not
        ahead), so the notification is not processed again. Backends keep
        dead letters in a table named by :func:`parked_table_name`, made on
        first use.
        """
        msg = f"{type(self).__qualname__} cannot park events"
        raise NotImplementedError(msg)

    async def parked(self, application_name: str) -> list[ParkedEvent]:
        """The parked notifications of ``application_name``, in order of id."""
        msg = f"{type(self).__qualname__} cannot park events"
        raise NotImplementedError(msg)

    def batch_transaction(
        self, application_name: str | None = None, fence: Lease | None = None
    ) -> AbstractAsyncContextManager[TrackingBatch] | None:
        """A transaction that the recorder's own transactions join, or None.

        A projection runner processes events inside such transactions, so
        that a batch of them commits together (the view's methods need no
        change) with its last position written once. With
        ``application_name``, that application's tracking row is locked
        first and its recorded position read: see :class:`TrackingBatch`.
        With ``fence``, the transaction raises
        :class:`~asyncsourcing.leases.FencedError` unless that lease still
        holds. None (the default) means the backend does not batch.
        """
        return None

    @property
    def leases(self) -> Leases | None:
        """The leases of projections whose views are in this database, or
        None where runners need no coordination (in memory)."""
        return None


class ProcessRecorder(TrackingRecorder, ApplicationRecorder, ABC):
    """Records new events atomically with the tracking of the processed event.

    ``insert_events(stored_events, tracking=tracking)`` records both or neither.
    """


TApplicationRecorder_co = TypeVar(
    "TApplicationRecorder_co", bound=ApplicationRecorder, covariant=True
)


class Subscription(AsyncIterator[Notification], Generic[TApplicationRecorder_co]):
    """Notifications of an application sequence: first those recorded, then new ones.

    Reads in batches of at most ``batch_size`` and holds one batch at a time,
    so a slow consumer never makes memory grow. Between batches it sleeps on
    an :class:`asyncio.Event` that backends set when events are recorded.
    Use it with ``async with``; :meth:`stop` ends the iteration.
    """

    batch_size = 500

    def __init__(
        self,
        recorder: TApplicationRecorder_co,
        gt: int | None = None,
        topics: Sequence[str] = (),
    ) -> None:
        self._recorder = recorder
        self._last_notification_id = gt
        self._topics = tuple(topics)
        self._buffer: deque[Notification] = deque()
        # Every notification up to here is yielded or in the buffer, those
        # that the topics filter out included: the next read starts here.
        self._read_up_to = gt
        self._last_read_was_full = False
        self.on_caught_up: Callable[[int], Awaitable[float | None]] | None = None
        """Awaited, when set, as the subscription (with topics) is about to
        wait for news, having yielded everything it read, with the position
        it has read up to when that is past the last notification it yielded:
        the notifications in between are all filtered out by the topics. So
        the caller has dealt with every notification of its topics up to
        that position. It may return a delay in seconds: it is then awaited
        again after that delay, news or not. What it raises comes out of
        ``__anext__``."""
        self._has_been_entered = False
        self._has_been_stopped = False
        self._has_been_notified = asyncio.Event()
        self._is_listening = False

    @property
    def recorder(self) -> TApplicationRecorder_co:
        return self._recorder

    @property
    def last_notification_id(self) -> int | None:
        """The id of the last notification yielded (or ``gt``)."""
        return self._last_notification_id

    async def __aenter__(self) -> Self:
        if self._has_been_entered:
            msg = "Already entered subscription context manager"
            raise ProgrammingError(msg)
        self._has_been_entered = True
        await self._start_listening()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        self.stop()
        await self.aclose()

    def stop(self) -> None:
        """End the iteration; a task waiting in ``__anext__`` stops at once."""
        self._has_been_stopped = True
        self._has_been_notified.set()

    @property
    def is_stopped(self) -> bool:
        return self._has_been_stopped

    async def aclose(self) -> None:
        """Stop and release what the subscription holds."""
        self.stop()
        if self._is_listening:
            self._is_listening = False
            await self._stop_listening()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Notification:
        while not self._has_been_stopped:
            if self._buffer:
                notification = self._buffer.popleft()
                self._last_notification_id = notification.id
                return notification
            if not self._is_listening:
                await self._start_listening()
            # Cleared before reading, so a commit during the read is not missed.
            self._has_been_notified.clear()
            head = await self._head()
            batch = await self._recorder.select_notifications(
                start=self._read_up_to or 0,
                limit=self.batch_size,
                topics=self._topics,
                inclusive_of_start=False,
            )
            self._last_read_was_full = len(batch) >= self.batch_size
            if batch:
                self._buffer.extend(batch)
                self._read_up_to = batch[-1].id
            if head is not None and not self._last_read_was_full:
                # Ids are committed in order (invariant 3): the read, after
                # the head was, found everything of the topics up to it.
                self._read_up_to = max(self._read_up_to or 0, head)
            if not batch:
                await self._wait_for_news_or_caught_up()
        raise StopAsyncIteration

    async def _head(self) -> int | None:
        """With topics, near the end: the last notification id, before reading."""
        if not self._topics or self._last_read_was_full:
            return None
        return await self._recorder.max_notification_id()

    async def _wait_for_news_or_caught_up(self) -> None:
        position = self._read_up_to
        delay: float | None = None
        if (
            self.on_caught_up is not None
            and position is not None
            and position > (self._last_notification_id or 0)
        ):
            delay = await self.on_caught_up(position)
        if delay is None:
            await self._wait_for_news()
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._wait_for_news()

    def take_ready(self, limit: int) -> list[Notification]:
        """Up to ``limit`` notifications that are already read, without waiting."""
        taken: list[Notification] = []
        while self._buffer and len(taken) < limit and not self._has_been_stopped:
            taken.append(self._buffer.popleft())
        if taken:
            self._last_notification_id = taken[-1].id
        return taken

    def notify(self) -> None:
        """Wake the subscription: new events may have been recorded."""
        self._has_been_notified.set()

    async def _wait_for_news(self) -> None:
        """Sleep until :meth:`notify` or :meth:`stop`; backends may add a poll."""
        await self._has_been_notified.wait()

    async def _start_listening(self) -> None:
        """Register for wake-ups; called before the first read."""
        self._is_listening = True

    async def _stop_listening(self) -> None:
        """Unregister from wake-ups."""


TTrackingRecorder = TypeVar("TTrackingRecorder", bound=TrackingRecorder)
_R = TypeVar("_R", bound=Recorder)


class InfrastructureFactory(Resource, Generic[TTrackingRecorder]):
    """Constructs the mapper and the recorders of one backend.

    :meth:`construct` picks the backend named by ``PERSISTENCE_MODULE``
    (default ``asyncsourcing.popo``). Constructing a factory and its
    ``construct_*`` methods never do IO; the async methods also create the
    recorder's tables unless ``CREATE_TABLE`` is false. The factory owns the
    connections its recorders use: close it with :meth:`close` or ``async with``.
    """

    PERSISTENCE_MODULE = "PERSISTENCE_MODULE"
    DEFAULT_PERSISTENCE_MODULE = "asyncsourcing.popo"
    MAPPER_TOPIC = "MAPPER_TOPIC"
    IS_SNAPSHOTTING_ENABLED = "IS_SNAPSHOTTING_ENABLED"
    APPLICATION_RECORDER_TOPIC = "APPLICATION_RECORDER_TOPIC"
    TRACKING_RECORDER_TOPIC = "TRACKING_RECORDER_TOPIC"
    PROCESS_RECORDER_TOPIC = "PROCESS_RECORDER_TOPIC"
    CREATE_TABLE = "CREATE_TABLE"

    def __init__(self, env: Environment | EnvType | None = None) -> None:
        self.env = env if isinstance(env, Environment) else Environment(env=env)
        # eventsourcing's factory reads TRANSCODER_TOPIC, CIPHER_TOPIC,
        # CIPHER_KEY and COMPRESSOR_TOPIC; reuse it so the settings agree.
        self._codecs = BaseInfrastructureFactory[Any](self.env)

    @classmethod
    def construct(cls, env: Environment | EnvType | None = None) -> Self:
        """The factory of the backend named by ``PERSISTENCE_MODULE``."""
        if not isinstance(env, Environment):
            env = Environment(env=env)
        topic = env.get(cls.PERSISTENCE_MODULE, "") or cls.DEFAULT_PERSISTENCE_MODULE
        factory_cls = _find_factory_class(cls, topic)
        return factory_cls(env)

    # Mapping.

    def transcoder(self) -> Transcoder:
        return self._codecs.transcoder()

    def cipher(self) -> Cipher | None:
        return self._codecs.cipher()

    def compressor(self) -> Compressor | None:
        return self._codecs.compressor()

    def mapper(
        self,
        transcoder: Transcoder | None = None,
        mapper_class: type[Mapper[TAggregateID]] | None = None,
    ) -> Mapper[TAggregateID]:
        """A mapper with the configured transcoder, cipher and compressor."""
        cls: Any = mapper_class
        if cls is None:
            mapper_topic = self.env.get(self.MAPPER_TOPIC)
            cls = resolve_topic(mapper_topic) if mapper_topic else Mapper
        mapper: Mapper[TAggregateID] = cls(
            transcoder=transcoder or self.transcoder(),
            cipher=self.cipher(),
            compressor=self.compressor(),
        )
        return mapper

    def is_snapshotting_enabled(self) -> bool:
        return strtobool(self.env.get(self.IS_SNAPSHOTTING_ENABLED, "no"))

    def env_create_table(self) -> bool:
        """False when ``CREATE_TABLE`` says tables are made elsewhere."""
        return strtobool(self.env.get(self.CREATE_TABLE) or "yes")

    # Recorders, constructed without IO.

    @abstractmethod
    def construct_aggregate_recorder(
        self, purpose: str = "events"
    ) -> AggregateRecorder:
        """An aggregate recorder (``purpose`` is "events" or "snapshots")."""

    @abstractmethod
    def construct_application_recorder(self) -> ApplicationRecorder:
        """An application recorder."""

    @abstractmethod
    def construct_tracking_recorder(
        self, tracking_recorder_class: type[TTrackingRecorder] | None = None
    ) -> TTrackingRecorder:
        """A tracking recorder (a view) of the given class."""

    @abstractmethod
    def construct_process_recorder(self) -> ProcessRecorder:
        """A process recorder."""

    # Recorders, ready to use.

    async def aggregate_recorder(self, purpose: str = "events") -> AggregateRecorder:
        return await self._prepared(self.construct_aggregate_recorder(purpose))

    async def application_recorder(self) -> ApplicationRecorder:
        return await self._prepared(self.construct_application_recorder())

    async def tracking_recorder(
        self, tracking_recorder_class: type[TTrackingRecorder] | None = None
    ) -> TTrackingRecorder:
        recorder = self.construct_tracking_recorder(tracking_recorder_class)
        return await self._prepared(recorder)

    async def process_recorder(self) -> ProcessRecorder:
        return await self._prepared(self.construct_process_recorder())

    async def _prepared(self, recorder: _R) -> _R:
        if self.env_create_table():
            await recorder.create_table()
        return recorder

    def _resolve_recorder_class(
        self, topic_key: str, default: type[Any], given: type[Any] | None = None
    ) -> type[Any]:
        """``given``, else the class named by ``topic_key``, else ``default``.

        Raises :class:`InfrastructureFactoryError` naming the setting when the
        class is not a subclass of ``default``.
        """
        cls = given
        if cls is None:
            topic = self.env.get(topic_key)
            cls = resolve_topic(topic) if topic else default
        if not (isinstance(cls, type) and issubclass(cls, default)):
            msg = (
                f"{cls!r} is not a {default.__qualname__} "
                f"(from {topic_key if given is None else 'the given class'})"
            )
            raise InfrastructureFactoryError(msg)
        return cls

    async def close(self) -> None:
        """Close the connections and tasks of the factory's recorders."""


_F = TypeVar("_F", bound=InfrastructureFactory[Any])


def _find_factory_class(base: type[_F], topic: str) -> type[_F]:
    """The factory class named by ``topic``: a module or a ``module:Class``."""
    setting = InfrastructureFactory.PERSISTENCE_MODULE
    obj: object
    try:
        is_class = ":" in topic
        obj = resolve_topic(topic) if is_class else importlib.import_module(topic)
    except Exception as error:
        msg = (
            f"Cannot import persistence module {topic!r} "
            f"(from environment variable {setting}): {error}"
        )
        raise InfrastructureFactoryError(msg) from error
    if isinstance(obj, ModuleType):
        candidates = list(
            {
                member
                for member in vars(obj).values()
                if isinstance(member, type)
                and issubclass(member, base)
                and not getattr(member, "__abstractmethods__", None)
            }
        )
        if len(candidates) != 1:
            msg = (
                f"Persistence module {topic!r} (from environment variable "
                f"{setting}) defines {len(candidates)} infrastructure factory "
                f"classes, expected exactly one"
            )
            raise InfrastructureFactoryError(msg)
        return candidates[0]
    if isinstance(obj, type) and issubclass(obj, base):
        return obj
    msg = (
        f"{topic!r} (from environment variable {setting}) is neither a "
        f"persistence module nor an infrastructure factory class"
    )
    raise InfrastructureFactoryError(msg)
