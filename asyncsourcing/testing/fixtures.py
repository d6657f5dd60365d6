"""Pytest fixtures: a fresh event store per test, applications and runners on it.

Registered by :mod:`asyncsourcing.testing.pytest_plugin`:

* ``store``: a new, empty :class:`~asyncsourcing.testing.stores.Store` for
  the test, in memory unless parametrized indirectly with a backend's name::

      @pytest.mark.parametrize("store", ["popo", "sqlite", "postgres"], indirect=True)

  ``sqlite`` is a new file in the test's ``tmp_path``; ``postgres`` a new
  schema on the session's server (the test is skipped without one), dropped
  after the test: no test sees another's events or views.
* ``make_application``: :meth:`Store.application` of the test's store;
* ``make_runner``: :meth:`Store.runner` of the test's store.

The fixtures are synchronous and function-scoped: they suit tests in any
event loop. What they make is used with ``async with`` in the test.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, cast

import pytest

if TYPE_CHECKING:
    from pathlib import Path

    from asyncsourcing.testing.stores import MakeApplication, MakeRunner, Store

__all__ = ["make_application", "make_runner", "store"]


@pytest.fixture
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    """A fresh, empty store for the test: ``popo`` unless parametrized."""
    from asyncsourcing.testing.stores import (
        BACKENDS,
        popo_store,
        postgres_store,
        sqlite_store,
    )

    backend = getattr(request, "param", "popo")
    if backend == "popo":
        yield popo_store()
    elif backend == "sqlite":
        yield sqlite_store(cast("Path", request.getfixturevalue("tmp_path")))
    elif backend == "postgres":
        postgres_env = cast("dict[str, str]", request.getfixturevalue("postgres_env"))
        with postgres_store(postgres_env) as fresh:
            yield fresh
    else:
        msg = f"Unknown backend {backend!r} for the store fixture: one of {BACKENDS}"
        raise pytest.UsageError(msg)


@pytest.fixture
def make_application(store: Store) -> MakeApplication:
    """Makes applications on the test's store: :meth:`Store.application`."""
    return store.application


@pytest.fixture
def make_runner(store: Store) -> MakeRunner:
    """Makes projection runners on the test's store: :meth:`Store.runner`."""
    return store.runner
