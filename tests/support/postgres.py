"""Helpers of the Postgres tests.

Each test gets a schema of its own (the ``pg_schema`` fixture, in
tests/conftest.py), created empty and dropped with everything in it
afterwards, so tests leave nothing behind and never see each other's tables
(the acceptance tests, which use schema public, are unaffected). These helpers
connect to it, and make settings, datastores and factories on it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from asyncsourcing.postgres import PostgresDatastore, PostgresFactory, PostgresSettings
from asyncsourcing.postgres.identifiers import quote_identifier

__all__ = [
    "admin_connection",
    "datastore",
    "factory",
    "factory_env",
    "our_connections",
    "quote",
    "settings",
]

quote = quote_identifier


@contextlib.asynccontextmanager
async def admin_connection(
    env: dict[str, str],
) -> AsyncIterator[asyncpg.Connection[Any]]:
    """A plain connection for the tests' own checks and clean-up."""
    conn = await asyncpg.connect(
        host=env["POSTGRES_HOST"],
        port=int(env["POSTGRES_PORT"]),
        user=env["POSTGRES_USER"],
        password=env["POSTGRES_PASSWORD"],
        database=env["POSTGRES_DBNAME"],
        server_settings={"application_name": "tests-admin"},
    )
    try:
        yield conn
    finally:
        await conn.close()


def factory_env(
    postgres_env: dict[str, str], schema: str, **extra: str
) -> dict[str, str]:
    """Environment of a Postgres factory on ``schema``."""
    return {
        "PERSISTENCE_MODULE": "asyncsourcing.postgres",
        **postgres_env,
        "POSTGRES_SCHEMA": schema,
        "POSTGRES_POOL_SIZE": "2",
        "POSTGRES_APPLICATION_NAME": f"asyncsourcing-{schema}",
        **extra,
    }


def settings(
    postgres_env: dict[str, str], schema: str, **extra: str
) -> PostgresSettings:
    return PostgresSettings.from_env(factory_env(postgres_env, schema, **extra))


def datastore(
    postgres_env: dict[str, str], schema: str, **extra: str
) -> PostgresDatastore:
    return PostgresDatastore(settings(postgres_env, schema, **extra))


def factory(postgres_env: dict[str, str], schema: str, **extra: str) -> PostgresFactory:
    return PostgresFactory(factory_env(postgres_env, schema, **extra))


async def our_connections(env: dict[str, str], schema: str) -> list[str]:
    """The application names of the open connections of the test's datastores."""
    async with admin_connection(env) as conn:
        rows = await conn.fetch(
            "SELECT application_name FROM pg_stat_activity "
            "WHERE application_name LIKE $1 AND pid <> pg_backend_pid()",
            f"asyncsourcing-{schema}%",
        )
    return [row[0] for row in rows]
