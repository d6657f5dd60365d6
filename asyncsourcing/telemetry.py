"""Projection runners' statistics as OpenTelemetry metrics.

Optional: it needs the ``opentelemetry-api`` package (and, to export
anything, an SDK configured by the application). Usage::

    async with runner, RunnerMetrics(runner):
        await runner.run_forever()

While entered, :class:`RunnerMetrics` reads ``await runner.statistics()``
every ``interval`` seconds (one read of the application's last notification
id, for the lag) and reports the latest snapshot through observable
instruments, with the attributes ``application`` and ``projection``:

========================================  =========  ===========================
instrument                                kind       value
========================================  =========  ===========================
``asyncsourcing.runner.position``         gauge      last processed notification id
``asyncsourcing.runner.lag``              gauge      events not processed yet
``asyncsourcing.runner.running``          gauge      1 while processing, else 0
``asyncsourcing.runner.events``           counter    events processed
``asyncsourcing.runner.errors``           counter    errors met
``asyncsourcing.runner.retries``          counter    attempts again (``retry``)
``asyncsourcing.runner.skipped``          counter    events skipped
``asyncsourcing.runner.parked``           counter    events parked
``asyncsourcing.runner.reconnections``    counter    resubscriptions after errors
========================================  =========  ===========================

Observable callbacks may run in an exporter's thread: they only read the
cached snapshot, never the runner or the database.

:class:`HorizonMetrics` reports, while entered, the visibility horizon of
PostgreSQL application recorders in concurrent write mode
(``POSTGRES_CONCURRENT_WRITES=true``; see
:mod:`asyncsourcing.postgres.concurrent`), as their reads found it, with the
attribute ``table``::

    async with HorizonMetrics(runner.app.recorder):
        await runner.run_forever()

========================================  =========  ===========================
instrument                                kind       value
========================================  =========  ===========================
``asyncsourcing.horizon.held_back``       gauge      ids issued but held back
                                                     by the horizon
``asyncsourcing.horizon.stall_duration``  gauge      seconds the horizon has
                                                     stood still, held back
``asyncsourcing.horizon.reads``           counter    horizons computed
``asyncsourcing.horizon.stalled_reads``   counter    of which held back
========================================  =========  ===========================

Its callbacks read the recorders' counters, kept in memory: no IO.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Hashable, Iterable, Mapping
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Protocol, Self, TypeVar

from asyncsourcing.statistics import HorizonStatistics, RunnerStatistics

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, Meter, Observation

    from asyncsourcing.projection import BaseProjectionRunner

__all__ = ["HorizonMetrics", "RunnerMetrics"]

logger = logging.getLogger(__name__)

_GAUGES: dict[str, tuple[str, str, Callable[[RunnerStatistics], int | None]]] = {
    "position": ("1", "The last notification id processed", lambda s: s.position),
    "lag": ("{event}", "Events recorded but not processed yet", lambda s: s.lag),
    "running": (
        "1",
        "1 while the runner processes events",
        lambda s: int(s.is_running),
    ),
}
_COUNTERS: dict[str, tuple[str, Callable[[RunnerStatistics], int]]] = {
    "events": ("Events processed since start", lambda s: s.events_processed),
    "errors": ("Errors met since start", lambda s: s.errors),
    "retries": ("Attempts to process an event again", lambda s: s.retries),
    "skipped": ("Events skipped after an error", lambda s: s.skipped),
    "parked": ("Events parked after an error", lambda s: s.parked),
    "reconnections": (
        "Resubscriptions after database errors",
        lambda s: s.reconnections,
    ),
}


S = TypeVar("S")
M = TypeVar("M", bound=Hashable)


class _Instruments(Generic[M, S]):
    """One set of observable instruments per meter and ``prefix``, reporting
    every entered metrics object of :attr:`active`.

    ``samples(metrics)`` gives the statistics of each (or none, not read
    yet) with their attributes; ``gauges`` and ``counters`` name the
    instruments and how to read them; ``counter_unit(name)`` is a counter's
    unit.
    """

    def __init__(
        self,
        meter: Meter,
        prefix: str,
        gauges: Mapping[str, tuple[str, str, Callable[[S], float | None]]],
        counters: Mapping[str, tuple[str, Callable[[S], int]]],
        counter_unit: Callable[[str], str],
        samples: Callable[[M], Iterable[tuple[S, Mapping[str, str]]]],
    ) -> None:
        self.active: set[M] = set()
        self._samples = samples
        for name, (unit, description, read) in gauges.items():
            meter.create_observable_gauge(
                f"{prefix}.{name}",
                callbacks=[self._callback(read)],
                unit=unit,
                description=description,
            )
        for name, (description, read_count) in counters.items():
            meter.create_observable_counter(
                f"{prefix}.{name}",
                callbacks=[self._callback(read_count)],
                unit=counter_unit(name),
                description=description,
            )

    def _callback(
        self, read: Callable[[S], float | None]
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        from opentelemetry.metrics import Observation

        def observe(options: CallbackOptions) -> Iterable[Observation]:
            for metrics in list(self.active):
                for statistics, attributes in self._samples(metrics):
                    value = read(statistics)
                    if value is not None:
                        yield Observation(value, attributes)

        return observe


# Keyed by the meter's identity and the prefix, holding the meter so that
# its id is not reused.
_instrument_sets: dict[tuple[int, str], tuple[Meter, _Instruments[Any, Any]]] = {}


def _instruments_of(
    meter: Meter, prefix: str, make: Callable[[], _Instruments[M, S]]
) -> _Instruments[M, S]:
    entry = _instrument_sets.get((id(meter), prefix))
    if entry is None:
        entry = _instrument_sets[(id(meter), prefix)] = (meter, make())
    return entry[1]


def _meter_or_default(meter: Meter | None, who: str) -> Meter:
    """``meter``, or asyncsourcing's meter of the global provider; raises
    :class:`RuntimeError` naming ``who`` without the opentelemetry-api
    package."""
    try:
        from opentelemetry import metrics
    except ImportError as error:
        msg = f"{who} needs the opentelemetry-api package"
        raise RuntimeError(msg) from error
    return meter or metrics.get_meter("asyncsourcing")


def _runner_samples(
    metrics: RunnerMetrics,
) -> Iterable[tuple[RunnerStatistics, Mapping[str, str]]]:
    if metrics.snapshot is not None:
        yield metrics.snapshot, metrics.attributes


def _runner_instruments(meter: Meter) -> _Instruments[RunnerMetrics, RunnerStatistics]:
    return _Instruments(
        meter,
        "asyncsourcing.runner",
        _GAUGES,
        _COUNTERS,
        lambda name: "{event}" if name in ("events", "skipped", "parked") else "1",
        _runner_samples,
    )


class RunnerMetrics:
    """Reports a runner's statistics as OpenTelemetry metrics while entered.

    ``meter`` defaults to ``opentelemetry.metrics.get_meter("asyncsourcing")``;
    ``interval`` is how often, in seconds, the statistics are read.
    """

    def __init__(
        self,
        runner: BaseProjectionRunner[Any],
        *,
        meter: Meter | None = None,
        interval: float = 5.0,
    ) -> None:
        if not interval > 0:
            msg = f"interval must be a number of seconds > 0, not {interval!r}"
            raise ValueError(msg)
        self.runner = runner
        self.interval = interval
        self.snapshot: RunnerStatistics | None = None
        self.attributes: dict[str, str] = {}
        self._meter = meter
        self._instruments: _Instruments[RunnerMetrics, RunnerStatistics] | None = None
        self._task: asyncio.Task[None] | None = None

    async def refresh(self) -> RunnerStatistics:
        """Read the runner's statistics now, for the next collection."""
        self.snapshot = await self.runner.statistics()
        self.attributes = {
            "application": self.snapshot.application_name,
            "projection": self.snapshot.projection_name,
        }
        return self.snapshot

    async def __aenter__(self) -> Self:
        meter = _meter_or_default(self._meter, "RunnerMetrics")
        await self.refresh()
        self._instruments = _instruments_of(
            meter, "asyncsourcing.runner", partial(_runner_instruments, meter)
        )
        self._instruments.active.add(self)
        self._task = asyncio.create_task(self._refresh_forever())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        if self._instruments is not None:
            self._instruments.active.discard(self)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.refresh()
            except Exception:
                # Metrics must not stop the service: the last snapshot stays.
                logger.exception("Could not read the runner's statistics")


class SupportsHorizonStatistics(Protocol):
    """A recorder that counts its visibility horizons (PostgreSQL's
    application recorders: None in table-lock mode)."""

    def horizon_statistics(self) -> HorizonStatistics | None: ...


_HORIZON_GAUGES: dict[
    str, tuple[str, str, Callable[[HorizonStatistics], int | float]]
] = {
    "held_back": (
        "{event}",
        "Notification ids issued at or above the visibility horizon at the "
        "last read: not readable yet",
        lambda s: s.held_back,
    ),
    "stall_duration": (
        "s",
        "How long the visibility horizon has stood still, held back by open "
        "transactions",
        lambda s: s.stall_seconds,
    ),
}
_HORIZON_COUNTERS: dict[str, tuple[str, Callable[[HorizonStatistics], int]]] = {
    "reads": ("Visibility horizons computed", lambda s: s.reads),
    "stalled_reads": (
        "Visibility horizons computed while held back",
        lambda s: s.stalled_reads,
    ),
}


def _horizon_samples(
    metrics: HorizonMetrics,
) -> Iterable[tuple[HorizonStatistics, Mapping[str, str]]]:
    for recorder in metrics.recorders:
        statistics = recorder.horizon_statistics()
        if statistics is not None:
            yield statistics, {"table": statistics.table}


def _horizon_instruments(
    meter: Meter,
) -> _Instruments[HorizonMetrics, HorizonStatistics]:
    return _Instruments(
        meter,
        "asyncsourcing.horizon",
        _HORIZON_GAUGES,
        _HORIZON_COUNTERS,
        lambda _: "{read}",
        _horizon_samples,
    )


class HorizonMetrics:
    """Reports the visibility horizon of ``recorders`` (in concurrent write
    mode; others are left out) as OpenTelemetry metrics while entered.

    ``meter`` defaults to ``opentelemetry.metrics.get_meter("asyncsourcing")``.
    """

    def __init__(
        self, *recorders: SupportsHorizonStatistics, meter: Meter | None = None
    ) -> None:
        self.recorders = recorders
        self._meter = meter
        self._instruments: _Instruments[HorizonMetrics, HorizonStatistics] | None = None

    async def __aenter__(self) -> Self:
        meter = _meter_or_default(self._meter, "HorizonMetrics")
        self._instruments = _instruments_of(
            meter, "asyncsourcing.horizon", partial(_horizon_instruments, meter)
        )
        self._instruments.active.add(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        if self._instruments is not None:
            self._instruments.active.discard(self)
