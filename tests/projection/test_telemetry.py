"""Runner statistics as OpenTelemetry metrics, read with the SDK's in-memory reader."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import pytest

from asyncsourcing.application import Application
from asyncsourcing.domain import Aggregate
from asyncsourcing.projection import ProjectionRunner
from asyncsourcing.telemetry import RunnerMetrics
from examples.eventcounters.projection import EventCountersProjection
from examples.eventcounters.views import POPOEventCounters

metrics_sdk = pytest.importorskip("opentelemetry.sdk.metrics")
export = pytest.importorskip("opentelemetry.sdk.metrics.export")


def collected(reader: Any) -> dict[str, list[tuple[dict[str, str], int]]]:
    """Instrument name -> [(attributes, value)] from one collection."""
    points: dict[str, list[tuple[dict[str, str], int]]] = {}
    data = reader.get_metrics_data()
    if data is None:  # Nothing observed.
        return points
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                points[metric.name] = [
                    (dict(p.attributes), p.value) for p in metric.data.data_points
                ]
    return points


async def test_runner_statistics_are_reported_as_metrics() -> None:
    reader = export.InMemoryMetricReader()
    meter = metrics_sdk.MeterProvider(metric_readers=[reader]).get_meter("test")
    async with ProjectionRunner(
        application_class=Application[UUID],
        projection_class=EventCountersProjection,
        view_class=POPOEventCounters,
    ) as runner:
        aggregate = Aggregate()
        aggregate.trigger_event(Aggregate.Event)
        recordings = await runner.app.save(aggregate)
        await runner.wait(recordings[-1].notification.id)

        async with RunnerMetrics(runner, meter=meter, interval=0.05) as metrics:
            points = collected(reader)
            attributes = {"application": "Application", "projection": "eventcounters"}
            assert points["asyncsourcing.runner.position"] == [(attributes, 2)]
            assert points["asyncsourcing.runner.lag"] == [(attributes, 0)]
            assert points["asyncsourcing.runner.events"] == [(attributes, 2)]
            assert points["asyncsourcing.runner.running"] == [(attributes, 1)]
            assert points["asyncsourcing.runner.errors"] == [(attributes, 0)]

            # Refreshed from the runner, not from the collection.
            recordings = await runner.app.save(Aggregate())
            await runner.wait(recordings[-1].notification.id)
            await metrics.refresh()
            points = collected(reader)
            assert points["asyncsourcing.runner.position"] == [(attributes, 3)]
            assert points["asyncsourcing.runner.events"] == [(attributes, 3)]

    # Once exited, the runner is no longer reported.
    assert collected(reader).get("asyncsourcing.runner.position", []) == []


def test_interval_must_be_positive() -> None:
    runner = ProjectionRunner(
        application_class=Application[UUID],
        projection_class=EventCountersProjection,
        view_class=POPOEventCounters,
    )
    with pytest.raises(ValueError, match="interval"):
        RunnerMetrics(runner, interval=0)
