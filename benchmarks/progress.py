"""Progress lines on stderr, stamped with the time since the run started."""

from __future__ import annotations

import sys
import time

__all__ = ["log", "reset_clock"]

_start = time.monotonic()
quiet = False


def reset_clock() -> None:
    global _start
    _start = time.monotonic()


def log(message: str) -> None:
    """Print ``message`` on stderr, unless the run is quiet."""
    if quiet:
        return
    elapsed = time.monotonic() - _start
    print(f"[{elapsed:7.1f}s] {message}", file=sys.stderr, flush=True)
