"""Catching a view up with recorded events, in each library.

Shared by the catch-up scenario and the memory scenario's subprocess.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from eventsourcing.application import Application as ESApplication
from eventsourcing.persistence import InfrastructureFactory as ESInfrastructureFactory
from eventsourcing.persistence import Tracking
from eventsourcing.projection import ProjectionRunner as ESProjectionRunner
from eventsourcing.utils import Environment

from asyncsourcing.application import Application
from asyncsourcing.persistence import ApplicationRecorder
from asyncsourcing.projection import ProjectionRunner
from benchmarks.config import APP_NAME, PROJECTION_NAME
from benchmarks.es_views import ESEventCountersProjection, ESEventCountersView
from examples.eventcounters.projection import EventCountersProjection

__all__ = [
    "CatchUp",
    "as_catch_up",
    "as_prefilled_application",
    "es_catch_up",
    "es_prefilled_application",
]

#: Page size of eventsourcing's SQLite catch-up loop (its subscriptions' size).
PAGE_SIZE = 500
#: Generous: a catch-up that takes longer than this has failed.
CATCH_UP_TIMEOUT = 1800.0


@dataclass
class CatchUp:
    """Seconds from runner start until wait() returned / the last event processed."""

    until_wait: float
    until_processed: float
    created: int
    subsequent: int


def es_prefilled_application(recorder: Any) -> type[ESApplication[UUID]]:
    """An eventsourcing application class whose recorder is ``recorder``.

    For the in-memory backend, where the runner's own application must see
    events recorded before it was constructed.
    """

    class Prefilled(ESApplication[UUID]):
        name = APP_NAME

        def construct_recorder(self) -> Any:
            return recorder

    return Prefilled


def as_prefilled_application(recorder: ApplicationRecorder) -> type[Application[UUID]]:
    """An asyncsourcing application class whose recorder is ``recorder``."""

    class Prefilled(Application[UUID]):
        name = APP_NAME

        def construct_recorder(self) -> ApplicationRecorder:
            return recorder

    return Prefilled


def es_catch_up(
    env: dict[str, str],
    view_class: type[ESEventCountersView],
    last: int,
    *,
    application_class: type[ESApplication[UUID]] = ESApplication[UUID],
    with_subscription: bool = True,
) -> CatchUp:
    """Project events 1..``last`` into a fresh view with eventsourcing.

    With a ``ProjectionRunner``; or, where eventsourcing has no subscription
    (SQLite), by reading ``select_notifications()`` pages in a loop and
    calling the projection for each, in this thread.
    """
    stamps: dict[str, float] = {}

    class Timed(ESEventCountersProjection):
        name = PROJECTION_NAME

        def process_event(self, domain_event: Any, tracking: Tracking) -> None:
            super().process_event(domain_event, tracking)
            if tracking.notification_id >= last:
                stamps["processed"] = time.perf_counter()

    started = time.perf_counter()
    if with_subscription:
        with ESProjectionRunner(
            application_class=application_class,
            projection_class=Timed,
            view_class=view_class,
            env=env,
        ) as runner:
            runner.wait(last, timeout=CATCH_UP_TIMEOUT)
            until_wait = time.perf_counter() - started
            view = runner.projection.view
            created = view.get_created_event_counter()
            subsequent = view.get_subsequent_event_counter()
    else:
        factory = ESInfrastructureFactory[ESEventCountersView].construct(
            env=Environment(name=PROJECTION_NAME, env=env)
        )
        app = application_class(env)
        try:
            view = factory.tracking_recorder(view_class)
            projection = Timed(view=view)
            position = view.max_tracking_id(app.name) or 0
            while position < last:
                page = app.recorder.select_notifications(
                    start=position,
                    limit=PAGE_SIZE,
                    topics=projection.topics,
                    inclusive_of_start=False,
                )
                if not page:
                    break
                for notification in page:
                    projection.process_event(
                        app.mapper.to_domain_event(notification),
                        Tracking(app.name, notification.id),
                    )
                position = page[-1].id
            view.wait(app.name, last, timeout=CATCH_UP_TIMEOUT)
            until_wait = time.perf_counter() - started
            created = view.get_created_event_counter()
            subsequent = view.get_subsequent_event_counter()
        finally:
            app.close()
            factory.close()
    return CatchUp(
        until_wait=until_wait,
        until_processed=stamps["processed"] - started,
        created=created,
        subsequent=subsequent,
    )


async def as_catch_up(
    env: dict[str, str],
    view_class: type[Any],
    last: int,
    *,
    application_class: type[Application[UUID]] = Application[UUID],
    projection_class: type[EventCountersProjection] = EventCountersProjection,
) -> CatchUp:
    """Project events 1..``last`` into a fresh view with asyncsourcing's
    runner and ``projection_class`` (an event counters projection, bulk or not)."""
    stamps: dict[str, float] = {}

    class Timed(projection_class):  # type: ignore[valid-type,misc]
        name = PROJECTION_NAME

        async def process_event(self, domain_event: Any, tracking: Tracking) -> None:
            await super().process_event(domain_event, tracking)
            if tracking.notification_id >= last:
                stamps["processed"] = time.perf_counter()

        async def process_events(self, events: Any) -> None:
            await super().process_events(events)
            if events[-1][1].notification_id >= last:
                stamps["processed"] = time.perf_counter()

    started = time.perf_counter()
    async with ProjectionRunner(
        application_class=application_class,
        projection_class=Timed,
        view_class=view_class,
        env=env,
    ) as runner:
        await runner.wait(last, timeout=CATCH_UP_TIMEOUT)
        until_wait = time.perf_counter() - started
        view = runner.projection.view
        created = await view.get_created_event_counter()
        subsequent = await view.get_subsequent_event_counter()
    return CatchUp(
        until_wait=until_wait,
        until_processed=stamps["processed"] - started,
        created=created,
        subsequent=subsequent,
    )
