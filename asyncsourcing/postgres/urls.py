"""Connection URLs of PostgreSQL, parsed as libpq parses them.

``postgresql://user:password@host:port/dbname?sslmode=require`` (or
``postgres://``), every part optional and percent-encoded, and a few of
libpq's query parameters (:data:`URL_PARAMETERS`), which override the parts.
Errors never quote any part of a URL: a misplaced character can put a piece
of the password anywhere in it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, cast
from urllib.parse import unquote

__all__ = [
    "SSL_MODES",
    "URL_FORM",
    "URL_FORM_SHORT",
    "URL_KEYS",
    "URL_PARAMETERS",
    "SSLMode",
    "URLParts",
    "parse_url",
]

#: libpq's ``sslmode`` values.
SSLMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
SSL_MODES: tuple[SSLMode, ...] = (
    "disable",
    "allow",
    "prefer",
    "require",
    "verify-ca",
    "verify-full",
)

#: The variables that may hold a connection URL, the first set one winning.
URL_KEYS = ("POSTGRES_URL", "DATABASE_URL")

#: The form of a URL, as shown in errors.
URL_FORM_SHORT = "postgresql://user:password@host:port/dbname"
URL_FORM = URL_FORM_SHORT + "?sslmode=..."

#: The query parameters a URL may have (libpq's names).
URL_PARAMETERS = (
    "host",
    "port",
    "dbname",
    "user",
    "password",
    "sslmode",
    "application_name",
    "connect_timeout",
)

_URL_SCHEMES = ("postgresql", "postgres")

#: libpq's other parameters: refused by name, as not supported. A parameter
#: that is none of libpq's is refused without its name, which may be a
#: misplaced part of the password.
_LIBPQ_PARAMETERS = frozenset(
    {
        "hostaddr", "passfile", "require_auth", "channel_binding",
        "client_encoding", "options", "fallback_application_name",
        "keepalives", "keepalives_idle", "keepalives_interval",
        "keepalives_count", "tcp_user_timeout", "replication", "gssencmode",
        "requiressl", "sslcompression", "sslcert", "sslkey", "sslpassword",
        "sslcertmode", "sslrootcert", "sslcrl", "sslcrldir", "sslsni",
        "requirepeer", "ssl_min_protocol_version", "ssl_max_protocol_version",
        "krbsrvname", "gsslib", "gssdelegation", "service",
        "target_session_attrs", "load_balance_hosts",
        "ssl",  # Not libpq's (asyncpg's and SQLAlchemy's): sslmode is.
    }
)  # fmt: skip

_ENCODE_HINT = (
    "in the user name, password and database name, characters such as "
    "@ : / ? # & % must be percent-encoded, e.g. %2F for /"
)


@dataclass(frozen=True)
class URLParts:
    """What a connection URL says; None where it says nothing."""

    host: str | None = None
    port: int | None = None
    user: str | None = None
    password: str | None = None
    dbname: str | None = None
    sslmode: SSLMode | None = None
    application_name: str | None = None
    connect_timeout: float | None = None


def parse_url(url: str) -> URLParts:
    """The parts of a ``postgresql://`` URL, percent-decoded.

    Follows libpq's URIs: ``postgresql://`` or ``postgres://`` (a SQLAlchemy
    driver suffix such as ``postgresql+asyncpg://`` is allowed and ignored),
    then ``user:password@host:port/dbname``, every part optional, then query
    parameters (:data:`URL_PARAMETERS`) that override those parts. A host
    that starts with "/" (``?host=/var/run/postgresql``, or percent-encoded
    in place of the host) is the directory of a Unix-domain socket.

    :raises ValueError: saying what is wrong, never quoting any part of the
        URL (a misplaced character can put a piece of the password anywhere).
    """
    scheme, separator, rest = url.partition("://")
    if not separator or scheme.lower().partition("+")[0] not in _URL_SCHEMES:
        msg = f"not a PostgreSQL URL: expected {URL_FORM} (or postgres://)"
        raise ValueError(msg)
    if "#" in rest:
        msg = f"a URL has no '#' fragment: {_ENCODE_HINT}"
        raise ValueError(msg)
    # The authority ends at the first "/" or "?", as in libpq.
    end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=None)
    authority, tail = (rest, "") if end is None else (rest[:end], rest[end:])
    path, _, query = tail.partition("?")
    if "@" in path:
        # An "@" after the host is most likely the end of a password whose
        # "/" was not encoded: refused rather than read as a database name.
        msg = f"an unencoded '@' after the host: {_ENCODE_HINT}"
        raise ValueError(msg)
    userinfo, at, hostport = authority.rpartition("@")
    parts: dict[str, str] = {}
    if at:
        user, colon, password = userinfo.partition(":")
        if user:
            parts["user"] = _decode(user, "the user name")
        if colon:
            parts["password"] = _decode(password, "the password")
    if hostport:
        host, port = _split_host_port(hostport)
        if host:
            parts["host"] = _decode(host, "the host")
        if port:
            parts["port"] = port
    if len(path) > 1:
        parts["dbname"] = _decode(path[1:], "the database name")
    if query:
        parts.update(_query_parameters(query))
    return URLParts(
        host=parts.get("host") or None,
        port=_url_port(parts["port"]) if "port" in parts else None,
        user=parts.get("user") or None,
        password=parts.get("password"),
        dbname=parts.get("dbname") or None,
        sslmode=_url_sslmode(parts["sslmode"]) if "sslmode" in parts else None,
        application_name=parts.get("application_name") or None,
        connect_timeout=(
            _url_connect_timeout(parts["connect_timeout"])
            if "connect_timeout" in parts
            else None
        ),
    )


def _decode(text: str, what: str) -> str:
    try:
        return unquote(text, errors="strict")
    except UnicodeDecodeError:
        msg = f"{what} is not valid UTF-8 once percent-decoded"
        raise ValueError(msg) from None


def _split_host_port(hostport: str) -> tuple[str, str]:
    if "," in hostport:
        msg = "several hosts are not supported: give one host"
        raise ValueError(msg)
    if hostport.startswith("["):  # An IPv6 address: [::1]:5432
        address, bracket, after = hostport[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            msg = "an IPv6 address must be written [address] or [address]:port"
            raise ValueError(msg)
        return address, after[1:]
    host, _, port = hostport.partition(":")
    if ":" in port:
        msg = (
            "the host part has more than one ':': write an IPv6 address in "
            f"brackets, [::1]; {_ENCODE_HINT}"
        )
        raise ValueError(msg)
    return host, port


def _query_parameters(query: str) -> dict[str, str]:
    parameters: dict[str, str] = {}
    unsupported: list[str] = []
    unknown = 0
    for item in query.split("&"):
        if not item:
            continue
        raw_name, equals, raw_value = item.partition("=")
        name = _decode(raw_name, "a query parameter's name")
        if name in URL_PARAMETERS and equals:
            what = "the password" if name == "password" else f"parameter {name!r}"
            parameters[name] = _decode(raw_value, what)
        elif name in URL_PARAMETERS:
            msg = f"query parameter {name!r} has no value ({name}=...)"
            raise ValueError(msg)
        elif name in _LIBPQ_PARAMETERS:
            unsupported.append(name)
        else:
            unknown += 1
    if unsupported or unknown:
        named = [repr(name) for name in unsupported]
        if unknown:
            named.append(f"{unknown} unknown to libpq (not shown)")
        msg = (
            f"unsupported query parameters: {', '.join(named)}; supported are "
            f"{', '.join(URL_PARAMETERS)}"
        )
        if unknown:
            msg += f" ({_ENCODE_HINT})"
        raise ValueError(msg)
    return parameters


def _url_port(text: str) -> int:
    if not (text.isascii() and text.isdigit() and 0 < int(text) < 65536):
        msg = f"the port is not a number from 1 to 65535 ({_ENCODE_HINT})"
        raise ValueError(msg)
    return int(text)


def _url_sslmode(text: str) -> SSLMode:
    if text.lower() not in SSL_MODES:
        msg = f"sslmode must be one of {', '.join(SSL_MODES)}"
        raise ValueError(msg)
    return cast("SSLMode", text.lower())


def _url_connect_timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        msg = "connect_timeout must be a positive number of seconds"
        raise ValueError(msg)
    return value
