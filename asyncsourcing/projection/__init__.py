"""Projections: follow an application's sequence into a materialised view.

A :class:`ProjectionRunner` subscribes to an application from the position
its view last recorded, and awaits the projection's ``process_event()`` for
each event, in a task of its own. Usage::

    async with ProjectionRunner(
        application_class=DogSchool,
        projection_class=CountersProjection,
        view_class=POPOCounters,
    ) as runner:
        recordings = await runner.app.save(dog)
        view = runner.projection.view
        await view.wait(runner.app.name, recordings[-1].notification.id)

or, in a script, ``asyncio.run(runner.run_forever())``. Runners of one
projection in several processes share it: one leads (processes), the others
stand by (:class:`Role`; see :mod:`asyncsourcing.leases`). A projection's
``version`` gives it tables of its own, so a new version is rebuilt beside
the serving one (:class:`ProjectionVersions`, :mod:`asyncsourcing.versions`),
and its handlers can tell replays (:mod:`.replay`).
"""

from asyncsourcing.persistence import ParkedEvent
from asyncsourcing.policies import Backoff, ErrorPolicy, OnError
from asyncsourcing.projection.leadership import Role
from asyncsourcing.projection.projections import EventSourcedProjection, Projection
from asyncsourcing.projection.rebuild import (
    ProjectionVersions,
    RebuildProgress,
    VersionInfo,
)
from asyncsourcing.projection.replay import (
    allow_side_effects,
    is_replaying,
    side_effect,
)
from asyncsourcing.projection.runners import (
    BaseProjectionRunner,
    EventSourcedProjectionRunner,
    ProjectionRunner,
    ProjectionStoppedError,
)
from asyncsourcing.projection.subscription import ApplicationSubscription
from asyncsourcing.statistics import RunnerStatistics

__all__ = [
    "ApplicationSubscription",
    "Backoff",
    "BaseProjectionRunner",
    "ErrorPolicy",
    "EventSourcedProjection",
    "EventSourcedProjectionRunner",
    "OnError",
    "ParkedEvent",
    "Projection",
    "ProjectionRunner",
    "ProjectionStoppedError",
    "ProjectionVersions",
    "RebuildProgress",
    "Role",
    "RunnerStatistics",
    "VersionInfo",
    "allow_side_effects",
    "is_replaying",
    "side_effect",
]
