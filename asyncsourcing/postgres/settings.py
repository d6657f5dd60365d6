"""Connection and behaviour settings of a Postgres datastore, and their parsing.

The environment variables keep the names of ``eventsourcing.postgres``
(``POSTGRES_DBNAME``, ``POSTGRES_HOST``, ``POSTGRES_PORT``, ``POSTGRES_USER``,
``POSTGRES_PASSWORD``, ``POSTGRES_SCHEMA``, ``POSTGRES_POOL_SIZE``, ...), and
their defaults where eventsourcing has one.

The connection may also be given as a URL, in ``POSTGRES_URL`` or, when that
is not set, in ``DATABASE_URL``:
``postgresql://user:password@host:port/dbname?sslmode=require`` (or
``postgres://``; percent-encoded parts; a Unix-socket directory as the host,
``?host=/var/run/postgresql``). Each ``POSTGRES_*`` variable that is set
overrides the URL's part: ``POSTGRES_DBNAME`` wins over the URL's database,
and so on.

Every missing or malformed setting is reported in one
:class:`PostgresSettingsError` naming the variables; the password is never
shown, in reprs or in errors, nor is any part of a URL. URLs are parsed by
:mod:`asyncsourcing.postgres.urls`, the variables read as in every backend
(:mod:`asyncsourcing.settings`).

Differences: ``POSTGRES_CONN_MAX_AGE`` closes pooled connections that have
been idle that long (asyncpg has no maximum age); ``POSTGRES_PRE_PING``,
``POSTGRES_MAX_WAITING`` and ``POSTGRES_ENABLE_DB_FUNCTIONS`` are ignored;
``SINGLE_ROW_TRACKING`` may only be true. New: the URLs,
``POSTGRES_SSLMODE``, ``POSTGRES_POLL_INTERVAL`` (the safety-net poll,
default 1 second), ``POSTGRES_APPLICATION_NAME`` (default
"asyncsourcing") and ``POSTGRES_CONCURRENT_WRITES`` (default false: see
:mod:`asyncsourcing.postgres.concurrent`).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Self, TypedDict, cast

from eventsourcing.persistence import InfrastructureFactoryError
from eventsourcing.utils import Environment, resolve_topic

from asyncsourcing.postgres.identifiers import check_identifier
from asyncsourcing.postgres.urls import (
    SSL_MODES,
    URL_FORM_SHORT,
    URL_KEYS,
    SSLMode,
    URLParts,
    parse_url,
)
from asyncsourcing.settings import EnvReader

__all__ = [
    "URL_KEYS",
    "ConnectKwargs",
    "PasswordType",
    "PostgresSettings",
    "PostgresSettingsError",
    "SSLMode",
]

#: A password, or a function (sync or async) that returns one at each connect.
PasswordType = str | Callable[[], str] | Callable[[], Awaitable[str]]

_ORIGINATOR_ID_TYPES: tuple[Literal["uuid", "text"], ...] = ("uuid", "text")


class ConnectKwargs(TypedDict):
    """Keyword arguments of :func:`asyncpg.connect` and :func:`asyncpg.create_pool`."""

    host: str
    port: int
    user: str
    password: PasswordType
    database: str
    timeout: float
    ssl: SSLMode | None
    server_settings: dict[str, str]


class PostgresSettingsError(InfrastructureFactoryError, OSError):
    """Postgres settings are missing or malformed.

    An :class:`~eventsourcing.persistence.InfrastructureFactoryError`, like
    the other errors of constructing a factory, and an :class:`OSError`, which
    is what ``eventsourcing.postgres`` raises for the same mistakes.

    One error reports every problem found. :attr:`missing` holds the
    unprefixed names of the required settings that were not found (e.g.
    ``("POSTGRES_DBNAME", "POSTGRES_PASSWORD")``), :attr:`invalid` the names
    of the variables whose values are malformed, as set (e.g.
    ``("ORDERS_POSTGRES_PORT",)``).
    """

    def __init__(
        self,
        message: str,
        *,
        missing: Sequence[str] = (),
        invalid: Sequence[str] = (),
    ) -> None:
        super().__init__(message)
        self.missing: tuple[str, ...] = tuple(missing)
        self.invalid: tuple[str, ...] = tuple(invalid)


@dataclass(frozen=True, kw_only=True)
class PostgresSettings:
    """Everything a :class:`~asyncsourcing.postgres.PostgresDatastore` needs.

    Validated on construction (:class:`PostgresSettingsError` names every bad
    field). Durations are in seconds. The password is left out of the repr.
    """

    dbname: str
    #: A host name or address, or the directory of a Unix-domain socket
    #: (a path starting with "/").
    host: str
    user: str
    password: PasswordType = field(repr=False)
    port: int = 5432
    schema: str = "public"
    #: Connections the pool keeps open, and how many more it may open on demand.
    pool_size: int = 5
    max_overflow: int = 10
    #: Time allowed to connect, and to wait for a connection from the pool.
    connect_timeout: float = 30.0
    #: Postgres ends a session left idle inside a transaction this long (0: never).
    idle_in_transaction_session_timeout: float = 5.0
    #: Time allowed to wait for the events table's lock when inserting (0: no limit).
    lock_timeout: int = 0
    #: Pooled connections idle this long are closed (asyncpg's
    #: ``max_inactive_connection_lifetime``; 0: never).
    conn_max_age: float = 3600.0
    #: libpq's ``sslmode`` (None: asyncpg's default, which honours ``PGSSLMODE``).
    sslmode: SSLMode | None = None
    #: Interval of the slow safety-net poll for waiters and subscriptions.
    poll_interval: float = 1.0
    originator_id_type: Literal["uuid", "text"] = "uuid"
    #: Whether recorders create their tables (and the schema) on first use.
    create_tables: bool = True
    #: Shown in ``pg_stat_activity``; the LISTEN connection adds ``:listen``.
    application_name: str = "asyncsourcing"
    #: Whether the events tables are written without the table lock, readers
    #: keeping to a visibility horizon (see
    #: :mod:`asyncsourcing.postgres.concurrent`); false: eventsourcing's
    #: EXCLUSIVE table lock.
    concurrent_writes: bool = False

    def __post_init__(self) -> None:
        problems: list[tuple[str, str]] = []

        def invalid(name: str, reason: str) -> None:
            problems.append((name, reason))

        for name in ("dbname", "host", "user"):
            if not getattr(self, name):
                invalid(name, "must not be empty")
        if not 0 < self.port < 65536:
            invalid("port", f"must be a TCP port number, got {self.port!r}")
        schema = self.schema.strip() or "public"
        object.__setattr__(self, "schema", schema)
        try:
            check_identifier(schema)
        except ValueError as error:
            invalid("schema", str(error))
        if self.pool_size < 0 or self.max_overflow < 0:
            invalid("pool_size", "pool_size and max_overflow must not be negative")
        elif self.pool_size + self.max_overflow < 1:
            invalid("pool_size", "pool_size + max_overflow must be at least 1")
        for name in ("connect_timeout", "poll_interval"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                invalid(name, f"must be a positive number, got {value!r}")
        for name in (
            "idle_in_transaction_session_timeout",
            "lock_timeout",
            "conn_max_age",
        ):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                invalid(name, f"must not be negative, got {value!r}")
        if self.sslmode is not None and self.sslmode not in SSL_MODES:
            invalid("sslmode", f"must be one of {', '.join(SSL_MODES)}")
        if self.originator_id_type not in ("uuid", "text"):
            invalid("originator_id_type", "must be 'uuid' or 'text'")
        if problems:
            raise _InvalidFieldsError(problems)

    def connect_kwargs(self, *, listen: bool = False) -> ConnectKwargs:
        """Keyword arguments of :func:`asyncpg.connect` for these settings."""
        # Passed as startup parameters, never as SQL text.
        server_settings = {
            "application_name": self.application_name + (":listen" if listen else ""),
            "idle_in_transaction_session_timeout": str(
                int(self.idle_in_transaction_session_timeout * 1000)
            ),
        }
        return ConnectKwargs(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            database=self.dbname,
            timeout=self.connect_timeout,
            ssl=self.sslmode,
            server_settings=server_settings,
        )

    @classmethod
    def from_env(cls, env: Environment | Mapping[str, str]) -> Self:
        """Settings from environment variables (``eventsourcing``'s names).

        With an :class:`Environment` that has a name, ``NAME_POSTGRES_HOST``
        wins over ``POSTGRES_HOST``, and so on. The connection may be given
        by a URL in ``POSTGRES_URL`` or, if that is not set, in
        ``DATABASE_URL`` (see :data:`URL_KEYS`); each ``POSTGRES_*`` variable
        that is set overrides the URL's part.

        :raises PostgresSettingsError: naming every missing or malformed
            setting, at once.
        """
        reader = _PostgresEnvReader(env)
        url = reader.url()
        if not reader.boolean("SINGLE_ROW_TRACKING", default=True):
            reader.invalid(
                "SINGLE_ROW_TRACKING",
                "only single-row tracking is supported (as in eventsourcing 9.5)",
            )
        dbname = reader.require("POSTGRES_DBNAME", url.dbname)
        host = reader.require("POSTGRES_HOST", url.host)
        user = reader.require("POSTGRES_USER", url.user)
        password: PasswordType = ""
        get_password_topic = reader.get("POSTGRES_GET_PASSWORD_TOPIC")
        if get_password_topic:
            password = reader.parse(
                "POSTGRES_GET_PASSWORD_TOPIC",
                get_password_topic,
                _callable_topic,
                fallback=password,
            )
        else:
            password = reader.require("POSTGRES_PASSWORD", url.password, secret=True)
        port = reader.number(
            "POSTGRES_PORT", int, url.port or 5432, minimum=1, maximum=65535
        )
        schema = reader.get("POSTGRES_SCHEMA") or "public"
        pool_size = reader.number("POSTGRES_POOL_SIZE", int, 5, minimum=0)
        max_overflow = reader.number("POSTGRES_MAX_OVERFLOW", int, 10, minimum=0)
        connect_timeout = reader.number(
            "POSTGRES_CONNECT_TIMEOUT",
            float,
            url.connect_timeout or 30.0,
            minimum=0,
            exclusive=True,
        )
        idle_in_transaction_session_timeout = reader.number(
            "POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT", float, 5.0, minimum=0
        )
        lock_timeout = reader.number("POSTGRES_LOCK_TIMEOUT", int, 0, minimum=0)
        conn_max_age = reader.number("POSTGRES_CONN_MAX_AGE", float, 3600.0, minimum=0)
        sslmode = reader.choice("POSTGRES_SSLMODE", SSL_MODES) or url.sslmode
        poll_interval = reader.number(
            "POSTGRES_POLL_INTERVAL", float, 1.0, minimum=0, exclusive=True
        )
        originator_id_type = (
            reader.choice("ORIGINATOR_ID_TYPE", _ORIGINATOR_ID_TYPES) or "uuid"
        )
        create_tables = reader.boolean("CREATE_TABLE", default=True)
        concurrent_writes = reader.boolean("POSTGRES_CONCURRENT_WRITES", default=False)
        application_name = (
            reader.get("POSTGRES_APPLICATION_NAME")
            or url.application_name
            or "asyncsourcing"
        )
        reader.raise_problems()
        try:
            return cls(
                dbname=dbname,
                host=host,
                user=user,
                password=password,
                port=port,
                schema=schema,
                pool_size=pool_size,
                max_overflow=max_overflow,
                connect_timeout=connect_timeout,
                idle_in_transaction_session_timeout=idle_in_transaction_session_timeout,
                lock_timeout=lock_timeout,
                conn_max_age=conn_max_age,
                sslmode=sslmode,
                poll_interval=poll_interval,
                originator_id_type=originator_id_type,
                create_tables=create_tables,
                application_name=application_name,
                concurrent_writes=concurrent_writes,
            )
        except _InvalidFieldsError as error:
            for field_name, reason in error.problems:
                reader.invalid(_FIELD_KEYS.get(field_name, field_name), reason)
            reader.raise_problems()
            raise  # pragma: no cover (raise_problems() raised)


class _InvalidFieldsError(PostgresSettingsError):
    """Fields of :class:`PostgresSettings` given malformed values."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        lines = [f"Invalid Postgres setting {name!r}: {why}" for name, why in problems]
        super().__init__("\n".join(lines), invalid=[name for name, _ in problems])
        self.problems = problems


#: The environment variable of each field, to name it in errors.
_FIELD_KEYS = {
    "dbname": "POSTGRES_DBNAME",
    "host": "POSTGRES_HOST",
    "user": "POSTGRES_USER",
    "port": "POSTGRES_PORT",
    "schema": "POSTGRES_SCHEMA",
    "pool_size": "POSTGRES_POOL_SIZE",
    "max_overflow": "POSTGRES_MAX_OVERFLOW",
    "connect_timeout": "POSTGRES_CONNECT_TIMEOUT",
    "idle_in_transaction_session_timeout": (
        "POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT"
    ),
    "lock_timeout": "POSTGRES_LOCK_TIMEOUT",
    "conn_max_age": "POSTGRES_CONN_MAX_AGE",
    "sslmode": "POSTGRES_SSLMODE",
    "poll_interval": "POSTGRES_POLL_INTERVAL",
    "originator_id_type": "ORIGINATOR_ID_TYPE",
}


def _callable_topic(topic: str) -> Callable[[], str] | Callable[[], Awaitable[str]]:
    func = resolve_topic(topic)
    if not callable(func):
        msg = "the topic does not name a function"
        raise ValueError(msg)
    return cast("Callable[[], str]", func)


class _PostgresEnvReader(EnvReader):
    """An :class:`EnvReader` that also reads a URL, and reports in one error."""

    def __init__(self, env: Environment | Mapping[str, str]) -> None:
        super().__init__(env)
        #: The variable that holds the URL read by :meth:`url`, if any.
        self.url_key: str | None = None
        self.url_invalid = False

    def url(self) -> URLParts:
        """The parts of the first URL set of :data:`URL_KEYS` (none: no parts)."""
        for key in URL_KEYS:
            value = self.get(key)
            if value:
                self.url_key = self.key_of(key)
                try:
                    return parse_url(value)
                except ValueError as error:
                    self.invalid(key, str(error))
                    self.url_invalid = True
                    break
        return URLParts()

    def raise_problems(self) -> None:
        """Raise one :class:`PostgresSettingsError` for every problem recorded."""
        if not (self.missing or self.problems):
            return
        reports = [
            f"Postgres environment variable {key!r} is invalid: {reason}"
            for key, reason in self.problems
        ]
        # Settings missing because the URL that would give them is malformed
        # are not reported: the URL's error is the one to fix.
        missing = [] if self.url_invalid else self.missing
        if missing:
            reports.insert(0, self._missing_report())
        if len(reports) == 1:
            message = reports[0]
        else:
            listed = "".join(f"\n- {report}" for report in reports)
            message = f"{len(reports)} problems with the Postgres settings:{listed}"
        raise PostgresSettingsError(
            message,
            missing=missing,
            invalid=[key for key, _ in self.problems],
        )

    def _missing_report(self) -> str:
        names = [repr(key) for key in self.missing]
        if "POSTGRES_PASSWORD" in self.missing:
            i = self.missing.index("POSTGRES_PASSWORD")
            names[i] += " (or 'POSTGRES_GET_PASSWORD_TOPIC')"
        listed = names[-1] if len(names) == 1 else ", ".join(names[:-1])
        if len(names) > 1:
            listed += f" and {names[-1]}"
        them = "it" if len(names) == 1 else "them"
        advice = f"Set {them}"
        if self.env.name:
            advice += f" (prefixed {self.env.name.upper() + '_'!r} or not)"
        if self.url_key is not None:
            advice += f", or include {them} in the URL of {self.url_key!r}"
        else:
            urls = " or ".join(repr(key) for key in URL_KEYS)
            advice += f", or set a URL, {URL_FORM_SHORT}, in {urls}"
        return f"Postgres settings not found in environment: {listed}. {advice}."
