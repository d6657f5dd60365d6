"""Where the project's files are, for tests that run its commands and docs."""

from __future__ import annotations

from pathlib import Path

__all__ = ["ROOT"]

ROOT = Path(__file__).resolve().parents[2]
"""The project's root folder (where pyproject.toml is)."""
