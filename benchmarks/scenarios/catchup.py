"""Scenario 2: project already recorded events into the tutorial's counters view."""

from __future__ import annotations

from typing import ClassVar
from uuid import UUID

from eventsourcing.application import Application as ESApplication

from asyncsourcing.application import Application
from benchmarks.libs import (
    as_view_class,
    es_view_class,
    insert_as,
    insert_es,
    stored_events,
)
from benchmarks.projecting import (
    CatchUp,
    as_catch_up,
    as_prefilled_application,
    es_catch_up,
    es_prefilled_application,
)
from benchmarks.results import Metric, Trial
from benchmarks.scenarios.base import Context, Scenario
from examples.eventcounters.projection import (
    BulkEventCountersProjection,
    EventCountersProjection,
)

__all__ = ["BulkCatchUpScenario", "CatchUpScenario"]

UNTIL_WAIT = Metric("until wait() returns", "events/s", higher_is_better=True)
UNTIL_COMMITTED = Metric(
    "until last event processed", "events/s", higher_is_better=True
)


class CatchUpScenario(Scenario):
    #: asyncsourcing's projection; eventsourcing's is always the tutorial's.
    projection_class: ClassVar[type[EventCountersProjection]] = EventCountersProjection

    name: ClassVar[str] = "catchup"
    title: ClassVar[str] = "2. catch-up"
    description: ClassVar[str] = (
        "N events (aggregates of one `Created` and four `Aggregate.Event`) are "
        "recorded in batches of 5,000 with `insert_events()`, then a "
        "`ProjectionRunner` with the tutorial's `EventCountersProjection` "
        "projects them into the backend's counters view. eventsourcing "
        "commits one view transaction per event; asyncsourcing's runner, "
        "while catching up, processes the events it has already read in "
        "batches of up to 500 inside one view transaction (live events one "
        "at a time). Timed from the runner's construction until "
        "`runner.wait(last_position)` returns, and until the projection "
        "returned from processing the last event (this leaves out "
        "eventsourcing's polling `wait()`, whose sleeps grow from 0.1 to "
        "0.8 s; for asyncsourcing the last batch's commit follows it). The "
        "view's counters are checked against the number of events. On "
        "SQLite eventsourcing has no subscription "
        "(`subscribe()` raises `NotImplementedError`): its numbers there come "
        "from a loop over `select_notifications()` pages of 500 calling the "
        "same projection, in one thread."
    )

    def metrics(self, ctx: Context) -> list[Metric]:
        return [UNTIL_WAIT, UNTIL_COMMITTED]

    def note(self, library: str, backend: str) -> str | None:
        if library == "eventsourcing" and backend == "sqlite":
            return "select_notifications loop, no subscription"
        return None

    def _trial(self, catch_up: CatchUp, last: int) -> Trial:
        counted = catch_up.created + catch_up.subsequent
        if counted != last:
            msg = (
                f"the view counted {counted} events "
                f"({catch_up.created} created), expected {last}"
            )
            raise AssertionError(msg)
        return Trial(
            values={
                UNTIL_WAIT.name: last / catch_up.until_wait,
                UNTIL_COMMITTED.name: last / catch_up.until_processed,
            }
        )

    def run_eventsourcing(self, ctx: Context) -> Trial:
        events = stored_events(ctx.profile.catchup_events)
        env = ctx.env("eventsourcing")
        app = ESApplication[UUID](env)
        last = insert_es(app.recorder, events)
        app_class: type[ESApplication[UUID]] = ESApplication[UUID]
        if ctx.backend == "popo":
            app_class = es_prefilled_application(app.recorder)
        else:
            app.close()
        catch_up = es_catch_up(
            env,
            es_view_class(ctx.backend),
            last,
            application_class=app_class,
            with_subscription=ctx.backend != "sqlite",
        )
        return self._trial(catch_up, last)

    async def run_asyncsourcing(self, ctx: Context) -> Trial:
        events = stored_events(ctx.profile.catchup_events)
        env = ctx.env("asyncsourcing")
        app = Application[UUID](env)
        last = await insert_as(app.recorder, events)
        app_class: type[Application[UUID]] = Application[UUID]
        if ctx.backend == "popo":
            app_class = as_prefilled_application(app.recorder)
        else:
            await app.close()
        catch_up = await as_catch_up(
            env,
            as_view_class(ctx.backend),
            last,
            application_class=app_class,
            projection_class=self.projection_class,
        )
        return self._trial(catch_up, last)


class BulkCatchUpScenario(CatchUpScenario):
    name: ClassVar[str] = "bulkcatchup"
    title: ClassVar[str] = "2b. bulk catch-up"
    description: ClassVar[str] = (
        "As the catch-up, but asyncsourcing's runner has the examples' "
        "`BulkEventCountersProjection`: its `process_events()` counts each "
        "catch-up batch (up to 500 events) and adds the counts with one view "
        "command (one upsert statement, the batch's last tracking), where "
        "the tutorial's projection makes one command per event inside the "
        "batch's transaction. eventsourcing runs the tutorial's projection, "
        "as in the catch-up (it has no batches), in the same run."
    )
    projection_class: ClassVar[type[EventCountersProjection]] = (
        BulkEventCountersProjection
    )
