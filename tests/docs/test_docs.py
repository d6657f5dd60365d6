"""The documentation's code runs as written, and the site builds strictly.

Every ```python block of ``docs/**/*.md`` is run: a page's blocks in order,
as one script, in a subprocess whose working directory is the project root
(so ``examples`` is importable). A block right after a line
``<!-- not-tested -->`` is skipped. A block right after ``<!-- postgres -->``
needs a PostgreSQL server: it runs with the ``POSTGRES_*`` settings of the
session's server (``postgres_env``) and a fresh schema in
``POSTGRES_SCHEMA``, and is left out when there is no server, so the blocks
after it must not depend on it.

A block right after ``<!-- pytest -->`` is a file of a test suite, named by
its fence's title (```` ```python title="test_dogs.py" ````): a page's such
files are written to a new directory, where pytest runs them in a
subprocess (the installed asyncsourcing plugin, the session's PostgreSQL
server, pytest-asyncio in its default strict mode); every test must pass,
and none be skipped when there is a server.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from uuid import uuid4

import pytest

from tests.support.paths import ROOT
from tests.support.postgres import admin_connection, quote

DOCS = ROOT / "docs"
FENCE = re.compile(r"^```python([^\n]*)\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
MARKER = re.compile(r"<!--\s*(not-tested|postgres|pytest)\s*-->\s*$")
TITLE = re.compile(r'title="([^"]+)"')
TIMEOUT = 120


@dataclass(frozen=True)
class Block:
    code: str
    marker: str | None  # "not-tested", "postgres", "pytest" or None
    line: int
    title: str | None = None  # the fence's title="...", if any


def blocks_of(page: Path) -> list[Block]:
    """The ```python blocks of ``page``, each with the marker on the line before."""
    text = page.read_text(encoding="utf-8")
    blocks = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = MARKER.search(before)
        line = text.count("\n", 0, match.start()) + 1
        title = TITLE.search(match.group(1))
        blocks.append(
            Block(
                match.group(2),
                marker and marker.group(1),
                line,
                title and title.group(1),
            )
        )
    return blocks


def pages() -> Iterator[Path]:
    """The pages with blocks to run as a script."""
    for page in sorted(DOCS.rglob("*.md")):
        if any(block.marker in (None, "postgres") for block in blocks_of(page)):
            yield page


def pages_with_test_suites() -> Iterator[Path]:
    """The pages with blocks that are files of a test suite."""
    for page in sorted(DOCS.rglob("*.md")):
        if any(block.marker == "pytest" for block in blocks_of(page)):
            yield page


def script_of(blocks: list[Block], *, with_postgres: bool) -> str:
    """The page's runnable blocks as one script (line numbers in comments)."""
    parts = []
    for block in blocks:
        if block.marker in ("not-tested", "pytest"):
            continue
        if block.marker == "postgres" and not with_postgres:
            continue
        parts.append(f"# --- block at line {block.line}\n{block.code}")
    return "\n\n".join(parts)


def run_script(script: str, name: str, extra_env: dict[str, str]) -> None:
    env = {**os.environ, **extra_env}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    result = subprocess.run(
        [sys.executable, "-"],
        input=script,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, (
        f"The code of {name} failed:\n{result.stdout}\n{result.stderr}"
    )


@pytest.mark.parametrize(
    "page", list(pages()), ids=lambda page: str(page.relative_to(DOCS))
)
async def test_page_examples(page: Path, request: pytest.FixtureRequest) -> None:
    blocks = blocks_of(page)
    name = str(page.relative_to(ROOT))
    if not any(block.marker == "postgres" for block in blocks):
        run_script(script_of(blocks, with_postgres=False), name, {})
        return
    try:
        postgres_env: dict[str, str] = request.getfixturevalue("postgres_env")
    except pytest.skip.Exception:
        # No server: the page's other blocks still run.
        run_script(script_of(blocks, with_postgres=False), name, {})
        return
    schema = f"docs_{uuid4().hex[:12]}"
    async with admin_connection(postgres_env) as conn:
        await conn.execute(f"CREATE SCHEMA {quote(schema)}")
    try:
        run_script(
            script_of(blocks, with_postgres=True),
            name,
            {**postgres_env, "POSTGRES_SCHEMA": schema},
        )
    finally:
        async with admin_connection(postgres_env) as conn:
            await conn.execute(f"DROP SCHEMA IF EXISTS {quote(schema)} CASCADE")


@pytest.mark.parametrize(
    "page", list(pages_with_test_suites()), ids=lambda page: str(page.relative_to(DOCS))
)
def test_page_test_suites(page: Path, tmp_path: Path) -> None:
    files = [block for block in blocks_of(page) if block.marker == "pytest"]
    for block in files:
        assert block.title, f"{page.name}:{block.line}: a pytest block needs a title"
        (tmp_path / block.title).write_text(block.code, encoding="utf-8")
    env = {**os.environ}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    output = f"{result.stdout}\n{result.stderr}"
    assert result.returncode == 0, f"The tests of {page.name} failed:\n{output}"
    if os.environ.get("POSTGRES_HOST"):
        assert "skipped" not in result.stdout, output


def test_markers_are_used_sparingly() -> None:
    """Skipped blocks are the exception: most of the docs' code runs."""
    all_blocks = [block for page in DOCS.rglob("*.md") for block in blocks_of(page)]
    skipped = [block for block in all_blocks if block.marker == "not-tested"]
    assert len(skipped) * 4 <= len(all_blocks)


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed (pip install -e '.[dev]')")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--site-dir",
            str(tmp_path / "site"),
        ],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
