"""The backends of the tests run on every backend (the ``backend`` fixture, in
tests/conftest.py, gives one of them to a test) and the aggregates they save."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from asyncsourcing.application import Application
from asyncsourcing.domain import Aggregate
from asyncsourcing.projection import ProjectionRunner
from examples.eventcounters.projection import EventCountersProjection
from examples.eventcounters.views import POPOEventCounters
from tests.support.batches import PostgresCountingBatches, SQLiteCountingBatches
from tests.support.postgres import factory_env

__all__ = ["BACKENDS", "VIEW_CLASSES", "Backend", "aggregate_with", "backend_env"]

BACKENDS = ["popo", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


VIEW_CLASSES: dict[str, type[Any]] = {
    "popo": POPOEventCounters,
    "sqlite": SQLiteCountingBatches,
    "postgres": PostgresCountingBatches,
}


class Backend:
    """A backend's environment, and runners of the event counters on it.

    ``view_class`` is the counters view of the backend: by default one that
    counts the runner's batches (:data:`VIEW_CLASSES`).
    """

    def __init__(
        self, name: str, env: dict[str, str], view_class: type[Any] | None = None
    ) -> None:
        self.name = name
        self.env = env
        self.view_class = view_class or VIEW_CLASSES[name]

    def runner(
        self,
        error_policy: Any = None,
        projection_class: type[Any] = EventCountersProjection,
        view_class: type[Any] | None = None,
        **env: str,
    ) -> ProjectionRunner[Application[UUID], Any]:
        """A runner of ``projection_class``, with ``env`` over the backend's."""
        return ProjectionRunner(
            application_class=Application[UUID],
            projection_class=projection_class,
            view_class=view_class or self.view_class,
            env={**self.env, **env},
            error_policy=error_policy,
        )


def backend_env(
    name: str, request: pytest.FixtureRequest, tmp_path: Path
) -> dict[str, str]:
    if name == "popo":
        return {"PERSISTENCE_MODULE": "asyncsourcing.popo"}
    if name == "sqlite":
        return {
            "PERSISTENCE_MODULE": "asyncsourcing.sqlite",
            "SQLITE_DBNAME": str(tmp_path / "app.sqlite"),
            "EVENTCOUNTERS_SQLITE_DBNAME": str(tmp_path / "view.sqlite"),
        }
    postgres_env: dict[str, str] = request.getfixturevalue("postgres_env")
    schema: str = request.getfixturevalue("pg_schema")
    return factory_env(postgres_env, schema)


def aggregate_with(*event_classes: type[Aggregate.Event]) -> Aggregate:
    aggregate = Aggregate()
    for event_class in event_classes:
        aggregate.trigger_event(event_class)
    return aggregate
