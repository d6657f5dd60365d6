"""Validating and quoting SQL identifiers (schema, table, index, channel names).

Identifiers are the only names put into SQL text; values are always passed as
query parameters. Every identifier is double-quoted, as ``eventsourcing``'s
``psycopg.sql.Identifier`` does, so names keep their case and may contain any
character but NUL.
"""

from __future__ import annotations

import itertools

__all__ = [
    "MAX_IDENTIFIER_LEN",
    "check_identifier",
    "dollar_quote",
    "qualified",
    "quote_identifier",
]

#: PostgreSQL keeps at most NAMEDATALEN - 1 = 63 bytes of an identifier and
#: silently truncates longer ones, which would make two names collide.
MAX_IDENTIFIER_LEN = 63


def check_identifier(name: str) -> None:
    """Raise :class:`ValueError` unless ``name`` is usable as an identifier as it is."""
    if not isinstance(name, str) or not name:
        msg = f"Identifier must be a non-empty string: {name!r}"
        raise ValueError(msg)
    if "\x00" in name:
        msg = f"Identifier must not contain NUL characters: {name!r}"
        raise ValueError(msg)
    if len(name.encode()) > MAX_IDENTIFIER_LEN:
        msg = f"Identifier too long (more than {MAX_IDENTIFIER_LEN} bytes): {name}"
        raise ValueError(msg)


def quote_identifier(name: str) -> str:
    """``name`` as a double-quoted SQL identifier."""
    check_identifier(name)
    return '"' + name.replace('"', '""') + '"'


def qualified(schema: str, name: str) -> str:
    """The quoted, schema-qualified name of a table or other object."""
    return f"{quote_identifier(schema)}.{quote_identifier(name)}"


def dollar_quote(body: str, tag: str = "BODY") -> str:
    """``body`` as a dollar-quoted string constant, e.g. a function's body.

    The delimiter is ``$BODY$`` (eventsourcing's; ``$<tag>$`` in general),
    unless that occurs in ``body`` (a quoted identifier may contain any
    ``$...$``): then the first of ``$BODY_1$``, ``$BODY_2$``, ... that does
    not. The string ends at the first occurrence of its delimiter, which is
    then the closing one.
    """
    for n in itertools.count():
        delimiter = f"${tag}$" if n == 0 else f"${tag}_{n}$"
        text = body + delimiter
        if text.find(delimiter) == len(body):
            return delimiter + text
    raise AssertionError  # pragma: no cover (the loop returns)
