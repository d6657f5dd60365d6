"""Tests of the throwaway PostgreSQL harness (asyncsourcing.testing.pgserver).

The session's server comes from the pytest plugin; the server-level behaviour
(listen address, restart, stop) is checked on servers of our own, so that the
tests hold when POSTGRES_HOST points at an external server too.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import pytest

from asyncsourcing.testing.pgserver import TemporaryPostgres, find_postgres_binaries

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture(scope="module")
def server() -> Iterator[TemporaryPostgres]:
    with TemporaryPostgres(dbname="harness") as pg:
        yield pg


async def connect(pg: TemporaryPostgres) -> asyncpg.Connection:
    return await asyncpg.connect(
        host=pg.host,
        port=pg.port,
        user=pg.user,
        password=pg.password,
        database=pg.dbname,
    )


def refuses_connections(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return False
    except OSError:
        return True


def process_owner(pid: int) -> int | None:
    """The uid owning a process, or None where there is no /proc."""
    proc = Path(f"/proc/{pid}")
    return proc.stat().st_uid if proc.exists() else None


@pytest.mark.postgres
async def test_exported_env_connects(postgres_env: dict[str, str]) -> None:
    assert {key: os.environ[key] for key in postgres_env} == postgres_env
    conn = await asyncpg.connect(
        host=postgres_env["POSTGRES_HOST"],
        port=int(postgres_env["POSTGRES_PORT"]),
        user=postgres_env["POSTGRES_USER"],
        password=postgres_env["POSTGRES_PASSWORD"],
        database=postgres_env["POSTGRES_DBNAME"],
    )
    try:
        row = await conn.fetchrow("SELECT current_user, current_database()")
    finally:
        await conn.close()
    assert row is not None
    assert tuple(row) == (
        postgres_env["POSTGRES_USER"],
        postgres_env["POSTGRES_DBNAME"],
    )


async def test_env_and_dsn(server: TemporaryPostgres) -> None:
    assert server.env() == {
        "POSTGRES_HOST": "127.0.0.1",
        "POSTGRES_PORT": str(server.port),
        "POSTGRES_USER": "eventsourcing",
        "POSTGRES_PASSWORD": "eventsourcing",
        "POSTGRES_DBNAME": "harness",
    }
    conn = await asyncpg.connect(server.dsn)
    try:
        row = await conn.fetchrow(
            "SELECT current_user, current_database(), d.datdba::regrole::text,"
            " r.rolsuper FROM pg_database d, pg_roles r"
            " WHERE d.datname = current_database() AND r.rolname = current_user"
        )
    finally:
        await conn.close()
    assert row is not None
    assert tuple(row) == ("eventsourcing", "harness", "eventsourcing", True)


async def show(pg: TemporaryPostgres, *names: str) -> dict[str, str]:
    """The server's values of the settings ``names`` (``SHOW name``)."""
    conn = await connect(pg)
    try:
        return {name: await conn.fetchval(f"SHOW {name}") for name in names}
    finally:
        await conn.close()


DURABILITY = ("fsync", "synchronous_commit", "full_page_writes")


async def test_durable_by_default(server: TemporaryPostgres) -> None:
    assert server.durable
    assert await show(server, *DURABILITY) == {
        "fsync": "on",
        "synchronous_commit": "on",
        "full_page_writes": "on",
    }


async def test_fast_server_trades_durability_for_speed() -> None:
    with TemporaryPostgres(durable=False) as pg:
        assert not pg.durable
        assert await show(pg, *DURABILITY) == {
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
        }
        assert "fast" in repr(pg)


def test_settings_override_durability() -> None:
    pg = TemporaryPostgres(settings={"synchronous_commit": "local"})
    assert {name: pg.settings[name] for name in DURABILITY} == {
        "fsync": "on",
        "synchronous_commit": "local",
        "full_page_writes": "on",
    }


async def test_listens_on_127_0_0_1_only_with_password(
    server: TemporaryPostgres,
) -> None:
    settings = await show(
        server, "listen_addresses", "max_connections", "shared_buffers"
    )
    conn = await connect(server)
    try:
        server_addr = str(await conn.fetchval("SELECT inet_server_addr()"))
        backend_pid = await conn.fetchval("SELECT pg_backend_pid()")
    finally:
        await conn.close()
    assert settings == {
        "listen_addresses": "127.0.0.1",
        "max_connections": "200",
        "shared_buffers": "128MB",
    }
    assert server_addr == "127.0.0.1"
    # Another loopback address of this machine (on Linux all of 127/8 is
    # routed to lo) gets no answer: the server bound 127.0.0.1 alone.
    assert refuses_connections("127.0.0.2", server.port)
    # Password authentication is really enforced over TCP.
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(
            host=server.host,
            port=server.port,
            user=server.user,
            password="wrong",
            database=server.dbname,
        )
    # As root, the server runs as an unprivileged account.
    if os.geteuid() == 0:
        assert process_owner(backend_pid) != 0


async def test_restart_keeps_data_and_port(server: TemporaryPostgres) -> None:
    port, directory = server.port, server.directory
    conn = await connect(server)
    try:
        await conn.execute("CREATE TABLE kept (value text)")
        await conn.execute("INSERT INTO kept VALUES ('before restart')")
    finally:
        await conn.close()

    for mode in ("fast", "immediate"):
        server.restart(mode)
        assert (server.port, server.directory) == (port, directory)
        conn = await connect(server)
        try:
            assert await conn.fetchval("SELECT value FROM kept") == "before restart"
        finally:
            await conn.close()


async def test_every_commit_survives_a_crash(server: TemporaryPostgres) -> None:
    """An immediate restart is a crash: each commit that returned is kept.

    (A fast server, ``durable=False``, lost the last 16 of these 200 commits
    when this test was written.)
    """
    conn = await connect(server)
    try:
        await conn.execute("CREATE TABLE acknowledged (n int)")
        for n in range(200):  # 200 transactions, the crash right after.
            await conn.execute("INSERT INTO acknowledged VALUES ($1)", n)
    finally:
        await conn.close()
    server.restart("immediate")
    conn = await connect(server)
    try:
        assert await conn.fetchval("SELECT count(*) FROM acknowledged") == 200
    finally:
        await conn.close()


async def test_restart_drops_connections(server: TemporaryPostgres) -> None:
    conn = await connect(server)
    try:
        server.restart()
        with pytest.raises((asyncpg.PostgresError, OSError, asyncpg.InterfaceError)):
            await conn.fetchval("SELECT 1")
    finally:
        conn.terminate()


async def test_stop_removes_directory_and_is_idempotent() -> None:
    with TemporaryPostgres() as pg:
        directory, port = pg.directory, pg.port
        assert (directory / "data" / "postmaster.pid").exists()
        conn = await connect(pg)
        await conn.close()
    assert not directory.exists()
    assert not pg.running
    assert refuses_connections("127.0.0.1", port)
    pg.stop()  # again: a no-op
    with pytest.raises(RuntimeError, match="not started"):
        _ = pg.port


def test_missing_binaries_are_named() -> None:
    with pytest.raises(RuntimeError, match=r"initdb, pg_ctl, postgres.*postgresql"):
        find_postgres_binaries(path="/nonexistent", bin_glob="/nonexistent/*/bin")


def test_binaries_found_in_one_folder() -> None:
    binaries = find_postgres_binaries()
    folders = {binaries.initdb.parent, binaries.pg_ctl.parent, binaries.postgres.parent}
    assert len(folders) == 1
