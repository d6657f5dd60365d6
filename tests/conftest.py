"""Fixtures shared by the test modules (pytest finds them here, unimported).

The helpers they use, and the tests' other shared helpers, are in
tests/support/.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from uuid import uuid4

import pytest

from tests.support.backends import BACKENDS, Backend, backend_env
from tests.support.batches import PostgresCountingBatches, SQLiteCountingBatches
from tests.support.postgres import admin_connection, quote


@pytest.fixture
async def pg_schema(postgres_env: dict[str, str]) -> AsyncIterator[str]:
    """A new empty schema, dropped with everything in it after the test."""
    schema = f"test_{uuid4().hex[:12]}"
    async with admin_connection(postgres_env) as conn:
        await conn.execute(f"CREATE SCHEMA {quote(schema)}")
    try:
        yield schema
    finally:
        async with admin_connection(postgres_env) as conn:
            await conn.execute(f"DROP SCHEMA IF EXISTS {quote(schema)} CASCADE")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    SQLiteCountingBatches.batches = PostgresCountingBatches.batches = 0
    return Backend(request.param, backend_env(request.param, request, tmp_path))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def audit_backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> tuple[str, dict[str, str]]:
    """A SQL backend's name and settings for the audit log example (a
    partitioned projection), with leases of a second."""
    name: str = request.param
    env = backend_env(name, request, tmp_path)
    if name == "sqlite":
        env["AUDITLOG_SQLITE_DBNAME"] = str(tmp_path / "view.sqlite")
    return name, {**env, "LEASE_TTL": "1"}
