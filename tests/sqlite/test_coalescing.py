"""Coalesced writes on SQLite: saves that arrive together share a transaction.

Their effect and errors, the same as separate saves', are in tests/support/suites.py."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from uuid import UUID

from asyncsourcing.application import Application
from asyncsourcing.coalescing import WriteCoalescer
from asyncsourcing.domain import Aggregate
from asyncsourcing.persistence import StoredEvent
from asyncsourcing.sqlite import SQLiteApplicationRecorder


async def test_concurrent_saves_share_transactions(tmp_path: Path) -> None:
    env = {
        "PERSISTENCE_MODULE": "asyncsourcing.sqlite",
        "SQLITE_DBNAME": str(tmp_path / "db.sqlite"),
    }
    async with Application[UUID](env) as app:
        recorder = app.recorder
        assert isinstance(recorder, SQLiteApplicationRecorder)
        await app.save(Aggregate())
        transactions = 0
        insert = recorder._insert_in_own_transaction

        async def counted(stored_events: Sequence[StoredEvent]) -> Sequence[int]:
            nonlocal transactions
            transactions += 1
            return await insert(stored_events)

        recorder._coalescer = WriteCoalescer(counted)
        await asyncio.gather(*(app.save(Aggregate()) for _ in range(200)))

        # One transaction per batch, not per save.
        assert 1 < transactions < 50
        assert await recorder.max_notification_id() == 201
