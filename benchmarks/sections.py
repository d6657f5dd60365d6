"""Sections of RESULTS.md that a scenario of its own writes between markers.

A full harness run rewrites RESULTS.md; the sections of ``python -m
benchmarks takeover`` and ``python -m benchmarks.soak`` are kept as they are.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["kept_section", "write_section"]


def kept_section(text: str, begin: str, end: str) -> str:
    """The section of ``text`` from ``begin`` to ``end`` (markers included,
    and a newline after), or "" if there is none."""
    start = text.find(begin)
    stop = text.find(end, start)
    if start < 0 or stop < 0:
        return ""
    return text[start : stop + len(end)] + "\n"


def write_section(path: Path, section: str, begin: str, end: str) -> None:
    """Put ``section`` in place of the one between ``begin`` and ``end`` in
    the file at ``path``, or at its end."""
    old = path.read_text() if path.exists() else ""
    kept = kept_section(old, begin, end)
    if kept:
        new = old.replace(kept, section)
    else:
        new = old + ("\n" if old and not old.endswith("\n\n") else "") + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)
