"""Griffe extension for the API reference: Sphinx roles become inline code.

The library's docstrings use reStructuredText roles (``:class:`~a.B```),
which Markdown would show as they are: ``:class:`~a.B``` renders as ``B``
in code, ``:meth:`x``` as ``x()``, and double backquotes as single ones.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(\w+):`(~?)([^`<]*?)(?:\s*<([^>]*)>)?`")


def _role(match: re.Match[str]) -> str:
    kind, tilde, text, target = match.groups()
    name = text.strip() or (target or "").strip()
    if tilde:
        name = name.rsplit(".", 1)[-1]
    if kind in {"meth", "func"} and not name.endswith(")"):
        name += "()"
    return f"`{name}`"


def convert(text: str) -> str:
    text = ROLE.sub(_role, text)
    return re.sub(r"``([^`]+)``", r"`\1`", text)


class RstRoles(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = convert(obj.docstring.value)
