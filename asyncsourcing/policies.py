"""What a projection runner does when an event cannot be processed.

An :class:`ErrorPolicy` says what happens to an event whose processing
raises (its :class:`OnError` action), how retries back off
(:class:`Backoff`), and whether the runner reconnects after losing its
database (``reconnect``). Set it on the projection class, by name or in
full::

    class Counters(Projection[CountersView]):
        error_policy = "park"

    class Mailer(Projection[MailView]):
        error_policy = ErrorPolicy.retry(max_attempts=10, max_delay=30, then="park")

or per runner: ``ProjectionRunner(..., error_policy="skip")``.

The runner asks an :class:`ErrorHandler` what to do after each failure of
an event: a :data:`Decision` (:class:`Retry`, :class:`Skip`, :class:`Park`
or :class:`Stop`). Deciding is pure: no IO, and the time is passed in.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal, TypeAlias

__all__ = [
    "DEFAULT_RECONNECT",
    "Backoff",
    "Decision",
    "ErrorHandler",
    "ErrorPolicy",
    "ErrorPolicyLike",
    "OnError",
    "Park",
    "PolicyName",
    "Retry",
    "Skip",
    "Stop",
]


class OnError(enum.StrEnum):
    """The action for an event whose processing raised an error."""

    STOP = "stop"
    """Stop processing: :meth:`run_forever` re-raises the error (the default)."""

    RETRY = "retry"
    """Process the event again after a delay that grows; when the
    :class:`Backoff` is exhausted, do what ``ErrorPolicy.then`` says."""

    SKIP = "skip"
    """Record the event's tracking with no update, log the error, carry on."""

    PARK = "park"
    """Record the event and the error in the view's dead-letter table with
    its tracking, log the error, carry on."""


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff: ``initial_delay * multiplier ** n``, at most ``max_delay``.

    Gives up after ``max_attempts`` attempts in all (the first included) or
    once ``max_total_time`` seconds have passed since the first failure,
    whichever comes first; with neither, it never gives up.
    """

    initial_delay: float = 0.1
    max_delay: float = 5.0
    multiplier: float = 2.0
    max_attempts: int | None = 5
    max_total_time: float | None = None

    def __post_init__(self) -> None:
        if not (0 <= self.initial_delay <= self.max_delay):
            msg = f"Need 0 <= initial_delay <= max_delay: {self!r}"
            raise ValueError(msg)
        if self.multiplier < 1:
            msg = f"Need multiplier >= 1: {self!r}"
            raise ValueError(msg)
        if self.max_attempts is not None and self.max_attempts < 1:
            msg = f"Need max_attempts >= 1 (or None): {self!r}"
            raise ValueError(msg)
        if self.max_total_time is not None and self.max_total_time < 0:
            msg = f"Need max_total_time >= 0 (or None): {self!r}"
            raise ValueError(msg)

    def delay(self, failures: int, elapsed: float) -> float | None:
        """The delay before the next attempt, or None to give up.

        ``failures`` attempts have failed so far (at least 1), the first of
        them ``elapsed`` seconds ago.
        """
        if self.max_attempts is not None and failures >= self.max_attempts:
            return None
        exponent = min(failures - 1, 64)  # No overflow for long outages.
        delay = min(self.max_delay, self.initial_delay * self.multiplier**exponent)
        if self.max_total_time is not None:
            left = self.max_total_time - elapsed
            if left <= 0:
                return None
            delay = min(delay, left)
        return delay if math.isfinite(delay) else self.max_delay


DEFAULT_RECONNECT = Backoff(
    initial_delay=0.1, max_delay=5.0, max_attempts=None, max_total_time=60.0
)
"""Reconnection of the ``retry`` policy: for up to a minute of outage."""

PolicyName: TypeAlias = Literal["stop", "retry", "skip", "park"]


@dataclass(frozen=True)
class Retry:
    """Process the event again after ``delay`` seconds."""

    delay: float


@dataclass(frozen=True)
class Skip:
    """Record the event's tracking with no update of the view, and carry on."""


@dataclass(frozen=True)
class Park:
    """Record the event and its error in the dead-letter table, and carry on."""


@dataclass(frozen=True)
class Stop:
    """Stop the runner by the error."""


Decision: TypeAlias = Retry | Skip | Park | Stop
"""What to do about an event after one more failure."""


@dataclass(frozen=True)
class ErrorPolicy:
    """What a runner does about an error, for a projection.

    ``action`` applies to errors of the projection (and of decoding an
    event): :class:`OnError`. Only the failing event is concerned: a
    catch-up batch containing it is rolled back and replayed one event at a
    time, so the events before and after it are processed exactly once.

    Database connection errors (:class:`OperationalError`,
    :class:`InterfaceError`) are not the event's fault: they are never
    skipped or parked. With ``reconnect`` the runner waits (backing off),
    resubscribes from the view's recorded position and carries on; without
    it, :meth:`run_forever` raises an :class:`OperationalError`. ``reconnect``
    None means :data:`DEFAULT_RECONNECT` for the ``retry`` action, no
    reconnection for the others; True means :data:`DEFAULT_RECONNECT`.
    """

    action: OnError = OnError.STOP
    backoff: Backoff = field(default_factory=Backoff)
    """How the ``retry`` action retries an event."""
    then: OnError = OnError.STOP
    """The ``retry`` action's last resort, when ``backoff`` gives up:
    ``stop``, ``skip`` or ``park``."""
    reconnect: Backoff | bool | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "action", OnError(self.action))
        object.__setattr__(self, "then", OnError(self.then))
        if self.then is OnError.RETRY:
            msg = "ErrorPolicy.then must be 'stop', 'skip' or 'park'"
            raise ValueError(msg)

    @classmethod
    def stop(cls, *, reconnect: Backoff | bool | None = None) -> ErrorPolicy:
        return cls(OnError.STOP, reconnect=reconnect)

    @classmethod
    def skip(cls, *, reconnect: Backoff | bool | None = None) -> ErrorPolicy:
        return cls(OnError.SKIP, reconnect=reconnect)

    @classmethod
    def park(cls, *, reconnect: Backoff | bool | None = None) -> ErrorPolicy:
        return cls(OnError.PARK, reconnect=reconnect)

    @classmethod
    def retry(
        cls,
        *,
        initial_delay: float = 0.1,
        max_delay: float = 5.0,
        multiplier: float = 2.0,
        max_attempts: int | None = 5,
        max_total_time: float | None = None,
        then: OnError | PolicyName = OnError.STOP,
        reconnect: Backoff | bool | None = None,
    ) -> ErrorPolicy:
        backoff = Backoff(
            initial_delay=initial_delay,
            max_delay=max_delay,
            multiplier=multiplier,
            max_attempts=max_attempts,
            max_total_time=max_total_time,
        )
        return cls(OnError.RETRY, backoff, OnError(then), reconnect)

    @classmethod
    def of(cls, policy: ErrorPolicyLike) -> ErrorPolicy:
        """``policy`` itself, or the default policy of an action or its name."""
        if isinstance(policy, ErrorPolicy):
            return policy
        try:
            return cls(OnError(policy))
        except ValueError:
            names = ", ".join(repr(a.value) for a in OnError)
            msg = f"Unknown error policy {policy!r}: use {names} or an ErrorPolicy"
            raise ValueError(msg) from None

    @property
    def reconnect_backoff(self) -> Backoff | None:
        """How to reconnect after a connection error, or None not to."""
        if isinstance(self.reconnect, Backoff):
            return self.reconnect
        if self.reconnect is None:
            return DEFAULT_RECONNECT if self.action is OnError.RETRY else None
        return DEFAULT_RECONNECT if self.reconnect else None

    def with_reconnect(self, reconnect: Backoff | bool = True) -> ErrorPolicy:
        """This policy, reconnecting (or not) after connection errors."""
        return replace(self, reconnect=reconnect)

    def decide(self, failures: int, elapsed: float) -> Decision:
        """What to do about an event that has failed ``failures`` times in a
        row (at least 1), the first time ``elapsed`` seconds ago.

        :attr:`action`, or for ``retry`` a :class:`Retry` until
        :attr:`backoff` gives up, then what :attr:`then` says.
        """
        action = self.action
        if action is OnError.RETRY:
            delay = self.backoff.delay(failures, elapsed)
            if delay is not None:
                return Retry(delay)
            action = self.then
        if action is OnError.SKIP:
            return Skip()
        if action is OnError.PARK:
            return Park()
        return Stop()


ErrorPolicyLike: TypeAlias = ErrorPolicy | OnError | PolicyName


class ErrorHandler:
    """The decisions of an :class:`ErrorPolicy` about one event, failure
    after failure.

    It counts the event's failures in a row and times them from the first,
    on ``clock`` (seconds; the runner passes its event loop's ``time``).
    One handler per event: a new event starts from no failure.
    """

    def __init__(
        self, policy: ErrorPolicy, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.policy = policy
        self.failures = 0
        """The event's failures so far."""
        self._clock = clock
        self._first_failure = 0.0

    def failed(self) -> Decision:
        """Count one more failure of the event; what to do about it."""
        now = self._clock()
        if self.failures == 0:
            self._first_failure = now
        self.failures += 1
        return self.policy.decide(self.failures, now - self._first_failure)
