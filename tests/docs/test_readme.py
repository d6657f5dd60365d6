"""The README's code runs as written, and what it says of CI holds."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.paths import ROOT

README = ROOT / "README.md"
CI_RUN = ROOT / ".ci" / "run"
NOXFILE = ROOT / "noxfile.py"


def test_readme_example_prints_the_count(tmp_path: Path) -> None:
    (block,) = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
    script = tmp_path / "taste.py"
    script.write_text(block)
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "1\n"


def ci_commands() -> list[str]:
    """The commands that ``.ci/run`` runs in ``.venv``, without the prefix."""
    return [
        line.strip().removeprefix(".venv/bin/")
        for line in CI_RUN.read_text().splitlines()
        if line.strip().startswith(".venv/bin/")
    ]


def test_readme_says_what_ci_runs() -> None:
    readme = README.read_text()
    commands = ci_commands()
    # The README's test command is the one that .ci/run runs.
    (test_command,) = re.findall(r"test command is\s+`([^`]+)`", readme)
    assert test_command.removeprefix(".venv/bin/") in commands
    # Each check the README names is a command of .ci/run, and each
    # command of .ci/run is named in the README.
    for check in (
        "mypy asyncsourcing",
        "ruff check .",
        "ruff format --check .",
        "mkdocs build --strict",
    ):
        assert any(command.startswith(check) for command in commands), check
    for tool in ("pytest", "mypy", "ruff check", "ruff format --check", "mkdocs"):
        assert tool in readme, tool
    assert "Python 3.11" in readme
    assert "package index" in readme


def nox_commands() -> dict[str, list[str]]:
    """The commands of each nox session: the literal arguments of its runs."""
    tree = ast.parse(NOXFILE.read_text())
    sessions: dict[str, list[str]] = {}
    for function in tree.body:
        if not isinstance(function, ast.FunctionDef):
            continue
        runs = [
            node
            for node in ast.walk(function)
            if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "run"
        ]
        sessions[function.name] = [
            " ".join(
                arg.value
                for arg in run.args
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str)
            )
            for run in runs
        ]
    return sessions


def normalised(command: str) -> str:
    """``command`` without the arguments that are computed at run time."""
    for prefix in ("python -m pytest", "mkdocs build --strict --site-dir"):
        if command.startswith(prefix):
            return prefix
    return command


def test_nox_sessions_mirror_ci() -> None:
    sessions = nox_commands()
    assert set(sessions) == {"tests", "lint", "typecheck", "docs"}
    ci = {normalised(c) for c in ci_commands() if not c.startswith("python -m pip")}
    nox = {normalised(c) for commands in sessions.values() for c in commands}
    assert nox == ci


def test_editable_install_is_visible_to_mypy(tmp_path: Path) -> None:
    """mypy, outside the checkout, finds the package through site-packages.

    Setuptools' editable install of a flat layout is an import hook, which
    type checkers cannot follow; ``package-dir`` in pyproject.toml makes it
    a path in a .pth file.
    """
    mypy = shutil.which("mypy", path=str(Path(sys.executable).parent))
    if mypy is None:
        pytest.skip("mypy is not installed beside the interpreter")
    (tmp_path / "user.py").write_text(
        "from uuid import UUID\n\n"
        "from asyncsourcing.application import Application\n\n\n"
        "class Bank(Application[UUID]):\n"
        '    """A user\'s application."""\n\n\n'
        "def name(bank: Bank) -> str:\n"
        "    return bank.name\n"
    )
    result = subprocess.run(
        [mypy, "--strict", "--cache-dir", str(tmp_path / "cache"), "user.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("Success")
