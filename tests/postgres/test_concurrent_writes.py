"""Concurrent write mode (POSTGRES_CONCURRENT_WRITES=true): writers take no
table lock, and readers keep to a visibility horizon, below which every
transaction has ended, so that they never pass over an event that commits
later, nor read one twice (see asyncsourcing/postgres/concurrent.py).

The horizon is shown with a writer on a plain asyncpg connection that
follows the writers' protocol by hand and leaves its transaction open; the
stress test runs 8 writer processes with rollbacks and transactions held
open, followed live by a projection runner.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest
from eventsourcing.application import Application as ESApplication
from eventsourcing.domain import Aggregate as ESAggregate
from eventsourcing.utils import Environment

from asyncsourcing.application import Application
from asyncsourcing.domain import Aggregate
from asyncsourcing.persistence import PersistenceError
from asyncsourcing.postgres import (
    PostgresApplicationRecorder,
    PostgresSettings,
    PostgresSettingsError,
)
from asyncsourcing.postgres.concurrent import MARKER, EventsTableModeError, table_key
from asyncsourcing.projection import ProjectionRunner
from asyncsourcing.telemetry import HorizonMetrics
from tests.support.faults import (
    Counters,
    PostgresRecordingView,
    RecordingProjection,
    check_exactly_once,
)
from tests.support.paths import ROOT
from tests.support.postgres import admin_connection, factory_env, quote

pytestmark = pytest.mark.postgres

TABLE = "application_events"


def concurrent_env(
    postgres_env: dict[str, str], schema: str, **extra: str
) -> dict[str, str]:
    return factory_env(postgres_env, schema, POSTGRES_CONCURRENT_WRITES="true", **extra)


def recorder_of(app: Application[UUID]) -> PostgresApplicationRecorder:
    recorder = app.recorder
    assert isinstance(recorder, PostgresApplicationRecorder)
    return recorder


# The setting.


def test_the_setting_is_false_by_default_and_read_as_a_boolean(
    postgres_env: dict[str, str],
) -> None:
    env = factory_env(postgres_env, "public")
    assert PostgresSettings.from_env(env).concurrent_writes is False
    for value in ("true", "yes", "1", "on", "TRUE"):
        settings = PostgresSettings.from_env(
            {**env, "POSTGRES_CONCURRENT_WRITES": value}
        )
        assert settings.concurrent_writes is True
    for value in ("false", "no", "0", ""):
        settings = PostgresSettings.from_env(
            {**env, "POSTGRES_CONCURRENT_WRITES": value}
        )
        assert settings.concurrent_writes is False
    # For one application only, as the other settings.
    orders = Environment("Orders", {**env, "ORDERS_POSTGRES_CONCURRENT_WRITES": "y"})
    assert PostgresSettings.from_env(orders).concurrent_writes is True


def test_a_malformed_value_is_an_error_naming_the_variable(
    postgres_env: dict[str, str],
) -> None:
    env = factory_env(postgres_env, "public", POSTGRES_CONCURRENT_WRITES="sometimes")
    with pytest.raises(PostgresSettingsError, match="POSTGRES_CONCURRENT_WRITES") as e:
        PostgresSettings.from_env(env)
    assert e.value.invalid == ("POSTGRES_CONCURRENT_WRITES",)
    assert "'sometimes'" in str(e.value)
    orders = Environment("Orders", {**env, "ORDERS_POSTGRES_CONCURRENT_WRITES": "x"})
    with pytest.raises(PostgresSettingsError) as e:
        PostgresSettings.from_env(orders)
    assert e.value.invalid == ("ORDERS_POSTGRES_CONCURRENT_WRITES",)


# The table.


async def test_a_new_table_is_marked_and_guarded(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    async with Application[UUID](concurrent_env(postgres_env, pg_schema)) as app:
        assert recorder_of(app).concurrent_writes
        recordings = await app.save(Aggregate())
        assert [r.notification.id for r in recordings] == [1]
    table = f"{quote(pg_schema)}.{quote(TABLE)}"
    async with admin_connection(postgres_env) as conn:
        comment = await conn.fetchval(
            "SELECT obj_description($1::regclass, 'pg_class')", table
        )
        assert comment.startswith(MARKER)
        # An insert that does not take the writers' lock is refused: it
        # could commit below a reader's horizon.
        with pytest.raises(asyncpg.FeatureNotSupportedError, match="concurrent"):
            await conn.execute(
                f"INSERT INTO {table} (originator_id, originator_version) "
                "VALUES (gen_random_uuid(), 1)"
            )


# The horizon.


@contextlib.asynccontextmanager
async def open_writer(
    postgres_env: dict[str, str], schema: str
) -> AsyncIterator[tuple[asyncpg.Connection[Any], int]]:
    """A writer that follows the protocol by hand on a plain connection:
    in a transaction left open, the shared lock keyed by the sequence's last
    value, then an insert. Yields the connection and the id it was given;
    the block commits or rolls back the transaction."""
    table = f"{quote(schema)}.{quote(TABLE)}"
    async with admin_connection(postgres_env) as conn, conn.transaction():
        sequence = await conn.fetchval(
            "SELECT pg_get_serial_sequence($1, 'notification_id')", table
        )
        key = table_key(schema, TABLE)
        await conn.execute(
            "SELECT pg_advisory_xact_lock_shared($1, "
            "(coalesce(pg_sequence_last_value($2::regclass), 0) "
            "& 2147483647)::integer)",
            key,
            sequence,
        )
        # The table's trigger lets in the inserts of writers that say so.
        await conn.execute("SET LOCAL asyncsourcing.concurrent_writer = 'on'")
        notification_id = await conn.fetchval(
            f"INSERT INTO {table} (originator_id, originator_version, topic, state) "
            "VALUES ($1, 1, 'held', ''::bytea) RETURNING notification_id",
            uuid4(),
        )
        yield conn, notification_id


async def visible_ids(app: Application[UUID]) -> list[int]:
    notifications = await app.recorder.select_notifications(start=1, limit=100)
    return [n.id for n in notifications]


async def test_readers_stop_below_an_open_writer_and_pass_it_once_it_commits(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    async with Application[UUID](concurrent_env(postgres_env, pg_schema)) as app:
        await app.save(Aggregate())  # 1
        async with open_writer(postgres_env, pg_schema) as (_, held):
            assert held == 2
            # Saved and committed after the open writer's insert: 3 and 4.
            later = [r.notification.id for r in await app.save(Aggregate())]
            later += [r.notification.id for r in await app.save(Aggregate())]
            assert later == [3, 4]
            # Readers stop below 2: had they read 3 and 4, they would pass
            # over 2 when it commits.
            assert await visible_ids(app) == [1]
            assert await app.recorder.max_notification_id() == 1
            statistics = recorder_of(app).horizon_statistics()
            assert statistics is not None
            assert (statistics.horizon, statistics.last_issued) == (2, 4)
            assert statistics.held_back == 3  # 2, 3 and 4.
            assert statistics.stalled_since is not None
            assert statistics.stalled_reads == statistics.reads == 2
        # Committed: readers pass all of it, in order.
        assert await visible_ids(app) == [1, 2, 3, 4]
        assert await app.recorder.max_notification_id() == 4
        statistics = recorder_of(app).horizon_statistics()
        assert statistics is not None
        assert (statistics.horizon, statistics.held_back) == (5, 0)
        assert statistics.stalled_since is None
        assert statistics.stall_seconds == 0.0


async def test_readers_pass_an_open_writer_once_it_rolls_back(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    async with Application[UUID](concurrent_env(postgres_env, pg_schema)) as app:
        await app.save(Aggregate())  # 1
        with contextlib.suppress(ZeroDivisionError):
            async with open_writer(postgres_env, pg_schema) as (_, held):
                assert held == 2
                await app.save(Aggregate())  # 3
                assert await visible_ids(app) == [1]
                1 / 0  # noqa: B018 (rolls the writer back)
        assert await visible_ids(app) == [1, 3]


async def test_a_subscription_waits_at_the_horizon_and_polls_until_it_moves(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    # The safety-net poll made too slow to matter: what the subscription
    # reads after the rollback, which notifies no one, it reads because the
    # horizon was held back (it polls every 50 ms meanwhile).
    env = concurrent_env(postgres_env, pg_schema, POSTGRES_POLL_INTERVAL="600")
    async with Application[UUID](env) as app:
        await app.save(Aggregate())  # 1
        async with asyncio.timeout(30), app.recorder.subscribe(gt=0) as subscription:
            assert (await anext(subscription)).id == 1
            with contextlib.suppress(ZeroDivisionError):
                async with open_writer(postgres_env, pg_schema):
                    await app.save(Aggregate())  # 3, notified
                    next_one = asyncio.ensure_future(anext(subscription))
                    # Not yielded while 2 is open (nor ever, as it turns out).
                    done, _ = await asyncio.wait({next_one}, timeout=0.3)
                    assert not done
                    1 / 0  # noqa: B018 (rolls the writer back)
            assert (await next_one).id == 3


async def test_subscribers_elsewhere_are_notified_after_the_commit(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    # Writers NOTIFY after their commit, from a transaction of their own (in
    # the commit, the NOTIFY would make commits take turns). The safety-net
    # poll made too slow to matter: the subscription is woken by it.
    env = concurrent_env(postgres_env, pg_schema, POSTGRES_POLL_INTERVAL="600")
    async with (
        Application[UUID](env) as writer,
        Application[UUID](env) as reader,
    ):
        await writer.save(Aggregate())
        async with asyncio.timeout(30), reader.recorder.subscribe(gt=0) as subscription:
            assert (await anext(subscription)).id == 1
            next_one = asyncio.ensure_future(anext(subscription))
            await asyncio.sleep(0.1)  # It waits for news.
            await writer.save(Aggregate())
            assert (await next_one).id == 2


async def test_the_stall_is_reported_as_metrics(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    metrics_sdk = pytest.importorskip("opentelemetry.sdk.metrics")
    export = pytest.importorskip("opentelemetry.sdk.metrics.export")
    reader = export.InMemoryMetricReader()
    meter = metrics_sdk.MeterProvider(metric_readers=[reader]).get_meter("test")

    def collected() -> dict[str, list[tuple[dict[str, str], float]]]:
        data = reader.get_metrics_data()
        return {
            metric.name: [
                (dict(p.attributes), p.value) for p in metric.data.data_points
            ]
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
        }

    env = concurrent_env(postgres_env, pg_schema)
    async with (
        Application[UUID](env) as app,
        HorizonMetrics(recorder_of(app), meter=meter),
    ):
        await app.save(Aggregate())  # 1
        async with open_writer(postgres_env, pg_schema):  # 2
            await app.save(Aggregate())  # 3
            assert await app.recorder.max_notification_id() == 1
            points = collected()
    attributes = {"table": f'"{pg_schema}"."{TABLE}"'}
    assert points["asyncsourcing.horizon.held_back"] == [(attributes, 2)]
    assert points["asyncsourcing.horizon.reads"] == [(attributes, 1)]
    assert points["asyncsourcing.horizon.stalled_reads"] == [(attributes, 1)]
    ((stalled, seconds),) = points["asyncsourcing.horizon.stall_duration"]
    assert stalled == attributes
    assert seconds >= 0


async def test_a_horizon_never_moves_back(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    # A writer that read the sequence before a reader, and locked after it,
    # gives the next reader a lower horizon: the reader keeps the higher
    # one, below which everything had ended already.
    async with Application[UUID](concurrent_env(postgres_env, pg_schema)) as app:
        await app.save(Aggregate())
        await app.save(Aggregate())
        assert await app.recorder.max_notification_id() == 2
        async with admin_connection(postgres_env) as conn, conn.transaction():
            # A lock keyed by 1, the last value before 2 was issued.
            await conn.execute(
                "SELECT pg_advisory_xact_lock_shared($1, 1)",
                table_key(pg_schema, TABLE),
            )
            assert await visible_ids(app) == [1, 2]
            statistics = recorder_of(app).horizon_statistics()
            assert statistics is not None
            assert statistics.horizon == 3


async def test_reads_in_repeatable_read_are_refused(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    async with Application[UUID](concurrent_env(postgres_env, pg_schema)) as app:
        await app.save(Aggregate())
    # A snapshot taken before the horizon could miss a writer that
    # committed in between.
    horizon = f"{quote(pg_schema)}.asyncsourcing_notification_horizon"
    sequence = f"{quote(pg_schema)}.{quote(TABLE + '_notification_id_seq')}"
    async with (
        admin_connection(postgres_env) as conn,
        conn.transaction(isolation="repeatable_read"),
    ):
        with pytest.raises(asyncpg.FeatureNotSupportedError, match="READ COMMITTED"):
            await conn.fetchrow(f"SELECT * FROM {horizon}($1::regclass, 1)", sequence)


# Mixing the modes.


async def test_a_table_lock_recorder_refuses_a_table_in_concurrent_mode(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    async with Application[UUID](concurrent_env(postgres_env, pg_schema)) as app:
        await app.save(Aggregate())
    table = f'"{pg_schema}"."{TABLE}"'
    # As it creates its tables...
    async with Application[UUID](factory_env(postgres_env, pg_schema)) as app:
        with pytest.raises(EventsTableModeError) as error:
            await app.recorder.max_notification_id()
    assert table in str(error.value)
    assert "POSTGRES_CONCURRENT_WRITES=true" in str(error.value)
    # ... or at first use, of tables made elsewhere.
    env = factory_env(postgres_env, pg_schema, CREATE_TABLE="false")
    async with Application[UUID](env) as app:
        with pytest.raises(EventsTableModeError, match="POSTGRES_CONCURRENT_WRITES"):
            await app.save(Aggregate())
        with pytest.raises(EventsTableModeError, match="POSTGRES_CONCURRENT_WRITES"):
            await app.recorder.select_notifications(start=1, limit=10)


async def test_a_concurrent_recorder_refuses_a_table_written_with_the_lock(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    async with Application[UUID](factory_env(postgres_env, pg_schema)) as app:
        await app.save(Aggregate())
    table = f'"{pg_schema}"."{TABLE}"'
    for create_table in ("true", "false"):
        env = concurrent_env(postgres_env, pg_schema, CREATE_TABLE=create_table)
        async with Application[UUID](env) as app:
            with pytest.raises(EventsTableModeError) as error:
                await app.save(Aggregate())
        message = str(error.value)
        assert table in message
        assert "eventsourcing 9.5's readers" in message
        assert f"COMMENT ON TABLE {table} IS '{MARKER}'" in message

    # Opting in deliberately, with the statement that the error gives.
    async with admin_connection(postgres_env) as conn:
        await conn.execute(f"COMMENT ON TABLE {table} IS '{MARKER}'")
    async with Application[UUID](concurrent_env(postgres_env, pg_schema)) as app:
        recordings = await app.save(Aggregate())
        assert recordings[0].notification.id == 2
        assert await visible_ids(app) == [1, 2]


async def test_eventsourcing_writers_are_refused_by_a_table_in_concurrent_mode(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    async with Application[UUID](concurrent_env(postgres_env, pg_schema)) as app:
        await app.save(Aggregate())
    es_env = {
        **postgres_env,
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_SCHEMA": pg_schema,
        "CREATE_TABLE": "false",
    }
    es_app = ESApplication[UUID](es_env)
    try:
        with pytest.raises(PersistenceError, match="concurrent write mode"):
            es_app.save(ESAggregate())
    finally:
        es_app.close()


# Many writer processes: 8 of them (tests/support/concurrent_writers.py), each
# with rollbacks and two transactions held open 0.5 to 2 s, while a projection
# runner follows.

WRITERS = 8
SAVES_PER_WRITER = 400


async def test_writer_processes_are_projected_exactly_once(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    env = concurrent_env(postgres_env, pg_schema)
    async with asyncio.timeout(120):
        async with ProjectionRunner(
            application_class=Counters,
            projection_class=RecordingProjection,
            view_class=PostgresRecordingView,
            env=env,
        ) as runner:
            # The tables exist before the writers start.
            await runner.app.recorder.max_notification_id()
            writers = [
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "tests.support.concurrent_writers",
                    str(seed),
                    str(SAVES_PER_WRITER),
                    cwd=ROOT,
                    env={**os.environ, **env},
                    stdout=asyncio.subprocess.PIPE,
                )
                for seed in range(WRITERS)
            ]
            try:
                outputs = [(await w.communicate())[0] for w in writers]
            finally:
                for writer in writers:
                    if writer.returncode is None:
                        writer.kill()
                        await writer.wait()
            assert [w.returncode for w in writers] == [0] * WRITERS
            results = [json.loads(out.splitlines()[-1]) for out in outputs]
            committed = sorted(i for r in results for i in r["committed"])
            rolled_back = sorted(i for r in results for i in r["rolled_back"])
            assert len(set(committed)) == len(committed)
            assert rolled_back, "no transaction was rolled back"
            assert not set(committed) & set(rolled_back)

            # The live projection catches up with every commit.
            await runner.wait(committed[-1], timeout=60)
            view = runner.projection.view
            position, processed = await check_exactly_once(
                view, runner.app.name, committed
            )
            # Each committed event once, in order, and none rolled back.
            assert position == committed[-1]
            assert processed == committed

            # Transactions held open held the runner's reads back meanwhile.
            statistics = recorder_of(runner.app).horizon_statistics()
            assert statistics is not None
            assert statistics.stalled_reads > 0

        # What the database holds is what the writers committed.
        table = f"{quote(pg_schema)}.{quote('counters_events')}"
        async with admin_connection(postgres_env) as conn:
            rows = await conn.fetch(
                f"SELECT notification_id FROM {table} ORDER BY notification_id"
            )
        assert [row[0] for row in rows] == committed
