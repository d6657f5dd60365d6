"""A writer process for the stress test of concurrent write mode
(tests/postgres/test_concurrent_writes.py).

``python -m tests.support.concurrent_writers SEED SAVES`` saves ``SAVES``
times into the ``Counters`` application configured by the environment
(``POSTGRES_*``, ``POSTGRES_CONCURRENT_WRITES``, ...), each save chosen at
random (seeded by ``SEED``) among:

* a save of its own (one event, or a new aggregate with a few);
* a save in a transaction that then raises: rolled back, never seen;
* twice, at random points, a save in a transaction held open 0.5 to 2
  seconds while the other writers commit (committed, or rolled back after
  all): it holds the readers' horizon back.

It prints "ready" once connected, then, at the end, one JSON line:
``{"committed": [...], "rolled_back": [...]}``, the notification ids of each.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys

from asyncsourcing.postgres import PostgresApplicationRecorder
from tests.support.faults import Counter, Counters

# The chances of each kind of save; the rest are saves of their own.
ROLLED_BACK = 0.1
LONG_AGGREGATE = 0.1
# Saves in a transaction held open, per writer.
HELD_OPEN = 2


class Rollback(Exception):
    """Raised inside a transaction to roll it back."""


async def save_in_transaction(
    app: Counters, aggregate: Counter, *, hold: float, commit: bool
) -> list[int]:
    """Save ``aggregate`` in a transaction held open ``hold`` seconds after
    the insert, then committed or, by an exception, rolled back: the
    notification ids the save was given."""
    recorder = app.recorder
    assert isinstance(recorder, PostgresApplicationRecorder)
    ids: list[int] = []
    try:
        async with recorder.datastore.transaction(commit=True):
            ids = [r.notification.id for r in await app.save(aggregate)]
            await asyncio.sleep(hold)
            if not commit:
                raise Rollback
    except Rollback:
        pass
    return ids


async def write(seed: int, saves: int) -> dict[str, list[int]]:
    rng = random.Random(seed)
    committed: list[int] = []
    rolled_back: list[int] = []
    async with Counters() as app:
        recorder = app.recorder
        assert isinstance(recorder, PostgresApplicationRecorder)
        assert recorder.concurrent_writes
        counter = Counter()
        committed += [r.notification.id for r in await app.save(counter)]
        print("ready", flush=True)
        held_open = set(rng.sample(range(saves), HELD_OPEN))
        for i in range(saves):
            choice = rng.random()
            if i in held_open or choice < ROLLED_BACK:
                counter.increment()
                commit = i in held_open and rng.random() < 0.5
                hold = rng.uniform(0.5, 2.0) if i in held_open else rng.uniform(0, 0.02)
                ids = await save_in_transaction(app, counter, hold=hold, commit=commit)
                if commit:
                    committed += ids
                else:
                    rolled_back += ids
                    # Its new version was not recorded: carry on with another.
                    counter = Counter()
                    committed += [r.notification.id for r in await app.save(counter)]
            elif choice < ROLLED_BACK + LONG_AGGREGATE:
                # A new aggregate of a few events, saved together.
                other = Counter()
                for _ in range(rng.randint(1, 4)):
                    other.increment()
                committed += [r.notification.id for r in await app.save(other)]
            else:
                counter.increment()
                committed += [r.notification.id for r in await app.save(counter)]
    return {"committed": committed, "rolled_back": rolled_back}


def main(argv: list[str]) -> None:
    result = asyncio.run(write(int(argv[0]), int(argv[1])))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    # Run as "python -m": use this module's importable twin, so that event
    # topics name "tests.support.faults", not "__main__".
    from tests.support.concurrent_writers import main as _main

    _main(sys.argv[1:])
