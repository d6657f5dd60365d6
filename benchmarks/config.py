"""Run profiles: how big each scenario is, and how often it is repeated."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "APP_NAME",
    "BACKENDS",
    "LIBRARIES",
    "PROFILES",
    "PROJECTION_NAME",
    "Profile",
]

BACKENDS = ("popo", "sqlite", "postgres")

#: ``Application[UUID]``'s name in both libraries, and the projection's.
APP_NAME = "Application"
PROJECTION_NAME = "eventcounters"

#: eventsourcing first: it is the baseline, the ratio is asyncsourcing / it.
LIBRARIES = ("eventsourcing", "asyncsourcing")


@dataclass(frozen=True)
class Profile:
    name: str
    repetitions: int
    #: write: saves by one writer, and in total by the concurrent writers.
    write_saves: int
    write_concurrent_saves: int
    writers: int
    #: catch-up: events recorded before the runner starts.
    catchup_events: int
    #: live latency: sequential saves, each awaited on a separate view.
    latency_saves: int
    #: fan-out: numbers of concurrent waiters for asyncsourcing, and the cap
    #: for eventsourcing (one thread per waiter).
    fanout_waiters: tuple[int, ...]
    fanout_es_cap: int
    #: seconds during which the waiters wait before the position is recorded.
    fanout_window: float
    #: memory: events caught up in a subprocess per library.
    memory_events: int
    #: backends run when none is selected.
    default_backends: tuple[str, ...] = BACKENDS


PROFILES: dict[str, Profile] = {
    "full": Profile(
        name="full",
        repetitions=5,
        write_saves=2000,
        write_concurrent_saves=4000,
        writers=16,
        catchup_events=10_000,
        latency_saves=200,
        fanout_waiters=(1000, 10_000),
        fanout_es_cap=1000,
        fanout_window=2.0,
        memory_events=200_000,
    ),
    "quick": Profile(
        name="quick",
        repetitions=3,
        write_saves=300,
        write_concurrent_saves=640,
        writers=16,
        catchup_events=2000,
        latency_saves=50,
        fanout_waiters=(1000,),
        fanout_es_cap=1000,
        fanout_window=2.0,
        memory_events=20_000,
    ),
    # For the lead's test: tiny sizes, no server, well under 20 s.
    "smoke": Profile(
        name="smoke",
        repetitions=1,
        write_saves=20,
        write_concurrent_saves=32,
        writers=16,
        catchup_events=100,
        latency_saves=5,
        fanout_waiters=(50,),
        fanout_es_cap=50,
        fanout_window=0.3,
        memory_events=500,
        default_backends=("popo", "sqlite"),
    ),
}
