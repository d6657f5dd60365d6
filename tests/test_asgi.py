"""A projection runner for the lifetime of an ASGI app (any app with ``.state``)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any
from uuid import UUID

import pytest

from asyncsourcing.application import Application
from asyncsourcing.asgi import projection_lifespan
from asyncsourcing.domain import Aggregate
from asyncsourcing.projection import ProjectionRunner
from examples.eventcounters.projection import (
    EventCountersProjection,
    SpannerThrown,
    SpannerThrownError,
)
from examples.eventcounters.views import POPOEventCounters


def make_runner() -> ProjectionRunner[Any, Any]:
    return ProjectionRunner(
        application_class=Application[UUID],
        projection_class=EventCountersProjection,
        view_class=POPOEventCounters,
    )


async def test_runner_runs_while_the_app_serves() -> None:
    app = SimpleNamespace(state=SimpleNamespace())
    lifespan = projection_lifespan(make_runner)
    before = asyncio.all_tasks()
    async with lifespan(app):
        runner = app.state.runner
        assert app.state.application is runner.app
        assert runner.is_running
        recordings = await runner.app.save(Aggregate())
        view = runner.projection.view
        await view.wait(runner.app.name, recordings[-1].notification.id)
    assert not hasattr(app.state, "runner")
    assert not runner.is_running
    assert asyncio.all_tasks() == before

    # Each start gets a runner of its own.
    async with lifespan(app):
        assert app.state.runner is not runner


async def test_projection_error_is_raised_at_shutdown() -> None:
    app = SimpleNamespace(state=SimpleNamespace())

    async def serve_until_shutdown() -> None:
        async with projection_lifespan(make_runner)(app):
            aggregate = Aggregate()
            aggregate.trigger_event(SpannerThrown)
            await app.state.runner.app.save(aggregate)
            await asyncio.sleep(0.1)

    with pytest.raises(SpannerThrownError):
        await serve_until_shutdown()
