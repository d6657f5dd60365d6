"""The tutorial's event counters example, in memory."""

from __future__ import annotations

import subprocess
import sys

import pytest

from asyncsourcing.persistence import IntegrityError, Tracking
from examples.eventcounters.__main__ import main
from examples.eventcounters.views import POPOEventCounters
from tests.support.paths import ROOT


async def test_view_counts_and_tracks_atomically() -> None:
    view = POPOEventCounters()
    await view.incr_created_event_counter(Tracking("upstream", 1))
    await view.incr_subsequent_event_counter(Tracking("upstream", 2))
    with pytest.raises(IntegrityError):
        await view.incr_subsequent_event_counter(Tracking("upstream", 2))
    assert await view.get_created_event_counter() == 1
    assert await view.get_subsequent_event_counter() == 1
    assert await view.max_tracking_id("upstream") == 2


async def test_main_counts_in_memory() -> None:
    assert await main(aggregates=3, env={}) == (3, 3)


def test_runs_as_a_module() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "examples.eventcounters", "--aggregates", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "", "PERSISTENCE_MODULE": "asyncsourcing.popo"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "created events: 2, subsequent events: 2\n"
