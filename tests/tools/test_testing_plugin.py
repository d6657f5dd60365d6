"""Our pytest plugin as users get it: registered by installing the package,
starting its PostgreSQL server when told to, isolating tests from each other.

Each test runs pytest on a small suite of a user's, in a subprocess
(``pytester``), with the default settings of a project of their own:
pytest-asyncio's strict mode, the plugin loaded by its entry point.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from typing import Any

import asyncpg
import pytest

from tests.support.paths import ROOT

pytest_plugins = ["pytester"]

PLUGIN = "asyncsourcing.testing.pytest_plugin"


@pytest.fixture
def no_postgres_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A user's environment: no PostgreSQL server is named."""
    for key in ("HOST", "PORT", "USER", "PASSWORD", "DBNAME", "SCHEMA"):
        monkeypatch.delenv(f"POSTGRES_{key}", raising=False)


def test_installing_the_package_registers_the_plugin() -> None:
    [entry_point] = [
        ep
        for ep in importlib.metadata.entry_points(group="pytest11")
        if ep.value == PLUGIN
    ]
    # Named after the module, so that `-p <module>` finds it registered.
    assert entry_point.name == PLUGIN


def test_naming_the_plugin_with_p_as_well_is_harmless(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile("def test_store(store):\n    assert store.backend == 'popo'\n")
    result = pytester.runpytest_subprocess("-p", PLUGIN)
    result.assert_outcomes(passed=1)


@pytest.mark.usefixtures("no_postgres_env")
def test_lazy_mode_starts_the_server_when_a_test_first_needs_it(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        import os

        def test_before():
            assert "POSTGRES_HOST" not in os.environ

        def test_needs_the_server(postgres_env):
            assert os.environ["POSTGRES_HOST"] == postgres_env["POSTGRES_HOST"]

        def test_after():
            assert "POSTGRES_HOST" in os.environ
        """
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=3)


@pytest.mark.usefixtures("no_postgres_env")
def test_eager_mode_starts_the_server_before_collection(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini("[pytest]\nasyncsourcing_postgres = eager\n")
    pytester.makepyfile(
        """
        import os

        HOST = os.environ.get("POSTGRES_HOST")  # read at import time

        def test_the_server_was_there_at_import(postgres_env):
            assert HOST == postgres_env["POSTGRES_HOST"] == "127.0.0.1"
        """
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1)


@pytest.mark.usefixtures("no_postgres_env")
@pytest.mark.parametrize(
    ("ini", "args"),
    [("asyncsourcing_postgres = off\n", ()), ("", ("--no-postgres",))],
    ids=["off", "--no-postgres"],
)
def test_without_a_server_tests_that_need_one_are_skipped(
    pytester: pytest.Pytester, ini: str, args: tuple[str, ...]
) -> None:
    pytester.makeini(f"[pytest]\n{ini}")
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.postgres
        def test_marked():
            pass

        @pytest.mark.parametrize("store", ["postgres"], indirect=True)
        def test_postgres_store(store):
            pass

        @pytest.mark.parametrize("store", ["popo", "sqlite"], indirect=True)
        def test_other_stores(store):
            pass
        """
    )
    result = pytester.runpytest_subprocess("-rs", *args)
    result.assert_outcomes(passed=2, skipped=2)
    result.stdout.fnmatch_lines(["*no PostgreSQL server*"])


def test_a_bad_mode_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncsourcing_postgres = sometimes\n")
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*asyncsourcing_postgres must be one of lazy, eager, off, not 'sometimes'*"]
    )


def test_an_unknown_backend_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.parametrize("store", ["cassandra"], indirect=True)
        def test_store(store):
            pass
        """
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*Unknown backend 'cassandra'*"])


@pytest.mark.postgres
async def test_postgres_tests_are_isolated_and_leave_nothing_behind(
    pytester: pytest.Pytester,
    postgres_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The session's server, inherited through POSTGRES_*: a schema per test.
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makepyfile(
        """
        import pytest

        from examples.dogschool.application import DogSchool

        pytestmark = [
            pytest.mark.asyncio,
            pytest.mark.parametrize("store", ["postgres"], indirect=True),
        ]

        @pytest.mark.parametrize("dog", ["Fido", "Milly"])
        async def test_register(store, dog):
            with open("schemas.txt", "a") as file:
                print(store.env["POSTGRES_SCHEMA"], file=file)
            async with store.application(DogSchool) as school:
                assert await school.recorder.max_notification_id() is None
                _, position = await school.register_dog(dog)
                assert position == 1
        """
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=2)
    schemas = (pytester.path / "schemas.txt").read_text().split()
    assert len(set(schemas)) == 2
    conn: Any = await asyncpg.connect(
        host=postgres_env["POSTGRES_HOST"],
        port=int(postgres_env["POSTGRES_PORT"]),
        user=postgres_env["POSTGRES_USER"],
        password=postgres_env["POSTGRES_PASSWORD"],
        database=postgres_env["POSTGRES_DBNAME"],
    )
    try:
        left = await conn.fetch(
            "SELECT nspname FROM pg_namespace WHERE nspname = ANY($1)", schemas
        )
    finally:
        await conn.close()
    assert left == []


def test_loading_the_plugin_imports_little() -> None:
    # It is loaded in every pytest session of an environment with asyncsourcing:
    # no pytest-asyncio needed, no database driver imported until a test asks.
    script = (
        "import sys\n"
        f"import {PLUGIN}\n"
        "heavy = {'pytest_asyncio', 'asyncpg', 'aiosqlite', 'fastapi', 'httpx'}\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert result.stdout.strip() == "[]"
