"""Developer sessions, the steps of ``.ci/run`` one by one.

``nox`` runs them all: ``tests``, ``lint``, ``typecheck`` and ``docs``, each
with the same command as ``.ci/run`` (which also installs PostgreSQL when it
is missing; the tests need its server binaries).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint", "typecheck", "docs"]
ACCEPTANCE = Path(__file__).parent.parent / "shared" / "acceptance"


@nox.session
def tests(session: nox.Session) -> None:
    """Every test, with a throwaway PostgreSQL started by the pytest plugin."""
    session.install("-e", ".[dev]")
    paths = ["tests", str(ACCEPTANCE)] if ACCEPTANCE.is_dir() else ["tests"]
    session.run("python", "-m", "pytest", *paths, *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """``ruff check`` and ``ruff format --check``, as ``.ci/run`` runs them."""
    session.install("-e", ".[dev]")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """``mypy --strict`` (the ``[tool.mypy]`` settings) on the library."""
    session.install("-e", ".[dev]")
    session.run("mypy", "asyncsourcing")


@nox.session
def docs(session: nox.Session) -> None:
    """``mkdocs build --strict``, into a temporary directory."""
    session.install("-e", ".[dev]")
    with tempfile.TemporaryDirectory() as site_dir:
        session.run("mkdocs", "build", "--strict", "--site-dir", site_dir)
