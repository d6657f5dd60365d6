"""The shared recorder suites, on PostgreSQL (a fresh schema per test)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from asyncsourcing.persistence import InfrastructureFactory
from tests.support.postgres import factory_env
from tests.support.suites import (
    AggregateRecorderSuite,
    ApplicationRecorderSuite,
    ProcessRecorderSuite,
    TrackingRecorderSuite,
)

pytestmark = pytest.mark.postgres


@pytest.fixture
async def factory(
    postgres_env: dict[str, str], pg_schema: str
) -> AsyncIterator[InfrastructureFactory[Any]]:
    env = factory_env(postgres_env, pg_schema)
    async with InfrastructureFactory[Any].construct(env) as factory:
        yield factory


class TestPostgresAggregateRecorder(AggregateRecorderSuite):
    pass


class TestPostgresApplicationRecorder(ApplicationRecorderSuite):
    pass


class TestPostgresTrackingRecorder(TrackingRecorderSuite):
    pass


class TestPostgresProcessRecorder(ProcessRecorderSuite):
    pass
