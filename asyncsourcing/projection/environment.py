"""A runner's configuration: its environment variables, and what they set."""

from __future__ import annotations

import os
from collections.abc import Mapping

from eventsourcing.utils import Environment, EnvType, strtobool

from asyncsourcing.leases import LeaseSettings
from asyncsourcing.versions import versioned_name

__all__ = [
    "VersionEnvironment",
    "construct_env",
    "lease_settings",
    "with_defaults",
]


def with_defaults(
    env: EnvType | None, env_defaults: Mapping[str, str] | None
) -> EnvType | None:
    """``env`` with the ``env_defaults`` that the process environment lacks.

    Laid over the process environment (by :func:`construct_env` and by the
    application), it gives each variable name the precedence ``env`` >
    :data:`os.environ` > ``env_defaults``. Per name, as for the
    application's class attribute ``env``: a prefixed default
    (``EVENTCOUNTERS_X``) still wins over a plain ``X`` of the process
    environment.
    """
    if not env_defaults:
        return env
    merged = {k: v for k, v in env_defaults.items() if k not in os.environ}
    if env is not None:
        merged.update(env)
    return merged


def construct_env(
    name: str, env: EnvType | None = None, *, version: int = 1
) -> Environment:
    """The configuration of the projection ``name``: the process
    environment, then ``env``; variables prefixed with ``name`` win.

    For a ``version`` above 1 the environment is named after the version
    (``DOGS_V2``: its tables are ``dogs_v2_...``), and a variable prefixed
    with it wins over one prefixed with ``name``, which wins over a plain one.
    """
    _env: dict[str, str] = dict(os.environ)
    if env is not None:
        _env.update(env)
    if version == 1:
        return Environment(name, _env)
    return VersionEnvironment(name, version, _env)


class VersionEnvironment(Environment):
    """The environment of a version of a projection: named after the
    version, falling back to variables prefixed with the projection's name."""

    def __init__(self, name: str, version: int, env: EnvType | None = None) -> None:
        super().__init__(versioned_name(name, version), env)
        self.projection_name = name

    def create_keys(self, key: str) -> list[str]:
        own, plain = super().create_keys(key)
        return [own, self.projection_name.upper() + "_" + key, plain]


def lease_settings(env: Environment) -> LeaseSettings:
    """``LEADERSHIP``, ``LEASE_TTL`` and ``LEASE_FAST_TAKEOVER``.

    Raises :class:`ValueError` naming the variable whose value is wrong.
    """
    defaults = LeaseSettings()
    values: dict[str, bool | float] = {}
    for name, field, parse in (
        ("LEADERSHIP", "enabled", strtobool),
        ("LEASE_TTL", "ttl", float),
        ("LEASE_FAST_TAKEOVER", "fast_takeover", strtobool),
    ):
        text = env.get(name)
        if text is None:
            continue
        try:
            values[field] = parse(text)
        except ValueError:
            msg = f"{name} must be {type(getattr(defaults, field)).__name__}, "
            raise ValueError(msg + f"got {text!r}") from None
    try:
        return LeaseSettings(**values)  # type: ignore[arg-type]
    except ValueError as error:
        raise ValueError(str(error)) from None
