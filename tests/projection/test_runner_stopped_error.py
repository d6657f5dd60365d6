"""Every waiter learns why a runner stopped, and so does every later call.

The runner keeps the error that stopped it. Each ``wait()`` that the stop
interrupts, and each later ``wait()`` for a position it never reached,
raises a fresh :class:`ProjectionStoppedError` that names the projection,
the application and the error, and has it as its ``__cause__``. The error
itself is raised once, to the runner's owner: by ``run_forever()``, or on
leaving ``async with`` if nobody has been told of it; later calls of
``run_forever()`` raise a :class:`ProjectionStoppedError` too.
"""

from __future__ import annotations

import asyncio

import pytest

from asyncsourcing.domain import Aggregate
from asyncsourcing.projection import ProjectionStoppedError
from examples.eventcounters.projection import SpannerThrown, SpannerThrownError
from tests.support.backends import Backend, aggregate_with


async def test_every_waiter_and_every_later_wait_gets_the_error(
    backend: Backend,
) -> None:
    async with backend.runner(error_policy="stop") as runner:
        await runner.app.save(aggregate_with(Aggregate.Event))  # ids 1, 2
        await runner.wait(2, timeout=10)

        # Three waiters for the next event, which the projection cannot process.
        waiters = [asyncio.create_task(runner.wait(4, timeout=10)) for _ in range(3)]
        await asyncio.sleep(0.05)  # They are waiting.
        recordings = await runner.app.save(aggregate_with(SpannerThrown))
        assert recordings[-1].notification.id == 4
        await asyncio.wait(waiters, timeout=10)

        errors = [waiter.exception() for waiter in waiters]
        # And a wait after the runner has stopped.
        with pytest.raises(ProjectionStoppedError) as later:
            await runner.wait(4, timeout=10)
        errors.append(later.value)

        cause = errors[0].__cause__ if errors[0] is not None else None
        assert isinstance(cause, SpannerThrownError)
        for error in errors:
            assert isinstance(error, ProjectionStoppedError)
            assert error.__cause__ is cause  # The very error that stopped it.
            assert str(error) == (
                "Projection 'eventcounters' of application 'Application' "
                "stopped by an error: SpannerThrownError('This is a deliberate bug')"
            )
        assert len({id(error) for error in errors}) == 4  # A fresh one each.
        assert not runner.is_running

        # A position processed before the stop is still reached.
        await runner.wait(2, timeout=10)

        # The owner gets the error itself, with its own traceback, once...
        with pytest.raises(SpannerThrownError) as raised:
            await runner.run_forever(timeout=10)
        assert raised.value is cause
        # ... and later calls learn of it all the same.
        with pytest.raises(ProjectionStoppedError) as again:
            await runner.run_forever(timeout=10)
        assert again.value.__cause__ is cause
    # The owner has been told: leaving raises nothing more.


async def test_run_forever_raises_the_error_that_waiters_were_told_of(
    backend: Backend,
) -> None:
    async with backend.runner(error_policy="stop") as runner:
        await runner.app.save(aggregate_with(SpannerThrown))  # ids 1, 2
        with pytest.raises(ProjectionStoppedError, match="SpannerThrownError"):
            await runner.wait(2, timeout=10)
        # A waiter's being told does not make run_forever() return quietly.
        with pytest.raises(SpannerThrownError):
            await runner.run_forever(timeout=10)


async def test_leaving_raises_an_error_that_nobody_was_told_of() -> None:
    runner = Backend("popo", {}).runner(error_policy="stop")

    async def save_and_leave() -> None:
        async with runner:
            await runner.app.save(aggregate_with(SpannerThrown))
            await asyncio.sleep(0.1)

    with pytest.raises(SpannerThrownError):
        await save_and_leave()
    with pytest.raises(ProjectionStoppedError, match="SpannerThrownError"):
        await runner.wait(2, timeout=1)
