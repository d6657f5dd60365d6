"""The versions of a projection's view, for readers and operators:
:class:`ProjectionVersions` (what ``asyncsourcing versions``, ``rebuild``
and ``reset`` do).

How a reader names the version it reads:

* ``await versions.serving_view()``: the view of the version that serves,
  read from ``asyncsourcing_versions`` at each call (one primary-key read),
  so that readers move to a new version at the moment the switch commits,
  all at once;
* ``await versions.view(2)``: that version, pinned (what a deployment whose
  code only knows version 2 uses);
* a view constructed as before (``factory.construct_tracking_recorder()``,
  with the projection's name as the environment's): version 1's tables.

A rebuild runs the new version in the background beside the serving one,
reporting its progress, until its lag is under a threshold; then it
switches, in one transaction; the old version's tables stay until
``reset`` drops them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic

from eventsourcing.utils import EnvType

from asyncsourcing.factory import InfrastructureFactory
from asyncsourcing.leases import partition_lease_name
from asyncsourcing.persistence import TrackingRecorder, WaitInterruptedError
from asyncsourcing.projection.base import TApplication
from asyncsourcing.projection.environment import construct_env, with_defaults
from asyncsourcing.projection.projections import Projection, TView
from asyncsourcing.projection.runners import ProjectionRunner
from asyncsourcing.resources import Resource
from asyncsourcing.sql.tracking import SQLTrackingRecorder
from asyncsourcing.versions import (
    VersionError,
    VersionRecord,
    Versions,
    VersionStatus,
    find_version,
    versioned_name,
)

__all__ = ["ProjectionVersions", "RebuildProgress", "VersionInfo"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VersionInfo:
    """A version of a projection, its position and its lag."""

    record: VersionRecord
    position: int | None
    """The last position its view records; None: none yet."""
    lag: int
    """Notifications of the application after :attr:`position`."""

    @property
    def version(self) -> int:
        return self.record.version

    @property
    def status(self) -> VersionStatus:
        return self.record.status


@dataclass(frozen=True)
class RebuildProgress:
    """How far a rebuild has got: given to ``on_progress`` while it runs."""

    version: int
    position: int
    """The last position the new version's view records (0: none)."""
    head: int
    """The application's last notification id."""
    started_at_position: int
    elapsed: float
    """Seconds since the rebuild started."""
    rate: float | None
    """Events per second over the last few seconds; None at first."""
    role: str
    """This process's runner: "leader", or "standby" while another builds."""

    @property
    def lag(self) -> int:
        return max(self.head - self.position, 0)

    @property
    def fraction(self) -> float:
        """Done, from 0 to 1."""
        return 1.0 if self.head <= 0 else min(self.position / self.head, 1.0)

    @property
    def eta(self) -> float | None:
        """Seconds until the lag is gone at :attr:`rate`; None if unknown."""
        if not self.rate:
            return None
        return self.lag / self.rate


OnProgress = Callable[[RebuildProgress], Awaitable[None] | None]


class ProjectionVersions(Resource, Generic[TApplication, TView]):
    """The versions of a projection's view: list them, give readers the
    serving one, rebuild, switch and reset.

    Constructed like a :class:`ProjectionRunner` (without IO); an async
    context manager that closes the views' connections and the
    application's on the way out. The versions are recorded in the view's
    database (``asyncsourcing_versions``): not in memory, where each runner
    has a view of its own (:class:`VersionError`).
    """

    progress_interval = 1.0
    """Seconds between two reports of a rebuild's progress."""

    switch_wait = 5.0
    """Seconds a switch waits at most for the old version to reach the new
    one's position (see :meth:`switch`)."""

    def __init__(
        self,
        *,
        application_class: type[TApplication],
        projection_class: type[Projection[TView]],
        view_class: type[TView],
        env: EnvType | None = None,
        env_defaults: Mapping[str, str] | None = None,
    ) -> None:
        self.application_class = application_class
        self.projection_class = projection_class
        self.view_class = view_class
        self.name = projection_class.name
        self._env = with_defaults(env, env_defaults)
        self._factories: dict[int, InfrastructureFactory[Any]] = {}
        self._views: dict[int, TView] = {}
        self._app: TApplication | None = None
        self._registry: Versions | None = None
        self._registry_factory: InfrastructureFactory[Any] | None = None

    # Readers.

    async def view(self, version: int) -> TView:
        """The view of ``version`` (its tables made if they do not exist)."""
        view = self._views.get(version)
        if view is None:
            factory: InfrastructureFactory[Any] = InfrastructureFactory.construct(
                construct_env(self.name, self._env, version=version)
            )
            self._factories[version] = factory
            view = await factory.tracking_recorder(self.view_class)
            self._views[version] = view
        return view

    async def serving(self) -> VersionRecord | None:
        """The record of the serving version; None before any has run."""
        for record in await self.records():
            if record.status is VersionStatus.SERVING:
                return record
        return None

    async def serving_view(self) -> TView:
        """The view of the version that serves now (the class's version
        before any has run)."""
        record = await self.serving()
        return await self.view(
            self.projection_class.version if record is None else record.version
        )

    # Operators.

    async def records(self) -> list[VersionRecord]:
        """Every recorded version, by version."""
        return await (await self._versions()).records(self.name)

    async def list(self) -> list[VersionInfo]:
        """Every recorded version with its position and its lag."""
        head = await self._head()
        infos = []
        for record in await self.records():
            view = await self.view(record.version)
            position = await view.max_tracking_id(record.application_name)
            infos.append(VersionInfo(record, position, max(head - (position or 0), 0)))
        return infos

    async def switch(self, version: int) -> VersionRecord:
        """Make ``version`` serve, in one transaction; its replay mark becomes
        the position the old version had reached by then, or its own if
        greater.

        The old version's leader is fenced off in the same transaction
        (with leadership on, the default): it commits nothing after the
        switch, and its runners come back retired, replaying. Events that
        the new version processed while building beyond the old version's
        position would get their side effects from neither, so the switch
        first waits, up to :attr:`switch_wait` seconds, for the old version
        to reach the new one's position, if a runner of it leads.
        """
        versions = await self._versions()
        records = await versions.records(self.name)
        record = find_version(records, self.name, version)
        serving = [r.version for r in records if r.status is VersionStatus.SERVING]
        views = [await self.view(v) for v in [*serving, version]]
        recorders = [_sql_view(v) for v in views]
        leases = views[0].leases
        app_name = record.application_name
        if (
            serving
            and serving[0] != version
            and await self._leader(views[0], app_name, serving[0]) is not None
        ):
            with contextlib.suppress(TimeoutError):
                await views[0].wait(
                    app_name,
                    await views[-1].max_tracking_id(app_name),
                    timeout=self.switch_wait,
                )

        # A partitioned version's runners hold a lease per partition.
        old_partitions = [
            len(await view.partition_positions(app_name)) for view in views[:-1]
        ]

        async def positions(conn: Any) -> int | None:
            if leases is not None:
                # First, so that the old version's transactions in flight
                # have committed when its position is read, and it commits
                # none after: its runners stand by and come back retired.
                for old, partitions in zip(serving, old_partitions, strict=True):
                    name = versioned_name(self.name, old)
                    for lease_name in [
                        name,
                        *(partition_lease_name(name, p) for p in range(partitions)),
                    ]:
                        await leases.fence_out(conn, app_name, lease_name)
            mark = None
            for recorder in recorders:
                mark = Versions.greater(
                    mark, await recorder.read_position(conn, app_name)
                )
            return mark

        switched = await versions.switch(self.name, version, positions)
        logger.info(
            "Projection %r: version %d serves (replay mark %s)",
            self.name,
            version,
            switched.replay_until,
        )
        return switched

    async def reset(self, version: int) -> None:
        """Drop the tables of ``version``'s view, its tracking with them.

        The serving version stays serving, its replay mark raised to the
        position it had reached: its runner then processes everything
        again, as a replay up to there. Another version is forgotten.
        Raises :class:`VersionError` while a runner of the version holds
        its lease: stop its runners first.
        """
        versions = await self._versions()
        record = find_version(await versions.records(self.name), self.name, version)
        view = await self.view(version)
        leader = await self._leader(view, record.application_name, version)
        if leader is not None:
            msg = (
                f"Projection {self.name!r} version {version} is being run "
                f"(lease held by {leader}): stop its runners first"
            )
            raise VersionError(msg)
        position = await view.max_tracking_id(record.application_name)
        await view.drop_tables()
        if record.status is VersionStatus.SERVING:
            await versions.mark_replay(self.name, version, position)
        else:
            await versions.forget(self.name, version)
        await self._forget_view(version)
        logger.info(
            "Projection %r: version %d reset (it had processed up to %s)",
            self.name,
            version,
            position,
        )

    async def rebuild(
        self,
        version: int | None = None,
        *,
        max_lag: int = 100,
        on_progress: OnProgress | None = None,
        switch: bool = True,
    ) -> VersionRecord:
        """Build ``version`` (default: the projection class's) with a runner
        of this process until its lag is at most ``max_lag``, reporting its
        progress every :attr:`progress_interval`; then switch to it (unless
        ``switch`` is false) and stop the runner.

        Where another process runs the version already, this one's runner
        stands by (leadership) and the rebuild follows that one's progress.
        Raises the runner's error if it stops by one.
        """
        version = self.projection_class.version if version is None else version
        runner = ProjectionRunner(
            application_class=self.application_class,
            projection_class=self.projection_class,
            view_class=self.view_class,
            env=self._env,
            version=version,
        )
        async with runner:
            view = runner.view
            started = time.monotonic()
            first = await view.max_tracking_id(runner.app_name) or 0
            samples: list[tuple[float, int]] = []
            running = asyncio.create_task(runner.run_forever())
            stopped = asyncio.Event()
            running.add_done_callback(lambda _: stopped.set())
            try:
                while True:
                    position = await view.max_tracking_id(runner.app_name) or 0
                    head = await runner.app.recorder.max_notification_id() or 0
                    now = time.monotonic()
                    samples = [*samples[-9:], (now, position)]
                    progress = RebuildProgress(
                        version=version,
                        position=position,
                        head=head,
                        started_at_position=first,
                        elapsed=now - started,
                        rate=_rate(samples),
                        role=str(runner.role),
                    )
                    if on_progress is not None:
                        reported = on_progress(progress)
                        if reported is not None:
                            await reported
                    if progress.lag <= max_lag:
                        break
                    # Woken early by the commit that brings the lag down.
                    with contextlib.suppress(TimeoutError, WaitInterruptedError):
                        await view.wait(
                            runner.app_name,
                            head - max_lag,
                            timeout=self.progress_interval,
                            interrupt=stopped,
                        )
                    if running.done():
                        running.result()  # Its error, if any.
                        msg = f"The runner of version {version} stopped"
                        raise VersionError(msg)
                record = runner.version_record
                if switch:
                    record = await self.switch(version)
            finally:
                runner.stop()
                running.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await running
        assert record is not None
        return record

    async def close(self) -> None:
        """Close the views' connections and the application's."""
        self._views.clear()
        self._registry = None
        factories, self._factories = self._factories, {}
        if self._registry_factory is not None:
            factories[0], self._registry_factory = self._registry_factory, None
        for factory in factories.values():
            await factory.close()
        if self._app is not None:
            app, self._app = self._app, None
            await app.close()

    # Helpers.

    async def _versions(self) -> Versions:
        """The versions table, made on first use; read with a view of its
        own that makes no tables, so that listing versions makes none."""
        if self._registry is not None:
            return self._registry
        env = dict(self._env or {})
        env[f"{self.name.upper()}_{InfrastructureFactory.CREATE_TABLE}"] = "false"
        factory: InfrastructureFactory[Any] = InfrastructureFactory.construct(
            construct_env(self.name, env)
        )
        self._registry_factory = factory
        view: TrackingRecorder = factory.construct_tracking_recorder(self.view_class)
        versions = view.versions
        if versions is None:
            msg = (
                f"{type(view).__qualname__} keeps no versions: they need the "
                "view in a database (SQLite, PostgreSQL), not in memory"
            )
            raise VersionError(msg)
        await versions.create_table()
        if view.leases is not None:
            await view.leases.create_table()  # A switch fences in it.
        self._registry = versions
        return versions

    async def _leader(
        self, view: TrackingRecorder, application_name: str, version: int
    ) -> str | None:
        """The owner of the lease of ``version`` if it is held (a runner of
        the version leads), else None."""
        leases = view.leases
        if leases is None:
            return None
        lease = await leases.read(application_name, versioned_name(self.name, version))
        # A released lease expires as it is released.
        if lease is not None and lease.expires_at > datetime.now(UTC):
            return lease.owner
        return None

    async def _head(self) -> int:
        if self._app is None:
            self._app = self.application_class(self._env)
        return await self._app.recorder.max_notification_id() or 0

    async def _forget_view(self, version: int) -> None:
        self._views.pop(version, None)
        factory = self._factories.pop(version, None)
        if factory is not None:
            await factory.close()


def _sql_view(view: Any) -> SQLTrackingRecorder[Any]:
    if not isinstance(view, SQLTrackingRecorder):
        msg = f"{type(view).__qualname__} is not a view in an SQL database"
        raise VersionError(msg)
    return view


def _rate(samples: list[tuple[float, int]]) -> float | None:
    """Events per second between the first and the last sample."""
    (t0, p0), (t1, p1) = samples[0], samples[-1]
    if t1 - t0 < 0.5:
        return None
    return (p1 - p0) / (t1 - t0)
