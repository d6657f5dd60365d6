"""The benchmark harness runs (tiny sizes, no server) and asserts no timing."""

from __future__ import annotations

from benchmarks import run_smoke


def test_smoke_run_measures_both_libraries() -> None:
    report = run_smoke()
    assert report.ok
    assert report.rows
