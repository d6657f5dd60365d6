"""Fresh, empty event stores for tests, on each backend.

A :class:`Store` is the environment of a new store on one backend, with
factories of applications and projection runners on it:

* :func:`popo_store`: in memory; each application or runner has its own;
* :func:`sqlite_store`: a new SQLite file in a directory (``tmp_path``);
* :func:`postgres_store`: a new schema on a PostgreSQL server, dropped with
  everything in it on exit.

The pytest fixtures of :mod:`asyncsourcing.testing.fixtures` make one per
test; these functions serve fixtures of a wider scope, or other test
runners. They are synchronous and use no event loop of the caller's, so
that they suit fixtures of any scope and any event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar, get_args
from uuid import uuid4

import asyncpg

from asyncsourcing.application import Application
from asyncsourcing.persistence import TrackingRecorder
from asyncsourcing.policies import ErrorPolicyLike
from asyncsourcing.postgres.identifiers import quote_identifier
from asyncsourcing.projection import Projection, ProjectionRunner

__all__ = [
    "BACKENDS",
    "Backend",
    "MakeApplication",
    "MakeRunner",
    "Store",
    "popo_store",
    "postgres_store",
    "sqlite_store",
]

Backend = Literal["popo", "sqlite", "postgres"]
BACKENDS: tuple[Backend, ...] = get_args(Backend)
"""The backends' names: ``("popo", "sqlite", "postgres")``."""

TApplication = TypeVar("TApplication", bound=Application[Any])
TView = TypeVar("TView", bound=TrackingRecorder)
T = TypeVar("T")

#: Seconds that dropping a test's schema waits for locks held by the test's
#: connections (a transaction left open), before it gives up.
DROP_LOCK_TIMEOUT = 10


@dataclass(frozen=True)
class Store:
    """A fresh, empty event store: its backend and its environment.

    The environment names the backend and the database
    (``PERSISTENCE_MODULE``, ``SQLITE_DBNAME``, ``POSTGRES_*``); it is
    applied over ``os.environ``, as ``env`` arguments are. In memory
    (``popo``), every application and every runner has a store of its own:
    a runner's events are written with ``runner.app``.
    """

    backend: Backend
    env: Mapping[str, str] = field(default_factory=dict)

    def application(
        self,
        application_class: type[TApplication],
        env: Mapping[str, str] | None = None,
    ) -> TApplication:
        """An application on the store, not yet connected.

        Use it with ``async with``, which closes it. ``env`` is applied over
        the store's environment.
        """
        return application_class({**self.env, **(env or {})})

    def runner(
        self,
        application_class: type[TApplication],
        projection_class: type[Projection[TView]],
        view_class: type[TView] | Mapping[str, type[TView]],
        *,
        env: Mapping[str, str] | None = None,
        error_policy: ErrorPolicyLike | None = None,
    ) -> ProjectionRunner[TApplication, TView]:
        """A projection runner on the store, not yet started.

        Use it with ``async with`` (starts it, then stops and closes it) or
        ``await runner.run_forever(...)``. ``view_class`` is a view class, or
        a mapping of backend names to view classes, from which
        :meth:`view_class` picks the store's. ``env`` is applied over the
        store's environment.
        """
        return ProjectionRunner(
            application_class=application_class,
            projection_class=projection_class,
            view_class=self.view_class(view_class),
            env={**self.env, **(env or {})},
            error_policy=error_policy,
        )

    def view_class(self, views: type[TView] | Mapping[str, type[TView]]) -> type[TView]:
        """``views`` if it is a class, else the class it maps the backend to.

        :raises LookupError: if ``views`` has no class for the backend.
        """
        if not isinstance(views, Mapping):
            return views
        try:
            return views[self.backend]
        except KeyError:
            msg = f"No view class for backend {self.backend!r} in {dict(views)!r}"
            raise LookupError(msg) from None


class MakeApplication(Protocol):
    """The type of the ``make_application`` fixture: :meth:`Store.application`."""

    def __call__(
        self,
        application_class: type[TApplication],
        env: Mapping[str, str] | None = None,
    ) -> TApplication: ...


class MakeRunner(Protocol):
    """The type of the ``make_runner`` fixture: :meth:`Store.runner`."""

    def __call__(
        self,
        application_class: type[TApplication],
        projection_class: type[Projection[TView]],
        view_class: type[TView] | Mapping[str, type[TView]],
        *,
        env: Mapping[str, str] | None = None,
        error_policy: ErrorPolicyLike | None = None,
    ) -> ProjectionRunner[TApplication, TView]: ...


def popo_store() -> Store:
    """An in-memory store."""
    return Store("popo", {"PERSISTENCE_MODULE": "asyncsourcing.popo"})


def sqlite_store(directory: Path | str, name: str = "store.sqlite") -> Store:
    """A store in the SQLite file ``name`` of ``directory``, created on first use.

    The file must not exist yet: pass a new directory, such as ``tmp_path``.

    :raises FileExistsError: if it does.
    """
    path = Path(directory) / name
    if path.exists():
        msg = f"{path} exists: a fresh store needs a new file"
        raise FileExistsError(msg)
    return Store(
        "sqlite",
        {"PERSISTENCE_MODULE": "asyncsourcing.sqlite", "SQLITE_DBNAME": str(path)},
    )


@contextlib.contextmanager
def postgres_store(
    postgres_env: Mapping[str, str], prefix: str = "test"
) -> Iterator[Store]:
    """A store in a new schema ``<prefix>_<random>``, dropped on exit.

    ``postgres_env`` holds the ``POSTGRES_HOST``, ``POSTGRES_PORT``,
    ``POSTGRES_USER``, ``POSTGRES_PASSWORD`` and ``POSTGRES_DBNAME`` of a
    server where that user may create schemas (the ``postgres_env`` fixture).
    The schema is dropped with everything in it, so close the store's
    applications and runners first.

    :raises RuntimeError: if the schema cannot be dropped within
        :data:`DROP_LOCK_TIMEOUT` seconds because connections still hold
        locks in it (a transaction left open).
    """
    schema = f"{prefix}_{uuid4().hex[:12]}"
    quoted = quote_identifier(schema)
    _run_in_thread(_execute(postgres_env, f"CREATE SCHEMA {quoted}"))
    try:
        yield Store(
            "postgres",
            {
                "PERSISTENCE_MODULE": "asyncsourcing.postgres",
                **postgres_env,
                "POSTGRES_SCHEMA": schema,
            },
        )
    finally:
        try:
            _run_in_thread(
                _execute(postgres_env, f"DROP SCHEMA IF EXISTS {quoted} CASCADE")
            )
        except asyncpg.LockNotAvailableError as error:
            msg = (
                f"Could not drop schema {schema!r} within {DROP_LOCK_TIMEOUT} s: "
                "connections of the test still hold locks in it; close its "
                "applications and runners (async with)"
            )
            raise RuntimeError(msg) from error


async def _execute(postgres_env: Mapping[str, str], sql: str) -> None:
    conn = await asyncpg.connect(
        host=postgres_env["POSTGRES_HOST"],
        port=int(postgres_env["POSTGRES_PORT"]),
        user=postgres_env["POSTGRES_USER"],
        password=postgres_env["POSTGRES_PASSWORD"],
        database=postgres_env["POSTGRES_DBNAME"],
        server_settings={
            "application_name": "asyncsourcing-testing",
            "lock_timeout": f"{DROP_LOCK_TIMEOUT}s",
        },
    )
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _run_in_thread(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` to completion in an event loop of a thread of its own.

    Safe whether or not the calling thread runs an event loop.
    """
    results: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(asyncio.run(coroutine))
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=run, name="asyncsourcing-testing")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return results[0]
