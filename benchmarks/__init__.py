"""Benchmarks: asyncsourcing against eventsourcing 9.5.

``python -m benchmarks`` runs every scenario for both libraries and prints a
markdown table (``--quick``: reduced, under 3 minutes; ``--smoke``: tiny,
in-memory and SQLite only, under 20 s). From Python, for example in a test::

    from benchmarks import run_smoke
    report = run_smoke()          # raises BenchmarkError if a trial fails
    assert report.rows

or :func:`run` with a profile name, ``scenarios`` and ``backends``.
"""

from __future__ import annotations

from benchmarks.runner import BenchmarkError, Report, run

__all__ = ["BenchmarkError", "Report", "run", "run_smoke"]


def run_smoke() -> Report:
    """The ``--smoke`` run, quiet and strict: every scenario, tiny sizes."""
    from benchmarks import progress

    progress.quiet = True
    try:
        return run("smoke", strict=True)
    finally:
        progress.quiet = False
