"""Bad input gets a clear error naming the culprit, and changes nothing
(SPEC invariant 4).

Already covered elsewhere, and not repeated here:

* unknown ``PERSISTENCE_MODULE``: tests/application/test_factory.py
  (test_unknown_module_is_named, test_module_without_factory_is_named);
* ``POSTGRES_PORT=abc``, negative ``POSTGRES_POOL_SIZE`` and other malformed
  settings, missing settings: tests/postgres/test_settings.py
  (test_malformed_setting_names_the_variable,
  test_missing_setting_names_the_variable); SQLite's: tests/sqlite/test_errors.py;
* wrong password and a closed port (message without the password):
  tests/postgres/test_settings.py
  (test_connection_errors_are_operational_errors_without_password);
* identifiers longer than 63 bytes or with NUL from an application name:
  tests/postgres/test_settings.py (test_bad_identifiers_are_refused);
* an unresolvable topic through ApplicationSubscription on the in-memory
  backend: tests/projection/test_projection.py
  (test_unresolvable_topic_names_the_notification).

Added here: an empty ``POSTGRES_HOST``; a bounded connect timeout against a
server that accepts TCP connections but never answers, and against a closed
port; projection and application names that make bad identifiers (nothing
created); an unresolvable topic and an undecodable state reaching a
Postgres ProjectionRunner (run_forever raises, naming ``notification <id>``
and the topic; the view keeps exactly the events before it); saving at an
existing version (IntegrityError, none of the save recorded).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from typing import Any
from uuid import uuid4

import pytest
from eventsourcing.persistence import (
    IntegrityError,
    MapperDeserialisationError,
    OperationalError,
    ProgrammingError,
    StoredEvent,
)
from eventsourcing.utils import TopicError, get_topic

from asyncsourcing.postgres import PostgresFactory, PostgresSettingsError
from asyncsourcing.projection import ProjectionRunner
from tests.support.faults import (
    Counter,
    Counters,
    PostgresRecordingView,
    RecordingProjection,
)
from tests.support.postgres import admin_connection, factory_env

SECRET = "s3cr3t-Pa55word"
MINIMAL = {
    "POSTGRES_DBNAME": "db",
    "POSTGRES_HOST": "127.0.0.1",
    "POSTGRES_USER": "user",
    "POSTGRES_PASSWORD": SECRET,
}


def test_empty_postgres_host_is_named() -> None:
    with pytest.raises(PostgresSettingsError, match="POSTGRES_HOST") as info:
        PostgresFactory({**MINIMAL, "POSTGRES_HOST": "  "})
    assert SECRET not in str(info.value)


@contextlib.asynccontextmanager
async def silent_server() -> AsyncIterator[int]:
    """A TCP server that accepts connections and never says a word."""
    held: list[asyncio.StreamWriter] = []

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_connect_timeout_bounds_a_server_that_never_answers() -> None:
    async with silent_server() as port:
        env = {**MINIMAL, "POSTGRES_PORT": str(port), "POSTGRES_CONNECT_TIMEOUT": "1"}
        async with PostgresFactory(env) as factory:
            recorder = factory.construct_application_recorder()
            started = time.monotonic()
            with pytest.raises(OperationalError) as info:
                await asyncio.wait_for(recorder.max_notification_id(), 20)
            # Bounded by the setting (1 s), with slack for a slow machine.
            assert time.monotonic() - started < 10
            assert "PostgreSQL" in str(info.value)
            assert SECRET not in str(info.value)
            # A subscription's LISTEN connection is bounded too.
            subscription = recorder.subscribe()
            with pytest.raises(OperationalError):
                await asyncio.wait_for(anext(subscription), 20)
            await subscription.aclose()


async def test_connect_to_a_closed_port_fails_at_once() -> None:
    env = {
        **MINIMAL,
        "POSTGRES_PORT": str(closed_port()),
        "POSTGRES_CONNECT_TIMEOUT": "1",
    }
    async with PostgresFactory(env) as factory:
        view = factory.construct_tracking_recorder()
        with pytest.raises(OperationalError, match="Cannot connect") as info:
            await asyncio.wait_for(view.max_tracking_id("app"), 20)
        assert SECRET not in str(info.value)


async def tables_in(env: dict[str, str], schema: str) -> list[str]:
    async with admin_connection(env) as conn:
        rows = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = $1", schema
        )
    return sorted(row[0] for row in rows)


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("name", "culprit"),
    [
        ("p" * 60, "p" * 60 + "_tracking"),  # 69 bytes
        ("é" * 28, "é" * 28 + "_tracking"),  # 65 bytes, 37 characters
        ("bad\x00name", "NUL"),
    ],
)
async def test_projection_name_making_a_bad_identifier_is_refused(
    postgres_env: dict[str, str], pg_schema: str, name: str, culprit: str
) -> None:
    projection_class = type(
        "Named", (RecordingProjection,), {"name": name, "topics": ()}
    )
    with pytest.raises(ProgrammingError) as info:
        ProjectionRunner(
            application_class=Counters,
            projection_class=projection_class,
            view_class=PostgresRecordingView,
            env=factory_env(postgres_env, pg_schema),
        )
    assert culprit in str(info.value)
    assert await tables_in(postgres_env, pg_schema) == []


@pytest.mark.postgres
async def test_application_name_making_a_bad_identifier_is_refused(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    class VeryLongNamedApplicationForTestingIdentifierLengthLimitsX(Counters):
        pass

    name = VeryLongNamedApplicationForTestingIdentifierLengthLimitsX.name
    assert len(name) + len("_events") > 63
    with pytest.raises(ProgrammingError, match=name.lower() + "_events"):
        VeryLongNamedApplicationForTestingIdentifierLengthLimitsX(
            factory_env(postgres_env, pg_schema)
        )
    assert await tables_in(postgres_env, pg_schema) == []


async def run_into_bad_event(
    env: dict[str, str], bad: StoredEvent, expected: type[Exception]
) -> tuple[BaseException, list[int]]:
    """Record good, bad, good; run a runner; return its error and good ids."""
    async with Counters(env) as app:
        first = await app.save(Counter())
        await app.recorder.insert_events([bad])
        last = await app.save(Counter())
    good = [first[0].notification.id, last[0].notification.id]
    runner = ProjectionRunner(
        application_class=Counters,
        projection_class=RecordingProjection,
        view_class=PostgresRecordingView,
        env=env,
    )
    with pytest.raises(expected) as info:
        await runner.run_forever(timeout=20)
    return info.value, good


async def view_state(env: dict[str, str]) -> tuple[int | None, list[int]]:
    async with ProjectionRunner(
        application_class=Counters,
        projection_class=RecordingProjection,
        view_class=PostgresRecordingView,
        env=env,
    ) as runner:
        view = runner.projection.view
        runner.stop()
        return await view.max_tracking_id("Counters"), await view.processed_ids()


@pytest.mark.postgres
async def test_unresolvable_topic_stops_the_runner_naming_notification_and_topic(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    env = factory_env(postgres_env, pg_schema)
    topic = "no.such.module:Gone"
    bad = StoredEvent(uuid4(), 1, topic, b"{}")
    async with asyncio.timeout(30):
        error, good = await run_into_bad_event(env, bad, TopicError)
        assert f"notification {good[0] + 1}" in str(error)
        assert topic in str(error)
        # The event before it is processed, nothing at or after it.
        assert await view_state(env) == (good[0], [good[0]])


@pytest.mark.postgres
async def test_undecodable_state_stops_the_runner_naming_the_notification(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    env = factory_env(postgres_env, pg_schema)
    topic = get_topic(Counter.Incremented)  # type: ignore[attr-defined]
    bad = StoredEvent(uuid4(), 1, topic, b"\x00 not json {")
    async with asyncio.timeout(30):
        error, good = await run_into_bad_event(env, bad, MapperDeserialisationError)
        assert f"notification {good[0] + 1}" in str(error)
        assert topic in str(error)
        assert await view_state(env) == (good[0], [good[0]])


@pytest.mark.postgres
async def test_saving_at_an_existing_version_records_nothing(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    env = factory_env(postgres_env, pg_schema)
    async with asyncio.timeout(30), Counters(env) as app:
        counter = Counter()
        counter.increment()
        await app.save(counter)
        stale = await app.repository.get(counter.id, version=1)
        stale.increment()  # Version 2, which exists.
        newcomer = Counter()
        before = await app.recorder.max_notification_id()
        with pytest.raises(IntegrityError) as info:
            await app.save(newcomer, stale)
        assert str(counter.id) in str(info.value)
        # Neither the conflicting event nor the one saved with it.
        assert await app.recorder.max_notification_id() == before
        assert await app.recorder.select_events(newcomer.id) == []
        assert (await app.repository.get(counter.id)).count == 1
        # A concurrent save of the same version: exactly one wins.
        a = await app.repository.get(counter.id)
        b = await app.repository.get(counter.id)
        a.increment()
        b.increment()
        results: tuple[Any, ...] = await asyncio.gather(
            app.save(a), app.save(b), return_exceptions=True
        )
        assert sorted(type(r).__name__ for r in results) == ["IntegrityError", "list"]
        assert (await app.repository.get(counter.id)).version == 3
        # (Failed inserts may leave gaps in the notification ids, as in
        # eventsourcing: only the three versions are recorded.)
        notifications = await app.recorder.select_notifications(1, 100)
        assert [(n.originator_id, n.originator_version) for n in notifications] == [
            (counter.id, 1),
            (counter.id, 2),
            (counter.id, 3),
        ]
