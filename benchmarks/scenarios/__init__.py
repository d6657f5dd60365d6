"""The scenarios, in the order they run and appear in the table."""

from __future__ import annotations

from benchmarks.scenarios.base import Context, Scenario
from benchmarks.scenarios.catchup import BulkCatchUpScenario, CatchUpScenario
from benchmarks.scenarios.fanout import FanOutScenario
from benchmarks.scenarios.latency import LatencyScenario
from benchmarks.scenarios.memory import MemoryScenario
from benchmarks.scenarios.write import WriteScenario

__all__ = ["SCENARIOS", "Context", "Scenario"]

SCENARIOS: dict[str, Scenario] = {
    scenario.name: scenario
    for scenario in (
        WriteScenario(),
        CatchUpScenario(),
        BulkCatchUpScenario(),
        LatencyScenario(),
        FanOutScenario(),
        MemoryScenario(),
    )
}
