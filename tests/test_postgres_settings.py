"""Postgres settings, bad input, the factory's identity, and error translation."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import uuid4

import asyncpg
import pytest
from eventsourcing.persistence import (
    DataError,
    InfrastructureFactoryError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    ProgrammingError,
    StoredEvent,
    Tracking,
)
from eventsourcing.utils import Environment

from asyncsourcing.persistence import InfrastructureFactory
from asyncsourcing.postgres import (
    PostgresDatastore,
    PostgresFactory,
    PostgresSettings,
    PostgresSettingsError,
    PostgresTrackingRecorder,
)
from tests.test_postgres_support import datastore, factory, factory_env, pg_schema

__all__ = ["pg_schema"]

SECRET = "s3cr3t-Pa55word-that-must-not-leak"

MINIMAL = {
    "POSTGRES_DBNAME": "db",
    "POSTGRES_HOST": "db.example",
    "POSTGRES_USER": "me",
    "POSTGRES_PASSWORD": SECRET,
}


def test_defaults_follow_eventsourcing() -> None:
    settings = PostgresSettings.from_env(MINIMAL)
    assert settings.port == 5432
    assert settings.schema == "public"
    assert settings.pool_size == 5
    assert settings.max_overflow == 10
    assert settings.connect_timeout == 30
    assert settings.idle_in_transaction_session_timeout == 5
    assert settings.lock_timeout == 0
    assert settings.sslmode is None
    assert settings.originator_id_type == "uuid"
    assert settings.create_tables is True
    assert settings.poll_interval == 1.0


def test_values_are_parsed() -> None:
    settings = PostgresSettings.from_env(
        {
            **MINIMAL,
            "POSTGRES_PORT": "6543",
            "POSTGRES_SCHEMA": " myschema ",
            "POSTGRES_POOL_SIZE": "2",
            "POSTGRES_MAX_OVERFLOW": "0",
            "POSTGRES_CONNECT_TIMEOUT": "2.5",
            "POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT": "0",
            "POSTGRES_LOCK_TIMEOUT": "3",
            "POSTGRES_SSLMODE": "require",
            "POSTGRES_POLL_INTERVAL": "0.25",
            "ORIGINATOR_ID_TYPE": "text",
            "CREATE_TABLE": "no",
        }
    )
    assert settings.port == 6543
    assert settings.schema == "myschema"
    assert (settings.pool_size, settings.max_overflow) == (2, 0)
    assert settings.connect_timeout == 2.5
    assert settings.idle_in_transaction_session_timeout == 0
    assert settings.lock_timeout == 3
    assert settings.sslmode == "require"
    assert settings.poll_interval == 0.25
    assert settings.originator_id_type == "text"
    assert settings.create_tables is False


def test_prefixed_variables_win() -> None:
    env = Environment("Orders", {**MINIMAL, "ORDERS_POSTGRES_PORT": "7000"})
    assert PostgresSettings.from_env(env).port == 7000


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("POSTGRES_PORT", "abc"),
        ("POSTGRES_PORT", "70000"),
        ("POSTGRES_POOL_SIZE", "-1"),
        ("POSTGRES_POOL_SIZE", "2.5"),
        ("POSTGRES_MAX_OVERFLOW", "many"),
        ("POSTGRES_CONNECT_TIMEOUT", "0"),
        ("POSTGRES_CONNECT_TIMEOUT", "nan"),
        ("POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT", "soon"),
        ("POSTGRES_LOCK_TIMEOUT", "1.5"),
        ("POSTGRES_CONN_MAX_AGE", "-3"),
        ("POSTGRES_SSLMODE", "sometimes"),
        ("POSTGRES_POLL_INTERVAL", "inf"),
        ("POSTGRES_SCHEMA", "s" * 64),
        ("ORIGINATOR_ID_TYPE", "int"),
        ("CREATE_TABLE", "perhaps"),
        ("SINGLE_ROW_TRACKING", "no"),
        ("POSTGRES_GET_PASSWORD_TOPIC", "no.such.module:func"),
    ],
)
def test_malformed_setting_names_the_variable(key: str, value: str) -> None:
    with pytest.raises(PostgresSettingsError) as info:
        PostgresSettings.from_env({**MINIMAL, key: value})
    assert key in str(info.value)
    assert SECRET not in str(info.value)
    # Caught like eventsourcing's (OSError) and like other factory errors.
    assert isinstance(info.value, OSError)
    assert isinstance(info.value, InfrastructureFactoryError)


def test_malformed_prefixed_setting_names_the_prefixed_variable() -> None:
    env = Environment("Orders", {**MINIMAL, "ORDERS_POSTGRES_PORT": "abc"})
    with pytest.raises(PostgresSettingsError, match="'ORDERS_POSTGRES_PORT'"):
        PostgresSettings.from_env(env)


@pytest.mark.parametrize(
    "key", ["POSTGRES_DBNAME", "POSTGRES_HOST", "POSTGRES_USER", "POSTGRES_PASSWORD"]
)
def test_missing_setting_names_the_variable(key: str) -> None:
    env = {k: v for k, v in MINIMAL.items() if k != key}
    with pytest.raises(PostgresSettingsError, match=key):
        PostgresSettings.from_env(env)


def test_password_never_shown() -> None:
    settings = PostgresSettings.from_env(MINIMAL)
    store = PostgresDatastore(settings)
    assert SECRET not in repr(settings)
    assert SECRET not in str(settings)
    assert SECRET not in repr(store)
    factory = PostgresFactory({**MINIMAL})
    assert SECRET not in repr(factory.datastore)


def test_password_from_topic() -> None:
    env = {
        **{k: v for k, v in MINIMAL.items() if k != "POSTGRES_PASSWORD"},
        "POSTGRES_GET_PASSWORD_TOPIC": "tests.test_postgres_settings:get_password",
    }
    assert PostgresSettings.from_env(env).password is get_password


def get_password() -> str:
    return SECRET


def test_construct_finds_the_factory_without_io() -> None:
    # An unresolvable host: constructing must not connect.
    env = {"PERSISTENCE_MODULE": "asyncsourcing.postgres", **MINIMAL}
    env["POSTGRES_HOST"] = "host.invalid"
    factory = InfrastructureFactory[Any].construct(env)
    topic = f"{type(factory).__module__}:{type(factory).__qualname__}"
    assert topic == "asyncsourcing.postgres:PostgresFactory"
    factory.construct_application_recorder()
    factory.construct_tracking_recorder()
    factory.construct_process_recorder()
    factory.construct_aggregate_recorder("snapshots")


def test_table_names_follow_eventsourcing() -> None:
    named = PostgresFactory(Environment("Orders", MINIMAL))
    unnamed = PostgresFactory(MINIMAL)
    assert named.construct_application_recorder().events_table_name == "orders_events"  # type: ignore[attr-defined]
    assert named.construct_tracking_recorder().tracking_table_name == "orders_tracking"
    snapshots = named.construct_aggregate_recorder("snapshots")
    assert snapshots.events_table_name == "orders_snapshots"  # type: ignore[attr-defined]
    assert unnamed.construct_application_recorder().events_table_name == "stored_events"  # type: ignore[attr-defined]
    tracking = unnamed.construct_tracking_recorder()
    assert tracking.tracking_table_name == "notification_tracking"


@pytest.mark.parametrize("name", ["x" * 64, "é" * 32, "", "a\x00b"])
def test_bad_identifiers_are_refused(name: str) -> None:
    store = PostgresDatastore(PostgresSettings.from_env(MINIMAL))
    with pytest.raises(ProgrammingError):
        PostgresTrackingRecorder.check_identifier_length(name)
    with pytest.raises(ProgrammingError):
        PostgresTrackingRecorder(store, tracking_table_name=name)
    if name:  # (No name: the default table names.)
        with pytest.raises(ProgrammingError):
            PostgresFactory(Environment(name, MINIMAL)).construct_application_recorder()


@pytest.mark.postgres
async def test_connection_errors_are_operational_errors_without_password(
    postgres_env: dict[str, str],
) -> None:
    wrong_password = {**postgres_env, "POSTGRES_PASSWORD": SECRET}
    async with PostgresFactory(wrong_password) as factory:
        recorder = factory.construct_application_recorder()
        with pytest.raises(OperationalError) as info:
            await recorder.max_notification_id()
        assert SECRET not in str(info.value)
        assert isinstance(info.value.__cause__, asyncpg.InvalidPasswordError)

    # Nothing listens on port 1.
    unreachable = {**postgres_env, "POSTGRES_PORT": "1", "POSTGRES_PASSWORD": SECRET}
    async with PostgresFactory(unreachable) as factory:
        recorder = factory.construct_application_recorder()
        with pytest.raises(OperationalError) as info:
            await recorder.max_notification_id()
        assert SECRET not in str(info.value)
        # And a waiter gets the error, rather than waiting for nothing.
        tracking = factory.construct_tracking_recorder()
        with pytest.raises(OperationalError):
            await tracking.wait("upstream", 1, timeout=5)


@pytest.mark.postgres
async def test_asyncpg_errors_are_translated(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    async with factory(postgres_env, pg_schema) as f:
        recorder = await f.application_recorder()
        originator_id = uuid4()
        event = StoredEvent(originator_id, 1, "topic", b"{}")
        await recorder.insert_events([event])
        with pytest.raises(IntegrityError) as integrity:
            await recorder.insert_events([event])
        assert isinstance(integrity.value.__cause__, asyncpg.UniqueViolationError)

        store = f.datastore
        with pytest.raises(ProgrammingError) as programming:
            async with store.transaction(commit=True) as conn:
                await conn.execute("SELECT * FROM no_such_table")
        assert isinstance(programming.value.__cause__, asyncpg.UndefinedTableError)

        with pytest.raises(DataError):
            async with store.transaction(commit=False) as conn:
                await conn.fetchval("SELECT 1 / 0")
        with pytest.raises(DataError):  # client side: cannot encode the argument
            async with store.transaction(commit=False) as conn:
                await conn.fetchval("SELECT $1::int", "not a number")

        # An error of our own in a view's transaction passes through unchanged.
        view = await f.tracking_recorder()
        await view.insert_tracking(Tracking("upstream", 1))
        with pytest.raises(IntegrityError, match="not greater"):
            async with store.transaction(commit=True) as conn:
                await view._insert_tracking(conn, Tracking("upstream", 1))
        # A builtin TimeoutError in a transaction is the caller's: not translated.
        with pytest.raises(TimeoutError):
            async with store.transaction(commit=False):
                await asyncio.wait_for(asyncio.sleep(1), 0.01)


@pytest.mark.postgres
async def test_transaction_commits_or_rolls_back(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    async with datastore(postgres_env, pg_schema) as store:
        table = f'"{pg_schema}".things'
        async with store.transaction(commit=True) as conn:
            assert isinstance(conn, asyncpg.Connection)
            await conn.execute(f"CREATE TABLE {table} (n int)")
        async with store.transaction(commit=False) as conn:
            await conn.execute(f"INSERT INTO {table} VALUES (1)")

        async def insert_and_fail() -> None:
            async with store.transaction(commit=True) as conn:
                await conn.execute(f"INSERT INTO {table} VALUES (2)")
                raise RuntimeError

        with pytest.raises(RuntimeError):
            await insert_and_fail()
        async with store.transaction(commit=True) as conn:
            await conn.execute(f"INSERT INTO {table} VALUES (3)")
        async with store.connection() as conn:
            assert await conn.fetchval(f"SELECT array_agg(n) FROM {table}") == [3]

    # Closed: idempotent, and no more connections are handed out.
    await store.close()
    with pytest.raises(InterfaceError, match="closed"):
        async with store.transaction():
            pass


@pytest.mark.postgres
async def test_create_table_false_creates_nothing(
    postgres_env: dict[str, str], pg_schema: str
) -> None:
    env = factory_env(postgres_env, pg_schema, CREATE_TABLE="false")
    async with PostgresFactory(env) as f:
        recorder = await f.application_recorder()
        with pytest.raises(ProgrammingError, match="does not exist"):
            await recorder.max_notification_id()
