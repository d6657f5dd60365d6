"""Pytest plugin: a throwaway PostgreSQL server, and a fresh event store per test.

Installing asyncsourcing registers it (a ``pytest11`` entry point named
``asyncsourcing.testing.pytest_plugin``, so that ``-p`` with that name still
works too). It provides:

* a :class:`~asyncsourcing.testing.pgserver.TemporaryPostgres` for the test
  session, whose ``POSTGRES_HOST``, ``POSTGRES_PORT``, ``POSTGRES_USER``,
  ``POSTGRES_PASSWORD`` and ``POSTGRES_DBNAME`` are exported into
  ``os.environ``; the ini setting ``asyncsourcing_postgres`` says when it
  is started:

  - ``lazy`` (the default): when a test first needs it (the
    ``postgres_env`` fixture, a ``postgres`` store, the ``postgres`` marker);
  - ``eager``: at configure time, before any test module is imported, so
    that modules may read the variables at import time;
  - ``off``: never, as with ``--no-postgres``; tests that need a server
    are skipped.

  None is started when ``POSTGRES_HOST`` is set: that server is used as it
  is. The server is stopped, and the environment restored, at unconfigure
  time, which pytest reaches on failures and on KeyboardInterrupt too;
* the ``postgres`` marker and the session fixture ``postgres_env``;
* the fixtures ``store``, ``make_application`` and ``make_runner`` of
  :mod:`asyncsourcing.testing.fixtures`.
"""

from __future__ import annotations

import os

import pytest

from asyncsourcing.testing.fixtures import make_application, make_runner, store
from asyncsourcing.testing.pgserver import TemporaryPostgres

__all__ = ["make_application", "make_runner", "postgres_env", "store"]

INI_NAME = "asyncsourcing_postgres"
MODES = ("lazy", "eager", "off")

_ENV_KEYS = (
    "POSTGRES_HOST",
    "POSTGRES_PORT",
    "POSTGRES_USER",
    "POSTGRES_PASSWORD",
    "POSTGRES_DBNAME",
)
_NO_SERVER = "no PostgreSQL server (asyncsourcing_postgres=off or --no-postgres)"

_server_key = pytest.StashKey[TemporaryPostgres]()
# Why the server could not start, so that it is tried once per session.
_failure_key = pytest.StashKey[BaseException]()
# The environment's values before we exported ours, to put back afterwards
# (matters when pytest runs in-process several times, e.g. under pytester).
_saved_env_key = pytest.StashKey[dict[str, str | None]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add ``--no-postgres`` and the ini setting ``asyncsourcing_postgres``."""
    parser.addoption(
        "--no-postgres",
        action="store_true",
        default=False,
        help=(
            "do not start a temporary PostgreSQL server (unless POSTGRES_HOST "
            "is set, a test that needs one starts one); tests that need one "
            "are skipped"
        ),
    )
    parser.addini(
        INI_NAME,
        default="lazy",
        help=(
            "when to start a temporary PostgreSQL server unless POSTGRES_HOST "
            "is set: lazy (when a test first needs it, the default), eager "
            "(before collection), off"
        ),
    )


def _mode(config: pytest.Config) -> str:
    """``lazy``, ``eager`` or ``off``; ``--no-postgres`` means ``off``."""
    if config.getoption("--no-postgres"):
        return "off"
    mode = str(config.getini(INI_NAME)).strip().lower() or "lazy"
    if mode not in MODES:
        msg = f"{INI_NAME} must be one of {', '.join(MODES)}, not {mode!r}"
        raise pytest.UsageError(msg)
    return mode


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker; start the server now in ``eager`` mode."""
    config.addinivalue_line(
        "markers",
        "postgres: the test needs the PostgreSQL server named by the POSTGRES_* "
        "environment variables (skipped when there is none)",
    )
    if _mode(config) == "eager" and not config.getoption("help", False):
        _start_server(config)


def _start_server(config: pytest.Config) -> None:
    """Start the session's server and export its settings, unless there is one."""
    if os.environ.get("POSTGRES_HOST"):
        return  # an external server, or ours, already exported
    failure = config.stash.get(_failure_key, None)
    if failure is not None:
        msg = f"The temporary PostgreSQL server did not start: {failure}"
        raise RuntimeError(msg) from failure
    server = TemporaryPostgres()
    try:
        server.start()
    except BaseException as error:
        config.stash[_failure_key] = error
        raise
    config.stash[_server_key] = server
    exported = server.env()
    config.stash[_saved_env_key] = {key: os.environ.get(key) for key in exported}
    os.environ.update(exported)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Stop the server started by this plugin and restore the environment."""
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


def _postgres_settings(config: pytest.Config) -> dict[str, str] | None:
    """The POSTGRES_* settings of the server, started if need be; None if off."""
    if not os.environ.get("POSTGRES_HOST"):
        if _mode(config) == "off":
            return None
        _start_server(config)
    defaults = {
        "POSTGRES_PORT": "5432",
        "POSTGRES_USER": "eventsourcing",
        "POSTGRES_PASSWORD": "eventsourcing",
        "POSTGRES_DBNAME": "eventsourcing",
    }
    return {key: os.environ.get(key) or defaults.get(key, "") for key in _ENV_KEYS}


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip tests marked ``postgres`` when there is no server."""
    if item.get_closest_marker("postgres") and _postgres_settings(item.config) is None:
        pytest.skip(_NO_SERVER)


@pytest.fixture(scope="session")
def postgres_env(pytestconfig: pytest.Config) -> dict[str, str]:
    """The ``POSTGRES_*`` settings of the session's server, as a new dict.

    Starts the server if it is not running yet (``lazy`` mode). Skips the
    test when there is none (``off`` mode or ``--no-postgres``, and no
    ``POSTGRES_HOST``).
    """
    settings = _postgres_settings(pytestconfig)
    if settings is None:
        pytest.skip(_NO_SERVER)
    return settings
