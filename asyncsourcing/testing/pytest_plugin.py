"""Pytest plugin that provides a PostgreSQL server to the test session.

Load it with ``-p asyncsourcing.testing.pytest_plugin`` (our pyproject's
``addopts`` does). At configure time, before any test module is imported, it
starts a :class:`~asyncsourcing.testing.pgserver.TemporaryPostgres` and
exports its ``POSTGRES_HOST``, ``POSTGRES_PORT``, ``POSTGRES_USER``,
``POSTGRES_PASSWORD`` and ``POSTGRES_DBNAME`` into ``os.environ``: test
modules may read them at import time. It does not start one when:

* ``POSTGRES_HOST`` is already set: that external server is used as it is;
* ``--no-postgres`` is given: tests marked ``postgres`` and those using the
  ``postgres_env`` fixture are then skipped.

The server is stopped, and the environment restored, at unconfigure time,
which pytest reaches on failures and on KeyboardInterrupt too.
"""

from __future__ import annotations

import os

import pytest

from asyncsourcing.testing.pgserver import TemporaryPostgres

_ENV_KEYS = (
    "POSTGRES_HOST",
    "POSTGRES_PORT",
    "POSTGRES_USER",
    "POSTGRES_PASSWORD",
    "POSTGRES_DBNAME",
)

_server_key = pytest.StashKey[TemporaryPostgres]()
# The environment's values before we exported ours, to put back afterwards
# (matters when pytest runs in-process several times, e.g. under pytester).
_saved_env_key = pytest.StashKey[dict[str, str | None]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add ``--no-postgres``."""
    parser.addoption(
        "--no-postgres",
        action="store_true",
        default=False,
        help=(
            "do not start a temporary PostgreSQL server (one is started unless "
            "POSTGRES_HOST is set); tests marked 'postgres' are skipped"
        ),
    )


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker and start the server, before collection."""
    config.addinivalue_line(
        "markers",
        "postgres: the test needs the PostgreSQL server named by the POSTGRES_* "
        "environment variables (skipped with --no-postgres and no POSTGRES_HOST)",
    )
    if os.environ.get("POSTGRES_HOST"):
        return  # an external server, used as it is
    if config.getoption("--no-postgres") or config.getoption("help", False):
        return
    server = TemporaryPostgres()
    server.start()
    config.stash[_server_key] = server
    exported = server.env()
    config.stash[_saved_env_key] = {key: os.environ.get(key) for key in exported}
    os.environ.update(exported)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Stop the server started by :func:`pytest_configure` and restore env."""
    server = config.stash.get(_server_key, None)
    if server is None:
        return
    del config.stash[_server_key]
    try:
        server.stop()
    finally:
        for key, value in config.stash.get(_saved_env_key, {}).items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _postgres_settings() -> dict[str, str] | None:
    """The POSTGRES_* settings if a server is available, else None."""
    if not os.environ.get("POSTGRES_HOST"):
        return None
    defaults = {
        "POSTGRES_PORT": "5432",
        "POSTGRES_USER": "eventsourcing",
        "POSTGRES_PASSWORD": "eventsourcing",
        "POSTGRES_DBNAME": "eventsourcing",
    }
    return {key: os.environ.get(key) or defaults.get(key, "") for key in _ENV_KEYS}


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip tests marked ``postgres`` when there is no server."""
    if item.get_closest_marker("postgres") and _postgres_settings() is None:
        pytest.skip("no PostgreSQL server (--no-postgres and no POSTGRES_HOST)")


@pytest.fixture(scope="session")
def postgres_env() -> dict[str, str]:
    """The ``POSTGRES_*`` settings of the session's server, as a new dict.

    Skips the test when there is no server (``--no-postgres`` without
    ``POSTGRES_HOST``).
    """
    settings = _postgres_settings()
    if settings is None:
        pytest.skip("no PostgreSQL server (--no-postgres and no POSTGRES_HOST)")
    return settings
