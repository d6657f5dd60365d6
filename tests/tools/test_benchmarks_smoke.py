"""The benchmark harness runs (tiny sizes) and asserts no timing."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import run_smoke, takeover


def test_smoke_run_measures_both_libraries() -> None:
    report = run_smoke()
    assert report.ok
    assert report.rows


def test_takeover_scenario_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its own throwaway server, not the session's shared database.
    for name in ("POSTGRES_HOST", "POSTGRES_PORT", "POSTGRES_DBNAME"):
        monkeypatch.delenv(name, raising=False)
    results = tmp_path / "RESULTS.md"
    argv = ["--kills", "1", "--events", "500", "--repetitions", "2"]
    argv += ["--no-eventsourcing", "--results", str(results), "--quiet"]
    assert takeover.main(argv) == 0
    assert "takeover" in results.read_text()
