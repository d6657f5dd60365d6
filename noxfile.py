"""Developer sessions: ``nox -s tests``, ``nox -s lint``, ``nox -s typecheck``."""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
ACCEPTANCE = Path(__file__).parent.parent / "shared" / "acceptance"


@nox.session
def tests(session: nox.Session) -> None:
    """Every test, with a throwaway PostgreSQL started by the pytest plugin."""
    session.install("-e", ".[dev]")
    paths = ["tests", str(ACCEPTANCE)] if ACCEPTANCE.is_dir() else ["tests"]
    session.run("python", "-m", "pytest", *paths, *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    session.run("mypy", "asyncsourcing")
