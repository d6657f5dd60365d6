"""Configuration of the CLI: env files, topics and the runner they name."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asyncsourcing.application import Application
from asyncsourcing.persistence import (
    InfrastructureFactory,
    InfrastructureFactoryError,
    TrackingRecorder,
)
from asyncsourcing.projection import (
    BaseProjectionRunner,
    EventSourcedProjection,
    EventSourcedProjectionRunner,
    Projection,
    ProjectionRunner,
    ProjectionVersions,
)
from asyncsourcing.utils import Environment, TopicError, resolve_topic

__all__ = [
    "Backend",
    "Target",
    "UsageError",
    "compose_env",
    "configuration_error",
    "construct_runner",
    "construct_versions",
    "no_versions_error",
    "read_env_file",
    "resolve_class",
    "resolve_target",
    "topic_of",
]


# --- configuration -------------------------------------------------------


class UsageError(Exception):
    """Bad arguments, topics, env file or configuration: exit status 2.

    The message is printed as it is, on one line, without a traceback.
    """


_ENV_LINE = re.compile(r"(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)")


def read_env_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """The variables of an env file: ``KEY=VALUE`` lines.

    Blank lines and lines starting with ``#`` are skipped; a line may start
    with ``export``; a value in single or double quotes is taken literally
    between them (no escapes, no variable expansion) and may be followed by
    a comment; an unquoted value ends at `` #`` and is stripped. Raises
    :class:`UsageError`, naming the file and line, for anything else.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        msg = f"cannot read env file {os.fspath(path)!r}: {error}"
        raise UsageError(msg) from error
    variables: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _ENV_LINE.fullmatch(stripped)
        value = _parse_env_value(match.group(2)) if match else None
        if match is None or value is None:
            msg = f"{os.fspath(path)}:{number}: expected KEY=VALUE, not {line!r}"
            raise UsageError(msg)
        variables[match.group(1)] = value
    return variables


def _parse_env_value(raw: str) -> str | None:
    """The value of ``raw``, or None when its quotes do not close."""
    if raw[:1] in ("'", '"'):
        end = raw.find(raw[0], 1)
        rest = raw[end + 1 :].strip() if end > 0 else ""
        if end < 0 or (rest and not rest.startswith("#")):
            return None
        return raw[1:end]
    return re.split(r"\s#", raw, maxsplit=1)[0].strip()


def compose_env(
    file_variables: Mapping[str, str], environ: Mapping[str, str]
) -> dict[str, str]:
    """The ``env`` argument for applications and runners.

    They lay ``env`` over the process environment, so only the file's
    variables that the process environment lacks are passed: the process
    environment wins.
    """
    return {k: v for k, v in file_variables.items() if k not in environ}


# --- topics --------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """The classes that ``--app``, ``--projection`` and ``--view`` name."""

    application_class: type[Application[Any]]
    projection_class: type[Projection[Any]] | type[EventSourcedProjection[Any]]
    view_class: type[TrackingRecorder] | None
    view_topic: str | None = None
    """``--view`` as given, for messages."""


def resolve_class(
    topic: str, base: type[Any] | tuple[type[Any], ...], option: str
) -> type[Any]:
    """The class named by ``topic`` (``module:Class``), a subclass of ``base``.

    Raises :class:`UsageError` naming the option and the topic when the
    topic is malformed, cannot be imported or names something else.
    """
    module, _, attribute = topic.partition(":")
    if not module or not attribute:
        msg = f"{option} {topic!r}: expected a topic 'package.module:Class'"
        raise UsageError(msg)
    try:
        obj = resolve_topic(topic)
    except TopicError as error:
        # The cause says what is missing without repeating the topic.
        msg = f"{option}: cannot import {topic!r}: {error.__cause__ or error}"
        raise UsageError(msg) from error
    except Exception as error:
        # Importing runs the module: it may fail in any way.
        msg = f"{option}: importing {topic!r} failed: {type(error).__name__}: {error}"
        raise UsageError(msg) from error
    if not (isinstance(obj, type) and issubclass(obj, base)):
        bases = base if isinstance(base, tuple) else (base,)
        names = " or ".join(f"{b.__module__}.{b.__qualname__}" for b in bases)
        msg = f"{option} {topic!r} is {obj!r}, not a subclass of {names}"
        raise UsageError(msg)
    return obj


def resolve_target(args: argparse.Namespace, *, versioned: bool = False) -> Target:
    """The classes named by the parsed arguments; :class:`UsageError` if bad.

    ``versioned``: for the commands of versions, which need a
    :class:`Projection` and its view (an event-sourced projection has no
    versions).
    """
    application_class = resolve_class(args.app, Application, "--app")
    projection_class = resolve_class(
        args.projection, (Projection, EventSourcedProjection), "--projection"
    )
    view_class = None
    if versioned and issubclass(projection_class, EventSourcedProjection):
        msg = (
            f"--projection {args.projection!r} is an event-sourced projection, "
            "which has no versions: they need a Projection with a view in a "
            "database (SQLite, PostgreSQL)"
        )
        raise UsageError(msg)
    if issubclass(projection_class, EventSourcedProjection):
        if args.view is not None:
            msg = (
                f"--view: {args.projection!r} is an event-sourced projection, "
                "which records into its own application recorder: omit --view"
            )
            raise UsageError(msg)
    elif args.view is None:
        msg = f"--view is required for the projection {args.projection!r}"
        raise UsageError(msg)
    else:
        view_class = resolve_class(args.view, TrackingRecorder, "--view")
    return Target(application_class, projection_class, view_class, args.view)


# --- backends ------------------------------------------------------------

# The backends of the library, by package: what to call them in messages,
# and the settings that each needs besides PERSISTENCE_MODULE.
_BACKENDS = {
    "asyncsourcing.popo": ("in-memory", ""),
    "asyncsourcing.sqlite": ("SQLite", " and SQLITE_DBNAME"),
    "asyncsourcing.postgres": ("PostgreSQL", " and the POSTGRES_* settings"),
}


def _backend_package(module: str) -> str | None:
    """The backend package that ``module`` is or is in, if one of the library's."""
    for package in _BACKENDS:
        if module == package or module.startswith(f"{package}."):
            return package
    return None


def _view_backend(view_class: type[Any]) -> str | None:
    """The package of the library's backend whose view ``view_class`` extends."""
    for cls in view_class.__mro__:
        package = _backend_package(cls.__module__)
        if package is not None:
            return package
    return None


@dataclass(frozen=True)
class Backend:
    """The backend a projection is configured with, and where that is said."""

    setting: str
    """The variable that names it (``PERSISTENCE_MODULE``, or the one
    prefixed with the projection's name), or ``""`` for the default."""
    topic: str
    """The persistence module (or ``module:Class``) that is used."""

    @classmethod
    def of(cls, name: str, env: Mapping[str, str]) -> Backend:
        """The backend of the projection ``name`` in the process environment
        laid under ``env``, chosen as :class:`InfrastructureFactory` does."""
        environment = Environment(name, {**os.environ, **env})
        key = InfrastructureFactory.PERSISTENCE_MODULE
        for setting in environment.create_keys(key):
            value = dict.get(environment, setting)
            if value is not None:
                # An empty value means the default, as for the factory.
                if value:
                    return cls(setting, value)
                break
        return cls("", InfrastructureFactory.DEFAULT_PERSISTENCE_MODULE)

    @property
    def package(self) -> str | None:
        """The library's backend package, or None for another backend."""
        return _backend_package(self.topic.partition(":")[0])

    def __str__(self) -> str:
        if not self.setting:
            kind = _BACKENDS.get(self.topic, (self.topic, ""))[0]
            return (
                f"the {kind} default "
                f"({InfrastructureFactory.PERSISTENCE_MODULE} is not set)"
            )
        return f"{self.setting}={self.topic}"


def configuration_error(
    error: Exception, target: Target, env: Mapping[str, str]
) -> UsageError:
    """A :class:`UsageError` for ``error``, raised while constructing.

    When the view belongs to another of the library's backends than the one
    configured, the message says so and what to set; else it is ``error``'s
    own message, with the backend.
    """
    backend = Backend.of(target.projection_class.name, env)
    view_class = target.view_class
    view_backend = None if view_class is None else _view_backend(view_class)
    if (
        view_class is not None
        and view_backend is not None
        and backend.package is not None
        and view_backend != backend.package
    ):
        kind, settings = _BACKENDS[view_backend]
        setting = backend.setting or InfrastructureFactory.PERSISTENCE_MODULE
        view_topic = target.view_topic or topic_of(view_class)
        msg = (
            f"--view {view_topic!r} is a view for the {kind} backend "
            f"({view_backend}), but the backend is {backend}: set "
            f"{setting}={view_backend}{settings} in the environment or an "
            f"--env-file, or give a --view for the "
            f"{_BACKENDS[backend.package][0]} backend"
        )
        return UsageError(msg)
    return UsageError(f"{error} (backend: {backend})")


def no_versions_error(target: Target, env: Mapping[str, str]) -> UsageError:
    """The :class:`UsageError` of a view that keeps no versions (in memory)."""
    backend = Backend.of(target.projection_class.name, env)
    msg = (
        f"--view {target.view_topic!r} keeps no versions: they need the view in a "
        f"database (SQLite, PostgreSQL), not in memory (backend: {backend})"
    )
    return UsageError(msg)


def topic_of(cls: type[Any]) -> str:
    """``module:Class``, the topic of ``cls`` as the options take it."""
    return f"{cls.__module__}:{cls.__qualname__}"


# --- runners -------------------------------------------------------------


def construct_runner(
    target: Target, env: Mapping[str, str]
) -> BaseProjectionRunner[Any]:
    """A runner for ``target``, not started: no IO yet.

    The commands read what they need beside it from its public properties
    (:attr:`~BaseProjectionRunner.tracking_recorder`,
    :attr:`~BaseProjectionRunner.topics`,
    :attr:`~BaseProjectionRunner.projection_name`).

    Raises :class:`UsageError` when the configuration is wrong (an
    :class:`~eventsourcing.persistence.InfrastructureFactoryError`: a view
    that does not match the backend, a missing or invalid setting); any
    other error of the classes' constructors propagates.
    """
    try:
        return _construct_runner(target, env)
    except InfrastructureFactoryError as error:
        raise configuration_error(error, target, env) from error


def _construct_runner(
    target: Target, env: Mapping[str, str]
) -> BaseProjectionRunner[Any]:
    projection_class = target.projection_class
    if issubclass(projection_class, EventSourcedProjection):
        return EventSourcedProjectionRunner[Any, Any](
            application_class=target.application_class,
            projection_class=projection_class,
            env=env,
        )
    assert target.view_class is not None  # resolve_target() sees to it
    return ProjectionRunner[Any, Any](
        application_class=target.application_class,
        projection_class=projection_class,
        view_class=target.view_class,
        env=env,
    )


def construct_versions(
    target: Target, env: Mapping[str, str]
) -> ProjectionVersions[Any, Any]:
    """The versions of ``target``'s projection, not opened: no IO yet.

    Its methods construct the views and the application, so that they
    raise the configuration's errors:
    :func:`configuration_error` makes them :class:`UsageError`.
    """
    projection_class = target.projection_class
    # resolve_target(versioned=True) sees to both.
    assert not issubclass(projection_class, EventSourcedProjection)
    assert target.view_class is not None
    return ProjectionVersions[Any, Any](
        application_class=target.application_class,
        projection_class=projection_class,
        view_class=target.view_class,
        env=env,
    )
