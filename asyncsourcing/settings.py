"""Reading settings from environment variables, the same way in every backend.

A setting ``KEY`` of an environment named ``orders`` is looked up as
``ORDERS_KEY``, then ``KEY`` (:meth:`Environment.create_keys`): the first
variable that is set wins, even when it is empty. :meth:`EnvReader.get`
strips the value, and an empty value means "not set", so that the default
applies.

The parsers (:func:`parse_bool`, :func:`parse_number`, :func:`parse_choice`)
raise :class:`ValueError` saying what was expected, so that each backend
words its errors as it always has; :class:`EnvReader` records each problem
against the variable that holds the value and reads on, so that one error
can report every problem.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, TypeVar, cast

from eventsourcing.utils import Environment, strtobool

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = ["EnvReader", "parse_bool", "parse_choice", "parse_number"]

_T = TypeVar("_T")
_S = TypeVar("_S", bound=str)


def parse_bool(text: str) -> bool:
    """``text`` as a boolean, as eventsourcing reads one ("true", "no", "1"...).

    :raises ValueError: if it is not a truth value.
    """
    return bool(strtobool(text))


def parse_number(
    text: str,
    kind: Callable[[str], _T],
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive: bool = False,
) -> _T:
    """``text`` as a finite ``kind`` (:class:`int` or :class:`float`), in bounds.

    :param exclusive: whether ``minimum`` itself is refused.
    :raises ValueError: saying what was expected, and quoting ``text``.
    """
    described = "an integer" if kind is int else "a number"
    try:
        number = kind(text)
    except ValueError:
        msg = f"{described} is expected, got {text!r}"
        raise ValueError(msg) from None
    as_float = float(cast("float", number))
    if not math.isfinite(as_float):
        msg = f"{described} is expected, got {text!r}"
    elif minimum is not None and (
        as_float < minimum or (exclusive and as_float == minimum)
    ):
        bound = "greater than" if exclusive else "at least"
        msg = f"must be {bound} {minimum:g}, got {text!r}"
    elif maximum is not None and as_float > maximum:
        msg = f"must be at most {maximum:g}, got {text!r}"
    else:
        return number
    raise ValueError(msg)


def parse_choice(text: str, choices: tuple[_S, ...]) -> _S:
    """The one of ``choices`` that ``text`` is, ignoring case.

    :raises ValueError: listing the choices, and quoting ``text``.
    """
    for choice in choices:
        if text.lower() == choice:
            return choice
    msg = f"expected one of {', '.join(choices)}, got {text!r}"
    raise ValueError(msg)


class EnvReader:
    """Reads settings from an environment, collecting every problem found.

    A missing or malformed setting is recorded in :attr:`missing` or
    :attr:`problems`, and a fallback value is returned so that reading goes
    on: the caller then reports them all in one error.
    """

    def __init__(self, env: Environment | Mapping[str, str]) -> None:
        self.env = env if isinstance(env, Environment) else Environment(env=env)
        #: The unprefixed names of required settings not found.
        self.missing: list[str] = []
        #: The variables whose values are malformed, as set, and why.
        self.problems: list[tuple[str, str]] = []

    def keys(self, key: str) -> list[str]:
        """The variables that may hold ``key``, in the order they are looked up."""
        return self.env.create_keys(key)

    def key_of(self, key: str) -> str:
        """The variable that holds ``key``'s value (e.g. ``APP_POSTGRES_PORT``).

        ``key`` itself when none is set.
        """
        for candidate in self.keys(key):
            # dict.get: Environment.get would look up the prefixed names again.
            if dict.get(self.env, candidate) is not None:
                return candidate
        return key

    def get(self, key: str) -> str | None:
        """``key``'s value, stripped; None if no variable holds it."""
        value = self.env.get(key)
        return value.strip() if value is not None else None

    def invalid(self, key: str, reason: str) -> None:
        """Record that ``key``'s value is malformed, for ``reason``."""
        self.problems.append((self.key_of(key), reason))

    def require(
        self, key: str, otherwise: str | None = None, *, secret: bool = False
    ) -> str:
        """``key``'s value, else ``otherwise``, else recorded as missing.

        :param otherwise: the value from elsewhere (e.g. a URL's part).
        :param secret: take the value as it is, unstripped and possibly
            empty, as a password may be (an empty value still gives way to
            ``otherwise``).
        """
        value = self.env.get(key) if secret else self.get(key)
        if not value and otherwise is not None:
            return otherwise
        if value is None or (not secret and not value):
            self.missing.append(key)
            return ""
        return value

    def parse(
        self, key: str, value: str, parse: Callable[[str], _T], *, fallback: _T
    ) -> _T:
        """``parse(value)``, or ``fallback`` with the error recorded against ``key``."""
        try:
            return parse(value)
        except Exception as error:
            self.invalid(key, f"{error} (got {value!r})")
            return fallback

    def boolean(self, key: str, *, default: bool) -> bool:
        """A boolean setting (see :func:`parse_bool`)."""
        value = self.get(key)
        if not value:
            return default
        return self.parse(key, value, parse_bool, fallback=default)

    def number(
        self,
        key: str,
        kind: Callable[[str], _T],
        default: _T,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
        exclusive: bool = False,
    ) -> _T:
        """A number setting (see :func:`parse_number`)."""
        value = self.get(key)
        if not value:
            return default
        try:
            return parse_number(
                value, kind, minimum=minimum, maximum=maximum, exclusive=exclusive
            )
        except ValueError as error:
            self.invalid(key, str(error))
            return default

    def choice(self, key: str, choices: tuple[_S, ...]) -> _S | None:
        """One of ``choices``, ignoring case (see :func:`parse_choice`)."""
        value = self.get(key)
        if not value:
            return None
        try:
            return parse_choice(value, choices)
        except ValueError as error:
            self.invalid(key, str(error))
            return None
