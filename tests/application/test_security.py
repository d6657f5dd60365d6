"""Names and topics are never executed as SQL; passwords never leak; SSL mode
reaches asyncpg.

Injection attempts through the application name, the projection name, the
schema name, table names and topics are handled as plain data (identifiers
are double-quoted, values are query parameters): the events are recorded,
filtered and projected as with ordinary names, and a canary table that each
attempt tries to drop is still there.
(tests/postgres/test_settings.py covers the reprs of settings and datastore
and the message of a wrong-password error; here, logs, chained errors and
the reprs of the objects users hold.)
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote as quote_url
from uuid import UUID, uuid4

import pytest
from eventsourcing.persistence import OperationalError, StoredEvent, Tracking

from asyncsourcing.application import Application
from asyncsourcing.postgres import (
    PostgresFactory,
    PostgresSettings,
    PostgresSettingsError,
)
from asyncsourcing.projection import ProjectionRunner
from tests.support.faults import (
    Counter,
    Counters,
    PostgresRecordingView,
    RecordingProjection,
    check_exactly_once,
)
from tests.support.postgres import admin_connection, factory_env, quote

pytestmark = pytest.mark.postgres

SECRET = "Zq9-very-s3cret-Pa55"


@pytest.fixture
async def canary(postgres_env: dict[str, str]) -> AsyncIterator[str]:
    """A table in schema public that the injection attempts try to drop."""
    name = f"canary_{uuid4().hex[:8]}"
    async with admin_connection(postgres_env) as conn:
        await conn.execute(f"CREATE TABLE public.{name} (x int)")
    try:
        yield name
    finally:
        async with admin_connection(postgres_env) as conn:
            exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", name)
            await conn.execute(f"DROP TABLE IF EXISTS public.{name}")
        assert exists, f"the canary table {name} was dropped: SQL was injected"


def payloads(canary: str) -> list[str]:
    return [
        f'x"; DROP TABLE public.{canary}; --',
        f"x'; DROP TABLE public.{canary}; --",
        f"x$$; DROP TABLE public.{canary}; $$",
        f'x"); DROP TABLE public.{canary}; ("',
    ]


async def project_all(env: dict[str, str], app_class: type[Any], name: str) -> None:
    """Save events with ``app_class`` and project them with a projection ``name``."""
    projection_class = type("Evil", (RecordingProjection,), {"name": name})
    async with ProjectionRunner(
        application_class=app_class,
        projection_class=projection_class,
        view_class=PostgresRecordingView,
        env=env,
    ) as runner:
        counter = Counter()
        counter.increment()
        recordings = await runner.app.save(counter)
        assert (await runner.app.repository.get(counter.id)).count == 1
        await runner.wait(recordings[-1].notification.id, timeout=10)
        ids = [r.notification.id for r in recordings]
        await check_exactly_once(runner.projection.view, runner.app.name, ids)


async def test_names_are_data_not_sql(
    postgres_env: dict[str, str], pg_schema: str, canary: str
) -> None:
    env = factory_env(postgres_env, pg_schema)
    async with asyncio.timeout(60):
        for i, payload in enumerate(payloads(canary)):
            # Short enough to make valid identifiers, so they are used as such.
            app_class = type(f"App{i}", (Counters,), {"name": payload})
            await project_all(env, app_class, payload[:40])
    async with admin_connection(postgres_env) as conn:
        tables = {
            row[0]
            for row in await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = $1", pg_schema
            )
        }
    # The names were used as they are, as identifiers.
    assert payloads(canary)[0].lower() + "_events" in tables


async def test_schema_name_is_data_not_sql(
    postgres_env: dict[str, str], canary: str
) -> None:
    schema = f'evil"; DROP TABLE public.{canary}; --'
    async with admin_connection(postgres_env) as conn:
        await conn.execute(f"CREATE SCHEMA {quote(schema)}")
    try:
        env = factory_env(postgres_env, schema)
        async with asyncio.timeout(30):
            await project_all(env, Counters, "plain")
    finally:
        async with admin_connection(postgres_env) as conn:
            await conn.execute(f"DROP SCHEMA {quote(schema)} CASCADE")


async def test_table_names_are_data_not_sql(
    postgres_env: dict[str, str], pg_schema: str, canary: str
) -> None:
    async with PostgresFactory(factory_env(postgres_env, pg_schema)) as factory:
        for payload in payloads(canary):
            view = PostgresRecordingView(factory.datastore, tracking_table_name=payload)
            await view.create_table()
            await view.record(Tracking("upstream", 7))
            assert await view.max_tracking_id("upstream") == 7
            await view.wait("upstream", 7, timeout=5)
            assert await view.processed_ids() == [7]


async def test_topics_are_data_not_sql(
    postgres_env: dict[str, str], pg_schema: str, canary: str
) -> None:
    async with PostgresFactory(factory_env(postgres_env, pg_schema)) as factory:
        recorder = await factory.application_recorder()
        evil = payloads(canary)
        await recorder.insert_events(
            [StoredEvent(uuid4(), 1, topic, b"{}") for topic in [*evil, "plain"]]
        )
        for n, topic in enumerate(evil, start=1):
            selected = await recorder.select_notifications(1, 10, topics=[topic])
            assert [(x.id, x.topic) for x in selected] == [(n, topic)]
        subscription = recorder.subscribe(gt=0, topics=evil[1:3])
        async with asyncio.timeout(10):
            got = [await anext(subscription), await anext(subscription)]
        await subscription.aclose()
        assert [x.topic for x in got] == evil[1:3]


def text_of(error: BaseException) -> str:
    """Everything an error shows: its chain, reprs and formatted traceback."""
    return "".join(traceback.format_exception(error)) + repr(error)


async def test_passwords_never_appear_in_reprs_logs_or_errors(
    postgres_env: dict[str, str], pg_schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    env = factory_env(
        postgres_env,
        pg_schema,
        POSTGRES_PASSWORD=SECRET,
        POSTGRES_CONNECT_TIMEOUT="2",
        POSTGRES_POLL_INTERVAL="0.1",
    )
    shown: list[str] = []
    runner = ProjectionRunner(
        application_class=Application[UUID],
        projection_class=RecordingProjection,
        view_class=PostgresRecordingView,
        env=env,
    )
    for obj in (runner, runner.app, runner.app.recorder, runner.view, runner.factory):
        shown += [repr(obj), str(obj)]
    datastore = runner.factory.datastore  # type: ignore[attr-defined]
    shown += [repr(datastore), repr(datastore.settings), str(datastore.settings)]
    async with asyncio.timeout(30):
        with pytest.raises(OperationalError) as info:
            await runner.run_forever(timeout=10)
        shown.append(text_of(info.value))
        async with Application[UUID](env) as app:
            with pytest.raises(OperationalError) as info:
                await app.save(Counter())
            shown.append(text_of(info.value))
            subscription = app.recorder.subscribe()
            with pytest.raises(OperationalError) as info:
                await anext(subscription)
            shown.append(text_of(info.value))
            await subscription.aclose()
    shown.append(caplog.text)
    shown += [repr(r.args) + repr(r.exc_info) for r in caplog.records]
    assert "password authentication failed" in "".join(shown)
    for text in shown:
        assert SECRET not in text


async def test_sslmode_reaches_asyncpg(postgres_env: dict[str, str]) -> None:
    env = {**postgres_env, "POSTGRES_SSLMODE": "require", "POSTGRES_PASSWORD": SECRET}
    settings = PostgresSettings.from_env(env)
    assert settings.connect_kwargs()["ssl"] == "require"
    assert settings.connect_kwargs(listen=True)["ssl"] == "require"
    # The throwaway server has no SSL: "require" must refuse to go on without.
    async with admin_connection(postgres_env) as conn:
        ssl_on = await conn.fetchval("SHOW ssl")
    if ssl_on == "on":
        pytest.skip("the server has SSL on")
    async with PostgresFactory(env) as factory:
        recorder = factory.construct_application_recorder()
        with pytest.raises(OperationalError, match="SSL") as info:
            await asyncio.wait_for(recorder.max_notification_id(), 20)
        assert SECRET not in text_of(info.value)
    # "disable" connects without it.
    async with PostgresFactory({**postgres_env, "POSTGRES_SSLMODE": "disable"}) as f:
        datastore = f.datastore
        async with datastore.transaction() as conn:
            assert await conn.fetchval("SELECT 1") == 1


async def test_url_passwords_never_appear_in_reprs_logs_or_errors(
    postgres_env: dict[str, str], pg_schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    password = SECRET + "@:/?#&%"  # A wrong one, with characters to encode.
    e = postgres_env
    where = f"{e['POSTGRES_HOST']}:{e['POSTGRES_PORT']}/{e['POSTGRES_DBNAME']}"
    url = f"postgresql://{e['POSTGRES_USER']}:{quote_url(password, safe='')}@{where}"
    env = {
        **{k: v for k, v in factory_env(e, pg_schema).items() if k not in e},
        "DATABASE_URL": url,
        "POSTGRES_CONNECT_TIMEOUT": "2",
    }
    shown: list[str] = []
    async with PostgresFactory(env) as factory:
        settings = factory.datastore.settings
        assert settings.password == password
        shown += [repr(factory), repr(factory.datastore), repr(settings), str(settings)]
        recorder = factory.construct_application_recorder()
        with pytest.raises(OperationalError) as info:
            await recorder.max_notification_id()
        shown.append(text_of(info.value))
    # A URL that is malformed (here, its port) is not shown either.
    with pytest.raises(PostgresSettingsError) as malformed:
        PostgresFactory({**env, "DATABASE_URL": url.replace(e["POSTGRES_PORT"], "x")})
    shown.append(text_of(malformed.value))
    shown.append(caplog.text)
    shown += [repr(r.args) + repr(r.exc_info) for r in caplog.records]
    assert "password authentication failed" in "".join(shown)
    assert "'DATABASE_URL' is invalid" in "".join(shown)
    for text in shown:
        for secret in (SECRET, quote_url(password, safe="")):
            assert secret not in text
