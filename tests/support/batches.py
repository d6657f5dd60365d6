"""Event counters views that count the runner's multi-event transactions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from asyncsourcing.leases import Lease
from asyncsourcing.persistence import Tracking, TrackingBatch
from examples.eventcounters.postgres import PostgresEventCounters
from examples.eventcounters.sqlite import SQLiteEventCounters

__all__ = ["PostgresCountingBatches", "SQLiteCountingBatches"]


class _CountingBatches:
    """Counts the transactions (committed or not) in which the runner
    tracked more than one event; a live event, alone in its transaction,
    does not count."""

    batches = 0
    _tracked = 0

    @asynccontextmanager
    async def batch_transaction(
        self, application_name: str | None = None, fence: Lease | None = None
    ) -> AsyncIterator[TrackingBatch]:
        before = self._tracked
        try:
            async with super().batch_transaction(application_name, fence) as batch:  # type: ignore[misc]
                yield batch
        finally:
            if self._tracked - before > 1:
                type(self).batches += 1

    async def _insert_tracking(self, conn: Any, tracking: Tracking) -> None:
        self._tracked += 1
        await super()._insert_tracking(conn, tracking)  # type: ignore[misc]


class SQLiteCountingBatches(_CountingBatches, SQLiteEventCounters):
    batches = 0


class PostgresCountingBatches(_CountingBatches, PostgresEventCounters):
    batches = 0
