"""What a measurement returns, and how repetitions are summarised."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["Metric", "Row", "Summary", "Trial", "percentile", "summarise"]


@dataclass(frozen=True)
class Metric:
    """A number a scenario reports; ``higher_is_better`` orients the ratio."""

    name: str
    unit: str
    higher_is_better: bool
    decimals: int = 0
    #: False where a ratio means nothing (values near or below zero).
    has_ratio: bool = True

    @property
    def label(self) -> str:
        arrow = "higher is better" if self.higher_is_better else "lower is better"
        return f"{self.name} ({self.unit}, {arrow})"


@dataclass
class Trial:
    """One repetition of one scenario, for one library on one backend."""

    values: dict[str, float] = field(default_factory=dict)
    #: Raw samples to plot, e.g. latencies in ms, keyed by a label.
    distributions: dict[str, list[float]] = field(default_factory=dict)
    #: RSS samples (seconds since start, MiB), for the memory scenario.
    rss_samples: list[tuple[float, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Summary:
    median: float
    minimum: float
    maximum: float
    count: int


def summarise(values: Sequence[float]) -> Summary | None:
    if not values:
        return None
    return Summary(
        median=statistics.median(values),
        minimum=min(values),
        maximum=max(values),
        count=len(values),
    )


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by linear interpolation."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = math.ceil(position)
    if low == high:
        return ordered[low]
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class Row:
    """One line of the table: a metric of a scenario on a backend, both libraries."""

    scenario: str
    backend: str
    metric: Metric
    values: dict[str, list[float]] = field(default_factory=dict)
    #: Why a library has no value (not supported, capped, failed).
    missing: dict[str, str] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)

    def summary(self, library: str) -> Summary | None:
        return summarise(self.values.get(library, []))

    def ratio(self) -> float | None:
        """asyncsourcing's median over eventsourcing's."""
        ours = self.summary("asyncsourcing")
        theirs = self.summary("eventsourcing")
        if not self.metric.has_ratio or ours is None or theirs is None:
            return None
        if theirs.median <= 0 or ours.median < 0:
            return None
        return ours.median / theirs.median
