"""The shared recorder suites, on the in-memory backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from asyncsourcing.persistence import InfrastructureFactory
from asyncsourcing.popo import POPOFactory
from tests.support.suites import (
    AggregateRecorderSuite,
    ApplicationRecorderSuite,
    ProcessRecorderSuite,
    TrackingRecorderSuite,
)


@pytest.fixture
async def factory() -> AsyncIterator[InfrastructureFactory[Any]]:
    async with POPOFactory() as factory:
        yield factory


class TestPOPOAggregateRecorder(AggregateRecorderSuite):
    pass


class TestPOPOApplicationRecorder(ApplicationRecorderSuite):
    pass


class TestPOPOTrackingRecorder(TrackingRecorderSuite):
    pass


class TestPOPOProcessRecorder(ProcessRecorderSuite):
    pass
