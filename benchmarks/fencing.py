"""Fencing cost: a runner's catch-up with ``LEADERSHIP=true`` and ``false``.

One in-process ``ProjectionRunner`` catches up events recorded beforehand
into the tutorial's counters view on PostgreSQL, with leadership (the lease,
its advisory lock and renewals, and every view transaction locking the lease
row and checking its epoch) and without; eventsourcing 9.5's runner catches
up the same events, for scale. Used by :mod:`benchmarks.takeover`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Callable
from uuid import UUID

import psycopg
from eventsourcing.application import Application as ESApplication

from asyncsourcing.application import Application
from benchmarks.es_views import ESPostgresEventCounters
from benchmarks.libs import insert_as, insert_es, stored_events
from benchmarks.progress import log
from benchmarks.projecting import CatchUp, as_catch_up, es_catch_up
from benchmarks.server import PostgresServer
from examples.eventcounters.postgres import PostgresEventCounters

__all__ = ["EVENTSOURCING", "WITHOUT_LEADERSHIP", "WITH_LEADERSHIP", "measure_fencing"]

#: The variants' names, the keys of :func:`measure_fencing`'s result.
WITHOUT_LEADERSHIP = "LEADERSHIP=false"
WITH_LEADERSHIP = "LEADERSHIP=true"
EVENTSOURCING = "eventsourcing 9.5"


def _checkpoint(server: PostgresServer) -> None:
    """Write the dirty pages out before a catch-up is timed.

    Without it the second trial of a pair ran 15-40 % slower than the first,
    whichever variant it was: it paid for the writes of the trial before
    (the previous catch-up and the events just recorded).
    """
    with contextlib.suppress(psycopg.Error):  # Not a superuser: as it is.
        server.conn.execute("CHECKPOINT")


def _as_catch_up(server: PostgresServer, events: int, leadership: bool) -> CatchUp:
    env = {
        "PERSISTENCE_MODULE": "asyncsourcing.postgres",
        **server.env(),
        "LEADERSHIP": "true" if leadership else "false",
    }

    async def record() -> int:
        app = Application[UUID](env)
        try:
            return await insert_as(app.recorder, stored_events(events))
        finally:
            await app.close()

    last = asyncio.run(record())
    _checkpoint(server)
    return asyncio.run(as_catch_up(env, PostgresEventCounters, last))


def _es_catch_up(server: PostgresServer, events: int) -> CatchUp:
    # Blocking, with threads of its own: called while no event loop exists.
    env = {"PERSISTENCE_MODULE": "eventsourcing.postgres", **server.env()}
    app = ESApplication[UUID](env)
    last = insert_es(app.recorder, stored_events(events))
    app.close()
    _checkpoint(server)
    return es_catch_up(env, ESPostgresEventCounters, last)


def measure_fencing(
    server: PostgresServer, events: int, repetitions: int, *, eventsourcing: bool
) -> dict[str, list[CatchUp]]:
    """Catch-ups of each variant, ``repetitions`` each, by variant.

    In every repetition the two asyncsourcing variants run back to back,
    whichever first in turn, so that each pair saw the same machine (a
    shared one drifts); eventsourcing's catch-up, ten times as long, runs
    after or before the pair, in turn.
    """
    trials: dict[str, Callable[[], CatchUp]] = {
        WITHOUT_LEADERSHIP: lambda: _as_catch_up(server, events, leadership=False),
        WITH_LEADERSHIP: lambda: _as_catch_up(server, events, leadership=True),
    }
    if eventsourcing:
        trials[EVENTSOURCING] = lambda: _es_catch_up(server, events)
    results: dict[str, list[CatchUp]] = {name: [] for name in trials}
    for repetition in range(repetitions):
        order = [WITHOUT_LEADERSHIP, WITH_LEADERSHIP]
        if eventsourcing:
            order.append(EVENTSOURCING)
        if repetition % 2:
            order.reverse()
        for name in order:
            server.drop_tables()
            gc.collect()
            catch_up = trials[name]()
            counted = catch_up.created + catch_up.subsequent
            if counted != events:
                msg = f"{name}: the view counted {counted} events, expected {events}"
                raise AssertionError(msg)
            results[name].append(catch_up)
            log(
                f"fencing / {name} [{repetition + 1}/{repetitions}]: "
                f"{events / catch_up.until_wait:,.0f} events/s until wait() returns"
            )
    return results
