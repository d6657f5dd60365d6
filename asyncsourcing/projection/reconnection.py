"""Reconnecting after a database connection error: when to try, when to give up."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from asyncsourcing.persistence import InterfaceError, OperationalError
from asyncsourcing.policies import Backoff
from asyncsourcing.statistics import RunnerCounters

__all__ = ["CONNECTION_ERRORS", "ReconnectStreak", "Reconnection"]

# The runner's messages, whichever of its modules logs them.
logger = logging.getLogger("asyncsourcing.projection.runners")

CONNECTION_ERRORS = (OperationalError, InterfaceError)
"""Errors of the database, not of the event: reconnect or stop, never skip."""


class ReconnectStreak:
    """Failures in a row to reach the database, timed from the first.

    Pure bookkeeping, on times passed in. A recovery ends the streak only
    once it has lasted: once an event is processed after it, or once the
    backoff's ``max_delay`` has passed. A connection error before that
    continues the streak, so that a database that lets the runner
    resubscribe but fails it at once is given up on at the backoff's
    limits, rather than tried again for ever at its first delay.
    """

    def __init__(self) -> None:
        self.first_failure = 0.0
        """When the streak's first failure happened."""
        self.failures = 0
        """The streak's failures so far (0: none yet)."""
        self._recovered_at = 0.0
        self._processed_at_recovery = 0

    def failed(self, backoff: Backoff, now: float, processed: int) -> None:
        """A connection error at ``now``, with ``processed`` events counted
        by then: a new streak, or the last one continued."""
        if (
            self.failures == 0
            or processed != self._processed_at_recovery
            or now - self._recovered_at > backoff.max_delay
        ):
            self.first_failure, self.failures = now, 1
        else:
            self.failures += 1

    def failed_again(self) -> None:
        """An attempt to reconnect failed."""
        self.failures += 1

    def delay(self, backoff: Backoff, now: float) -> float | None:
        """The delay before the next attempt, or None to give up."""
        return backoff.delay(self.failures, now - self.first_failure)

    def recovered(self, now: float, processed: int) -> None:
        """An attempt succeeded at ``now``, ``processed`` events counted by then."""
        self._recovered_at = now
        self._processed_at_recovery = processed


class Reconnection:
    """Waits out a runner's database outage: backs off, then tries again.

    ``sleep(delay)`` waits ``delay`` seconds, or less if the runner is
    stopped meanwhile, and returns True then. The errors, the reconnections
    and the position are counted in ``counters``.
    """

    def __init__(
        self,
        counters: RunnerCounters,
        application_name: str,
        projection_name: str,
        sleep: Callable[[float], Awaitable[bool]],
    ) -> None:
        self._counters = counters
        self._application_name = application_name
        self._projection_name = projection_name
        self._sleep = sleep
        self._streak = ReconnectStreak()

    async def reconnect(
        self,
        error: Exception,
        backoff: Backoff | None,
        attempt: Callable[[], Awaitable[object]],
    ) -> bool:
        """After the connection error ``error``, await ``attempt`` (to
        resubscribe, or to check that the database answers) until it meets
        no connection error; False if the runner is stopped meanwhile.

        Raises an :class:`OperationalError`, from the last connection error,
        when ``backoff`` is None (the runner's policy does not reconnect) or
        gives up. Each connection error is counted once.
        """
        self._counters.error(error)
        if backoff is None:
            msg = (
                f"{self._describe()} stopped by a database error "
                f"({type(error).__name__}: {error}); error_policy='retry' (or "
                "an ErrorPolicy with reconnect) would reconnect and carry on"
            )
            raise OperationalError(msg) from error
        loop = asyncio.get_running_loop()
        streak = self._streak
        streak.failed(backoff, loop.time(), self._counters.processed)
        while True:
            now = loop.time()
            delay = streak.delay(backoff, now)
            if delay is None:
                msg = (
                    f"{self._describe()} gave up reconnecting after "
                    f"{streak.failures} failures in {now - streak.first_failure:.1f}s"
                    f": {type(error).__name__}: {error}"
                )
                raise OperationalError(msg) from error
            logger.warning(
                "Projection %r of application %r: database error (%s: %s); "
                "resubscribing in %.2fs",
                self._projection_name,
                self._application_name,
                type(error).__name__,
                error,
                delay,
            )
            if await self._sleep(delay):
                return False
            try:
                await attempt()
            except CONNECTION_ERRORS as next_error:
                self._counters.error(next_error)
                error = next_error
                streak.failed_again()
                continue
            self._counters.reconnected()
            streak.recovered(loop.time(), self._counters.processed)
            logger.info(
                "Projection %r of application %r resubscribed at position %s",
                self._projection_name,
                self._application_name,
                self._counters.position,
            )
            return True

    def _describe(self) -> str:
        return (
            f"Projection {self._projection_name!r} of application "
            f"{self._application_name!r}"
        )
