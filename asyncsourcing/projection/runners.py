"""Projection runners: a projection of an application, processed in a task.

:class:`ProjectionRunner` runs a :class:`Projection` into a view,
:class:`EventSourcedProjectionRunner` an :class:`EventSourcedProjection`;
each a :class:`BaseProjectionRunner` (see :mod:`.base`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Generic, TypeVar, cast

from eventsourcing.utils import EnvType

from asyncsourcing.persistence import InfrastructureFactory, Tracking, TrackingRecorder
from asyncsourcing.policies import ErrorPolicyLike
from asyncsourcing.projection.base import (
    BaseProjectionRunner,
    ProjectionStoppedError,
    TApplication,
)
from asyncsourcing.projection.environment import construct_env, with_defaults
from asyncsourcing.projection.projections import (
    EventSourcedProjection,
    Projection,
    TView,
)

__all__ = [
    "BaseProjectionRunner",
    "EventSourcedProjectionRunner",
    "ProjectionRunner",
    "ProjectionStoppedError",
]


class ProjectionRunner(
    BaseProjectionRunner[TApplication], Generic[TApplication, TView]
):
    """Runs a :class:`Projection` into a view of class ``view_class``.

    The view is constructed by the infrastructure factory of the projection's
    environment (variables prefixed with the projection's name win), the
    application by its own.

    Each variable is taken from ``env``, else the process environment, else
    ``env_defaults``: defaults that the process environment overrides.

    ``version`` (default: the projection class's :attr:`~Projection.version`)
    names the version to run: its own tables, tracking and lease, and its
    record in the view's database, made when the runner starts (serving if
    it is the projection's first version, else building: see
    :mod:`asyncsourcing.versions`). With ``CREATE_TABLE=false`` version 1
    records nothing, as the tables of its versions may not exist.
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
        version: int | None = None,
    ) -> None:
        version = projection_class.version if version is None else version
        env = with_defaults(env, env_defaults)
        self.factory: InfrastructureFactory[TView] = InfrastructureFactory.construct(
            construct_env(projection_class.name, env, version=version)
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
            version=version,
            # Tables made elsewhere (CREATE_TABLE=false) may lack the versions'.
            versions=self.view.versions if self._records_versions(version) else None,
        )

    def _records_versions(self, version: int) -> bool:
        return version > 1 or self.factory.env_create_table()

    async def _prepare(self) -> None:
        if self.factory.env_create_table():
            await self.view.create_table()
            await self._loop.create_table()
            if self.view.versions is not None:
                await self.view.versions.create_table()

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
        env = with_defaults(env, env_defaults)
        self.projection: TEventSourcedProjection = projection_class(
            env=construct_env(projection_class.name, env)
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
            await self._loop.create_table()

    async def _record_skipped(self, tracking: Tracking) -> None:
        """An empty processing event: the tracking, no new events."""
        await self.projection.record_tracking(tracking)

    def _rolled_back(self) -> None:
        """Forget cached aggregates: they may hold events that were not recorded."""
        self.projection.repository.clear_cache()

    async def _close_projection(self) -> None:
        await self.projection.close()
