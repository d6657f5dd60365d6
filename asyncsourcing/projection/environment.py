"""A runner's configuration: its environment variables, and what they set."""

from __future__ import annotations

import os
from collections.abc import Mapping

from eventsourcing.utils import Environment, EnvType, strtobool

from asyncsourcing.leases import LeaseSettings

__all__ = ["construct_env", "lease_settings", "with_defaults"]


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


def construct_env(name: str, env: EnvType | None = None) -> Environment:
    """The configuration of the projection ``name``: the process
    environment, then ``env``; variables prefixed with ``name`` win."""
    _env: dict[str, str] = dict(os.environ)
    if env is not None:
        _env.update(env)
    return Environment(name, _env)


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
