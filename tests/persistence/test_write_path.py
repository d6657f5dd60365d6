"""The write path of the SQL backends: a lone save, saves of one and of many
events, writers that save in loops, and cancelled saves.

A save that finds no other in flight is recorded in the caller's task, with
no batch around it; writers saving concurrently still share transactions.
(Conflicts, ids and coalescing in general are in tests/support/suites.py and
the backends' test_coalescing.py.)
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest

from asyncsourcing.application import Application, ProcessingEvent, collect_events
from asyncsourcing.coalescing import WriteCoalescer
from asyncsourcing.domain import Aggregate
from asyncsourcing.persistence import IntegrityError, StoredEvent
from asyncsourcing.sql.events import SQLApplicationRecorder
from tests.support.postgres import admin_connection, factory_env

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


class Backend:
    def __init__(self, name: str, env: dict[str, str], request: Any) -> None:
        self.name = name
        self.env = env
        self._request = request

    async def assert_no_transaction_open(self) -> None:
        """No connection of ours is left inside a transaction."""
        if self.name == "sqlite":
            # The write lock comes free (a statement sent before the
            # cancellation runs to its end): no transaction holds it.
            sqlite = sqlite3.connect(self.env["SQLITE_DBNAME"], timeout=5)
            try:
                sqlite.execute("BEGIN IMMEDIATE")
                sqlite.rollback()
            finally:
                sqlite.close()
            return
        postgres_env = self._request.getfixturevalue("postgres_env")
        async with admin_connection(postgres_env) as conn:
            states = await conn.fetch(
                "SELECT state FROM pg_stat_activity WHERE application_name = $1 "
                "AND state LIKE 'idle in transaction%'",
                self.env["POSTGRES_APPLICATION_NAME"],
            )
        assert states == []


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        env = {
            "PERSISTENCE_MODULE": "asyncsourcing.sqlite",
            "SQLITE_DBNAME": str(tmp_path / "db.sqlite"),
        }
    else:
        postgres_env = request.getfixturevalue("postgres_env")
        env = factory_env(postgres_env, request.getfixturevalue("pg_schema"))
    return Backend(request.param, env, request)


@pytest.fixture
async def app(backend: Backend) -> AsyncIterator[Application[UUID]]:
    async with Application[UUID](backend.env) as app:
        await app.save(Aggregate())  # Tables made, connections opened.
        yield app


def sql_recorder(app: Application[UUID]) -> SQLApplicationRecorder[Any]:
    recorder = app.recorder
    assert isinstance(recorder, SQLApplicationRecorder)
    return recorder


def count_transactions(
    recorder: SQLApplicationRecorder[Any],
) -> list[asyncio.Task[Any]]:
    """Make ``recorder`` note the task of each transaction it writes alone."""
    tasks: list[asyncio.Task[Any]] = []
    insert = recorder._insert_in_own_transaction

    async def noted(stored_events: Sequence[StoredEvent]) -> Sequence[int]:
        task = asyncio.current_task()
        assert task is not None
        tasks.append(task)
        return await insert(stored_events)

    recorder._coalescer = WriteCoalescer(noted)
    return tasks


async def test_a_lone_save_is_written_in_the_callers_task(
    app: Application[UUID],
) -> None:
    transactions = count_transactions(sql_recorder(app))
    saving = asyncio.create_task(app.save(Aggregate()))
    recordings = await saving
    # No batch, and no task of its own, around a save that finds none other.
    assert transactions == [saving]
    assert recordings[0].notification.id == 2


async def test_writers_saving_in_loops_share_transactions(
    app: Application[UUID],
) -> None:
    # Each writer saves again as soon as its save returns, while the others'
    # are still being handed their outcomes: those saves must queue for the
    # next batch, not each go alone.
    transactions = count_transactions(sql_recorder(app))
    writers, saves = 16, 20

    async def writer() -> None:
        for _ in range(saves):
            await app.save(Aggregate())

    async with asyncio.TaskGroup() as group:
        for _ in range(writers):
            group.create_task(writer())
    assert len(transactions) <= writers * saves / 4
    assert await app.recorder.max_notification_id() == 1 + writers * saves


async def test_saves_of_one_and_of_many_events(app: Application[UUID]) -> None:
    one = Aggregate()
    many = Aggregate()
    for _ in range(3):
        many.trigger_event(Aggregate.Event)
    others = [Aggregate(), Aggregate()]
    assert [r.notification.id for r in await app.save(one)] == [2]
    assert [r.notification.id for r in await app.save(many)] == [3, 4, 5, 6]
    assert [r.notification.id for r in await app.save(*others)] == [7, 8]
    stored = await app.recorder.select_events(many.id)
    assert [e.originator_version for e in stored] == [1, 2, 3, 4]
    notifications = await app.recorder.select_notifications(1, 10)
    assert [n.id for n in notifications] == list(range(1, 9))
    assert [n.originator_id for n in notifications[1:]] == [
        one.id,
        *[many.id] * 4,
        *[a.id for a in others],
    ]


async def test_a_conflicting_lone_save_fails_alone(app: Application[UUID]) -> None:
    aggregate = Aggregate()
    await app.save(aggregate)
    stale = await app.repository.get(aggregate.id)
    aggregate.trigger_event(Aggregate.Event)
    await app.save(aggregate)
    stale.trigger_event(Aggregate.Event)
    with pytest.raises(IntegrityError):
        await app.save(stale)
    # Nothing of it was recorded, and the next saves go on as before
    # (PostgreSQL may have used up an id).
    assert len(await app.recorder.select_events(aggregate.id)) == 2
    recordings = await app.save(Aggregate())
    assert recordings[0].notification.id in (4, 5)


@pytest.mark.parametrize("events", [1, 9000])
async def test_a_cancelled_save_leaves_no_transaction_open(
    backend: Backend, app: Application[UUID], events: int
) -> None:
    # 9000 events: more than one statement takes on SQLite, so the save is a
    # transaction of several trips to the connection's thread.
    recorder = app.recorder
    cancelled: list[UUID] = []
    saved = 1
    for turns in range(10):
        originator_id = uuid4()
        stored = [stored_event(originator_id, v) for v in range(1, events + 1)]
        saving = asyncio.create_task(recorder.insert_events(stored))
        for _ in range(turns):
            await asyncio.sleep(0)
        saving.cancel()
        try:
            await saving
        except asyncio.CancelledError:
            cancelled.append(originator_id)
        else:
            saved += events
        await backend.assert_no_transaction_open()
        # The next save works, right after.
        assert await recorder.insert_events([stored_event(uuid4(), 1)])
        saved += 1
    await asyncio.sleep(0.1)  # A statement sent may still commit.
    for originator_id in cancelled:
        # Recorded fully or not at all.
        recorded = len(await recorder.select_events(originator_id))
        assert recorded in (0, events)
        saved += recorded
    notifications = await recorder.select_notifications(1, 10 * (events + 1) + 1)
    assert len(notifications) == saved
    await backend.assert_no_transaction_open()


class Dog(Aggregate):
    def __init__(self, name: str) -> None:
        self.name = name


class EventLike(Aggregate):
    """An aggregate that eventsourcing takes for a domain event."""

    @property
    def originator_id(self) -> UUID:
        return self.id

    @property
    def originator_version(self) -> int:
        return self.version


class Dynamic(Aggregate):
    def __getattr__(self, name: str) -> Any:
        raise AttributeError(name)


def test_events_are_collected_as_eventsourcing_collects_them() -> None:
    # Aggregates are told apart from events without eventsourcing's protocol
    # checks where that is sure to come out the same: it does, for these.
    with_attributes = Dog("Fido")
    with_attributes.__dict__.update(originator_id=uuid4(), originator_version=1)
    pending_event = Aggregate()
    pending_event.trigger_event(Aggregate.Event)
    objs: list[Any] = [
        Aggregate(),
        Dog("Rex"),
        None,
        EventLike(),
        Dynamic(),
        with_attributes,
        pending_event.collect_events()[-1],
        pending_event,
    ]
    pending = {
        id(obj): list(obj._pending_events) for obj in objs if isinstance(obj, Aggregate)
    }
    ours: ProcessingEvent[UUID] = ProcessingEvent()
    collect_events(ours, objs, {"key": "value"})
    for obj in objs:
        if isinstance(obj, Aggregate):
            obj._pending_events[:] = pending[id(obj)]
    theirs: ProcessingEvent[UUID] = ProcessingEvent()
    theirs.collect_events(*objs, key="value")
    assert [id(e) for e in ours.events] == [id(e) for e in theirs.events]
    # One event each, but for the two taken for events, which are theirs,
    # and the aggregate whose events were collected already.
    assert len(ours.events) == 6
    assert objs[3] in ours.events and with_attributes in ours.events
    assert {k: id(v) for k, v in ours.aggregates.items()} == {
        k: id(v) for k, v in theirs.aggregates.items()
    }
    assert ours.saved_kwargs == theirs.saved_kwargs == {"key": "value"}


def stored_event(originator_id: UUID, version: int) -> StoredEvent:
    return StoredEvent(originator_id, version, "tests:Topic", b"{}")
