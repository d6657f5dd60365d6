"""Connection and behaviour settings of a Postgres datastore, and their parsing.

The environment variables keep the names of ``eventsourcing.postgres``
(``POSTGRES_DBNAME``, ``POSTGRES_HOST``, ``POSTGRES_PORT``, ``POSTGRES_USER``,
``POSTGRES_PASSWORD``, ``POSTGRES_SCHEMA``, ``POSTGRES_POOL_SIZE``, ...), and
their defaults where eventsourcing has one. A missing or malformed setting
raises :class:`PostgresSettingsError` naming the variable; the password is
never shown, in reprs or in errors.

Differences: ``POSTGRES_CONN_MAX_AGE`` closes pooled connections that have
been idle that long (asyncpg has no maximum age); ``POSTGRES_PRE_PING``,
``POSTGRES_MAX_WAITING`` and ``POSTGRES_ENABLE_DB_FUNCTIONS`` are ignored;
``SINGLE_ROW_TRACKING`` may only be true. New: ``POSTGRES_SSLMODE``,
``POSTGRES_POLL_INTERVAL`` (the safety-net poll, default 1 second) and
``POSTGRES_APPLICATION_NAME`` (default "asyncsourcing").
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, NoReturn, Self, TypedDict, TypeVar, cast

from eventsourcing.persistence import InfrastructureFactoryError
from eventsourcing.utils import Environment, resolve_topic, strtobool

from asyncsourcing.postgres.identifiers import check_identifier

__all__ = [
    "ConnectKwargs",
    "PasswordType",
    "PostgresSettings",
    "PostgresSettingsError",
    "SSLMode",
]

#: A password, or a function (sync or async) that returns one at each connect.
PasswordType = str | Callable[[], str] | Callable[[], Awaitable[str]]

SSLMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
SSL_MODES: tuple[SSLMode, ...] = (
    "disable",
    "allow",
    "prefer",
    "require",
    "verify-ca",
    "verify-full",
)


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


_T = TypeVar("_T")


class PostgresSettingsError(InfrastructureFactoryError, OSError):
    """A Postgres setting is missing or malformed.

    An :class:`~eventsourcing.persistence.InfrastructureFactoryError`, like
    the other errors of constructing a factory, and an :class:`OSError`, which
    is what ``eventsourcing.postgres`` raises for the same mistakes.
    """


@dataclass(frozen=True, kw_only=True)
class PostgresSettings:
    """Everything a :class:`~asyncsourcing.postgres.PostgresDatastore` needs.

    Validated on construction (:class:`PostgresSettingsError` names the bad
    field). Durations are in seconds. The password is left out of the repr.
    """

    dbname: str
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
    #: Whether recorders create their tables on first use.
    create_tables: bool = True
    #: Shown in ``pg_stat_activity``; the LISTEN connection adds ``:listen``.
    application_name: str = "asyncsourcing"

    def __post_init__(self) -> None:
        for name in ("dbname", "host", "user"):
            if not getattr(self, name):
                _invalid(name, "must not be empty")
        if not 0 < self.port < 65536:
            _invalid("port", f"must be a TCP port number, got {self.port!r}")
        schema = self.schema.strip() or "public"
        object.__setattr__(self, "schema", schema)
        try:
            check_identifier(schema)
        except ValueError as error:
            _invalid("schema", str(error))
        if self.pool_size < 0 or self.max_overflow < 0:
            _invalid("pool_size", "pool_size and max_overflow must not be negative")
        if self.pool_size + self.max_overflow < 1:
            _invalid("pool_size", "pool_size + max_overflow must be at least 1")
        for name in ("connect_timeout", "poll_interval"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                _invalid(name, f"must be a positive number, got {value!r}")
        for name in (
            "idle_in_transaction_session_timeout",
            "lock_timeout",
            "conn_max_age",
        ):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                _invalid(name, f"must not be negative, got {value!r}")
        if self.sslmode is not None and self.sslmode not in SSL_MODES:
            _invalid("sslmode", f"must be one of {', '.join(SSL_MODES)}")
        if self.originator_id_type not in ("uuid", "text"):
            _invalid("originator_id_type", "must be 'uuid' or 'text'")

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
        wins over ``POSTGRES_HOST``, and so on.
        """
        reader = _EnvReader(
            env if isinstance(env, Environment) else Environment(env=env)
        )
        password: PasswordType
        get_password_topic = reader.get("POSTGRES_GET_PASSWORD_TOPIC")
        if get_password_topic:
            password = reader.parse(
                "POSTGRES_GET_PASSWORD_TOPIC", get_password_topic, _callable_topic
            )
        else:
            password = reader.require("POSTGRES_PASSWORD", secret=True)
        if not _bool_setting(reader, "SINGLE_ROW_TRACKING", default=True):
            reader.fail(
                "SINGLE_ROW_TRACKING",
                "only single-row tracking is supported (as in eventsourcing 9.5)",
            )
        try:
            return cls(
                dbname=reader.require("POSTGRES_DBNAME"),
                host=reader.require("POSTGRES_HOST"),
                user=reader.require("POSTGRES_USER"),
                password=password,
                port=reader.number(
                    "POSTGRES_PORT", int, 5432, minimum=1, maximum=65535
                ),
                schema=reader.get("POSTGRES_SCHEMA") or "public",
                pool_size=reader.number("POSTGRES_POOL_SIZE", int, 5, minimum=0),
                max_overflow=reader.number("POSTGRES_MAX_OVERFLOW", int, 10, minimum=0),
                connect_timeout=reader.number(
                    "POSTGRES_CONNECT_TIMEOUT", float, 30.0, minimum=0, exclusive=True
                ),
                idle_in_transaction_session_timeout=reader.number(
                    "POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT",
                    float,
                    5.0,
                    minimum=0,
                ),
                lock_timeout=reader.number("POSTGRES_LOCK_TIMEOUT", int, 0, minimum=0),
                conn_max_age=reader.number(
                    "POSTGRES_CONN_MAX_AGE", float, 3600.0, minimum=0
                ),
                sslmode=cast(
                    "SSLMode | None", reader.choice("POSTGRES_SSLMODE", SSL_MODES)
                ),
                poll_interval=reader.number(
                    "POSTGRES_POLL_INTERVAL", float, 1.0, minimum=0, exclusive=True
                ),
                originator_id_type=cast(
                    "Literal['uuid', 'text']",
                    reader.choice("ORIGINATOR_ID_TYPE", ("uuid", "text")) or "uuid",
                ),
                create_tables=_bool_setting(reader, "CREATE_TABLE", default=True),
                application_name=reader.get("POSTGRES_APPLICATION_NAME")
                or "asyncsourcing",
            )
        except _InvalidFieldError as error:
            key = _FIELD_KEYS.get(error.field_name, error.field_name)
            reader.fail(key, error.reason)


class _InvalidFieldError(PostgresSettingsError):
    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(f"Invalid Postgres setting {field_name!r}: {reason}")
        self.field_name = field_name
        self.reason = reason


def _invalid(field_name: str, reason: str) -> NoReturn:
    raise _InvalidFieldError(field_name, reason)


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


def _bool_setting(reader: _EnvReader, key: str, *, default: bool) -> bool:
    """A boolean setting; a value that is not one raises naming ``key``."""
    value = reader.get(key)
    if not value:
        return default
    return reader.parse(key, value, lambda v: bool(strtobool(v)))


class _EnvReader:
    """Reads settings from an environment; errors name the variable looked up."""

    def __init__(self, env: Environment) -> None:
        self.env = env

    def key_of(self, key: str) -> str:
        """The variable that holds ``key``'s value (e.g. ``APP_POSTGRES_PORT``)."""
        for candidate in self.env.create_keys(key):
            if dict.get(self.env, candidate) is not None:
                return candidate
        return key

    def get(self, key: str) -> str | None:
        value = self.env.get(key)
        return value.strip() if value is not None else None

    def fail(self, key: str, reason: str) -> NoReturn:
        msg = f"Postgres environment variable {self.key_of(key)!r} is invalid: {reason}"
        raise PostgresSettingsError(msg)

    def require(self, key: str, *, secret: bool = False) -> str:
        # A password is used as it is: spaces may be part of it.
        value = self.env.get(key) if secret else self.get(key)
        if value is None or (not secret and not value):
            keys = " or ".join(repr(k) for k in self.env.create_keys(key))
            msg = f"Postgres setting not found in environment: set {keys}"
            raise PostgresSettingsError(msg)
        return value

    def parse(self, key: str, value: str, parse: Callable[[str], _T]) -> _T:
        try:
            return parse(value)
        except Exception as error:
            reason = f"{error} (got {value!r})"
            self.fail(key, reason)

    def number(
        self,
        key: str,
        kind: Callable[[str], _T],
        default: _T,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
        exclusive: bool = False,
    ) -> _T:
        value = self.get(key)
        if not value:
            return default
        described = "an integer" if kind is int else "a number"
        try:
            number = kind(value)
        except ValueError:
            self.fail(key, f"{described} is expected, got {value!r}")
        as_float = float(cast("float", number))
        if not math.isfinite(as_float):
            self.fail(key, f"{described} is expected, got {value!r}")
        if minimum is not None and (
            as_float < minimum or (exclusive and as_float == minimum)
        ):
            bound = "greater than" if exclusive else "at least"
            self.fail(key, f"must be {bound} {minimum:g}, got {value!r}")
        if maximum is not None and as_float > maximum:
            self.fail(key, f"must be at most {maximum:g}, got {value!r}")
        return number

    def choice(self, key: str, choices: tuple[str, ...]) -> str | None:
        value = self.get(key)
        if not value:
            return None
        if value.lower() not in choices:
            self.fail(key, f"expected one of {', '.join(choices)}, got {value!r}")
        return value.lower()
