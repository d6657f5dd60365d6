"""Catch up in a process of its own and report its memory: the memory scenario's child.

Run by the memory scenario as ``python -m benchmarks.memory_child JSON``, with
JSON giving ``library``, ``backend``, ``env`` and ``last`` (the events are
already recorded). Prints one JSON line: the peak RSS
(``getrusage(RUSAGE_SELF).ru_maxrss``), the RSS before the catch-up, VmRSS
samples taken every 20 ms by a sampling thread, and the catch-up's timings.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.es_views import ESPOPOEventCounters
from benchmarks.projecting import CatchUp, as_catch_up, es_catch_up
from examples.eventcounters.views import POPOEventCounters

__all__ = ["main", "rss_mib"]

SAMPLE_INTERVAL = 0.02
_STATUS = Path("/proc/self/status")


def rss_mib() -> float:
    """This process's resident set size now (VmRSS), in MiB."""
    for line in _STATUS.read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Sampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.samples: list[tuple[float, float]] = []
        self._stop_event = threading.Event()
        self._origin = time.perf_counter()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.samples.append((time.perf_counter() - self._origin, rss_mib()))
            self._stop_event.wait(SAMPLE_INTERVAL)

    def stop(self) -> list[tuple[float, float]]:
        self._stop_event.set()
        self.join()
        self.samples.append((time.perf_counter() - self._origin, rss_mib()))
        return self.samples


def catch_up(library: str, backend: str, env: dict[str, str], last: int) -> CatchUp:
    if library == "eventsourcing":
        return es_catch_up(
            env, ESPOPOEventCounters, last, with_subscription=backend != "sqlite"
        )
    return asyncio.run(as_catch_up(env, POPOEventCounters, last))


def main(argv: list[str]) -> int:
    request: dict[str, Any] = json.loads(argv[0])
    baseline = rss_mib()
    sampler = Sampler()
    sampler.start()
    result = catch_up(
        request["library"], request["backend"], request["env"], int(request["last"])
    )
    samples = sampler.stop()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    report = {
        "baseline_mib": baseline,
        "peak_mib": peak,
        "samples": samples,
        "until_wait": result.until_wait,
        "until_processed": result.until_processed,
        "counted": result.created + result.subsequent,
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
