"""The base class of infrastructure factories, and how ``PERSISTENCE_MODULE``
picks a backend's; also importable from :mod:`asyncsourcing.persistence`.
"""

from __future__ import annotations

import importlib
from abc import abstractmethod
from types import ModuleType
from typing import TYPE_CHECKING, Any, Generic, Self, TypeVar

from eventsourcing.persistence import (
    BaseInfrastructureFactory,
    Cipher,
    Compressor,
    InfrastructureFactoryError,
    Mapper,
    Transcoder,
)
from eventsourcing.utils import Environment, EnvType, resolve_topic, strtobool

from asyncsourcing.resources import Resource

if TYPE_CHECKING:
    from eventsourcing.domain import TAggregateID

    from asyncsourcing.persistence import (
        AggregateRecorder,
        ApplicationRecorder,
        ProcessRecorder,
        Recorder,
        TrackingRecorder,
    )

__all__ = ["InfrastructureFactory"]


TTrackingRecorder = TypeVar("TTrackingRecorder", bound="TrackingRecorder")
_R = TypeVar("_R", bound="Recorder")


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
