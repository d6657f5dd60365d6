"""Replays: telling handlers that an event was processed by an earlier version.

A runner processes each event (or batch) inside :func:`replaying` when the
version it runs records the event as a replay (see
:mod:`asyncsourcing.versions`: a version that is building, or an event at
or before the mark that a switch or a reset recorded). Handlers, and what
they call, ask::

    if is_replaying():
        ...

Side effects, the work a replay must not repeat (an email, a call to
another service), are written as functions decorated with
:func:`side_effect`: while replaying, a call does nothing and returns
None, unless the projection opts in (``side_effects_during_replay = True``
on the class) or the handler does, around the calls it means::

    with allow_side_effects():
        await send_welcome_email(dog)

The new events of an :class:`~asyncsourcing.projection.EventSourcedProjection`
are side effects: while replaying, it records the event's tracking alone.
The context is a :mod:`contextvars` variable: tasks a handler starts inherit it.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Any, ParamSpec, TypeVar, overload

__all__ = [
    "ReplayContext",
    "allow_side_effects",
    "is_replaying",
    "replay_context",
    "replaying",
    "side_effect",
    "side_effects_suppressed",
]

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class ReplayContext:
    """How the events being processed are being processed."""

    replaying: bool = False
    """Whether an earlier version (or the version, before a reset) has
    processed them already."""

    replay_until: int | None = None
    """The version's replay mark: the last position known processed
    before (None: every event of a building version is a replay)."""

    side_effects: bool = True
    """Whether :func:`side_effect` functions run."""


_LIVE = ReplayContext()
_context: ContextVar[ReplayContext] = ContextVar(
    "asyncsourcing_replay_context", default=_LIVE
)


def replay_context() -> ReplayContext:
    """The context of the events being processed (not replaying, outside a runner)."""
    return _context.get()


def is_replaying() -> bool:
    """Whether the events being processed are a replay."""
    return _context.get().replaying


def side_effects_suppressed() -> bool:
    """Whether a :func:`side_effect` function called now would do nothing."""
    return not _context.get().side_effects


@contextlib.contextmanager
def replaying(
    replay_until: int | None, *, side_effects: bool = False
) -> Iterator[ReplayContext]:
    """Process events as a replay in the block (what a runner does);
    ``side_effects`` says whether the projection opted in."""
    token = _context.set(ReplayContext(True, replay_until, side_effects))
    try:
        yield _context.get()
    finally:
        _context.reset(token)


@contextlib.contextmanager
def allow_side_effects() -> Iterator[None]:
    """Let :func:`side_effect` functions run in the block, replay or not:
    a handler's opt-in for the side effects it calls there."""
    token = _context.set(replace(_context.get(), side_effects=True))
    try:
        yield
    finally:
        _context.reset(token)


@overload
def side_effect(
    function: Callable[P, Awaitable[T]],
) -> Callable[P, Awaitable[T | None]]: ...


@overload
def side_effect(function: Callable[P, T]) -> Callable[P, T | None]: ...


def side_effect(function: Callable[P, Any]) -> Callable[P, Any]:
    """Make ``function`` (sync or async) do nothing, returning None, while
    side effects are suppressed (replaying, without an opt-in)."""
    name = getattr(function, "__qualname__", repr(function))

    def suppressed() -> bool:
        if _context.get().side_effects:
            return False
        logger.debug("Replaying: side effect %s suppressed", name)
        return True

    if inspect.iscoroutinefunction(function):

        @functools.wraps(function)
        async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            if suppressed():
                return None
            return await function(*args, **kwargs)

        return async_wrapper

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
        if suppressed():
            return None
        return function(*args, **kwargs)

    return wrapper
