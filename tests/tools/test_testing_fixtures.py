"""The fixtures that users' tests get from our pytest plugin: a fresh store per
test on each backend, and applications and runners made on it.

These tests use the fixtures as users do; the plugin's loading and its
PostgreSQL modes are tested from the outside in ``test_testing_plugin.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg
import pytest

from asyncsourcing.testing import stores
from asyncsourcing.testing.stores import (
    BACKENDS,
    MakeApplication,
    MakeRunner,
    Store,
    postgres_store,
    sqlite_store,
)
from examples.dogschool.application import DogSchool
from examples.dogschool.postgres import PostgresCounters
from examples.dogschool.projections import DOGS, DogCountersProjection
from examples.dogschool.sqlite import SQLiteCounters
from examples.dogschool.views import CountersView, POPOCounters

VIEWS: dict[str, type[CountersView]] = {
    "popo": POPOCounters,
    "sqlite": SQLiteCounters,
    "postgres": PostgresCounters,
}

every_backend = pytest.mark.parametrize("store", BACKENDS, indirect=True)


async def connect(postgres_env: dict[str, str]) -> asyncpg.Connection[Any]:
    return await asyncpg.connect(
        host=postgres_env["POSTGRES_HOST"],
        port=int(postgres_env["POSTGRES_PORT"]),
        user=postgres_env["POSTGRES_USER"],
        password=postgres_env["POSTGRES_PASSWORD"],
        database=postgres_env["POSTGRES_DBNAME"],
    )


async def schema_exists(postgres_env: dict[str, str], schema: str) -> bool:
    conn = await connect(postgres_env)
    try:
        found = await conn.fetchval(
            "SELECT count(*) FROM pg_namespace WHERE nspname = $1", schema
        )
    finally:
        await conn.close()
    return bool(found)


# The store fixture.


def test_the_store_is_in_memory_unless_parametrized(store: Store) -> None:
    assert store.backend == "popo"
    assert store.env == {"PERSISTENCE_MODULE": "asyncsourcing.popo"}


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
def test_a_sqlite_store_is_a_new_file_of_the_tests_tmp_path(
    store: Store, tmp_path: Path
) -> None:
    assert store.env == {
        "PERSISTENCE_MODULE": "asyncsourcing.sqlite",
        "SQLITE_DBNAME": str(tmp_path / "store.sqlite"),
    }
    assert not (tmp_path / "store.sqlite").exists()  # created on first use


@pytest.mark.parametrize("store", ["postgres"], indirect=True)
async def test_a_postgres_store_is_a_new_schema_on_the_sessions_server(
    store: Store, postgres_env: dict[str, str]
) -> None:
    schema = store.env["POSTGRES_SCHEMA"]
    assert store.env == {
        "PERSISTENCE_MODULE": "asyncsourcing.postgres",
        **postgres_env,
        "POSTGRES_SCHEMA": schema,
    }
    assert await schema_exists(postgres_env, schema)


@every_backend
@pytest.mark.parametrize("dog", ["Fido", "Milly"])
async def test_each_test_gets_an_empty_store(store: Store, dog: str) -> None:
    # Run twice on each backend: the second run would see the first's dog.
    async with store.application(DogSchool) as school:
        assert await school.recorder.max_notification_id() is None
        await school.register_dog(dog)
        assert await school.recorder.max_notification_id() == 1


# Applications and runners on the store.


@every_backend
async def test_make_application_makes_applications_on_the_store(
    store: Store, make_application: MakeApplication
) -> None:
    async with make_application(DogSchool, {"IS_SNAPSHOTTING_ENABLED": "y"}) as app:
        assert isinstance(app, DogSchool)
        for key, value in store.env.items():
            assert app.env.get(key) == value
        assert app.env.get("IS_SNAPSHOTTING_ENABLED") == "y"
        dog_id, _ = await app.register_dog("Fido")
        assert await app.get_dog(dog_id) == {"name": "Fido", "tricks": ()}


@every_backend
async def test_make_runner_picks_the_view_class_of_the_backend(
    store: Store, make_runner: MakeRunner
) -> None:
    async with make_runner(DogSchool, DogCountersProjection, VIEWS) as runner:
        assert type(runner.view) is VIEWS[store.backend]
        _, position = await runner.app.register_dog("Fido")
        await runner.wait(position)
        assert await runner.view.get_count(DOGS) == 1
    assert not runner.is_running


def test_a_missing_view_class_is_a_clear_error(store: Store) -> None:
    with pytest.raises(LookupError, match="No view class for backend 'popo'"):
        store.runner(DogSchool, DogCountersProjection, {"sqlite": SQLiteCounters})


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
async def test_applications_and_runners_of_a_test_share_its_store(
    make_application: MakeApplication, make_runner: MakeRunner
) -> None:
    async with (
        make_application(DogSchool) as school,
        make_runner(DogSchool, DogCountersProjection, VIEWS) as runner,
    ):
        _, position = await school.register_dog("Fido")
        await runner.wait(position)
        assert await runner.view.get_count(DOGS) == 1


# The functions behind the fixtures, for fixtures of wider scopes.


def test_sqlite_store_wants_a_new_file(tmp_path: Path) -> None:
    (tmp_path / "store.sqlite").touch()
    with pytest.raises(FileExistsError, match="a fresh store needs a new file"):
        sqlite_store(tmp_path)
    assert sqlite_store(tmp_path, "other.sqlite").env["SQLITE_DBNAME"] == str(
        tmp_path / "other.sqlite"
    )


async def test_postgres_store_drops_its_schema_on_exit(
    postgres_env: dict[str, str],
) -> None:
    # Usable in a running event loop too: its SQL runs in a thread's loop.
    with postgres_store(postgres_env, prefix="mine") as store:
        schema = store.env["POSTGRES_SCHEMA"]
        assert schema.startswith("mine_")
        async with store.application(DogSchool) as school:
            await school.register_dog("Fido")
        assert await schema_exists(postgres_env, schema)
    assert not await schema_exists(postgres_env, schema)


async def test_a_schema_locked_by_an_open_transaction_is_a_clear_error(
    postgres_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stores, "DROP_LOCK_TIMEOUT", 1)
    conn = await connect(postgres_env)
    schema = ""

    async def leave_a_transaction_open() -> None:
        nonlocal schema
        with postgres_store(postgres_env) as store:
            schema = store.env["POSTGRES_SCHEMA"]
            await conn.execute("BEGIN")
            await conn.execute(f'CREATE TABLE "{schema}".t (x int)')

    try:
        with pytest.raises(RuntimeError, match="still hold locks") as caught:
            await leave_a_transaction_open()
        assert repr(schema) in str(caught.value)
    finally:
        await conn.execute("ROLLBACK")
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()
