"""The shared recorder suites, on SQLite: a database file and ``:memory:``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from asyncsourcing.persistence import InfrastructureFactory
from asyncsourcing.sqlite import SQLiteFactory
from tests.support.suites import (
    AggregateRecorderSuite,
    ApplicationRecorderSuite,
    ProcessRecorderSuite,
    TrackingRecorderSuite,
)


@pytest.fixture(params=["file", "memory"])
async def factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[InfrastructureFactory[Any]]:
    db_name = str(tmp_path / "db.sqlite") if request.param == "file" else ":memory:"
    async with SQLiteFactory({"SQLITE_DBNAME": db_name}) as factory:
        yield factory


class TestSQLiteAggregateRecorder(AggregateRecorderSuite):
    pass


class TestSQLiteApplicationRecorder(ApplicationRecorderSuite):
    pass


class TestSQLiteTrackingRecorder(TrackingRecorderSuite):
    pass


class TestSQLiteProcessRecorder(ProcessRecorderSuite):
    pass
