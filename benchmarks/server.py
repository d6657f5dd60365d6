"""The PostgreSQL server the benchmarks run on, and what they ask of it.

Uses the server named by ``POSTGRES_HOST`` (and ``POSTGRES_PORT``,
``POSTGRES_USER``, ``POSTGRES_PASSWORD``, ``POSTGRES_DBNAME``) when that is
set, else starts a throwaway :class:`TemporaryPostgres` with
``pg_stat_statements`` preloaded: durable by default (``fsync``,
``synchronous_commit`` and ``full_page_writes`` on, as on a production
server), or with those off when asked (``--fast``). Either way the server's
own values of those settings are read (:data:`DURABILITY_SETTINGS`) and
recorded with the results. Every table of schema ``public`` is dropped
between measurements: never point the benchmarks at a database that holds
anything else.

The synchronous psycopg connection used here for housekeeping (dropping
tables, reading statistics) is only ever used between measurements or, for
statistics, from the thread that runs the measurement, never on an event loop.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import psycopg

from asyncsourcing.testing.pgserver import TemporaryPostgres
from benchmarks.progress import log

__all__ = [
    "DURABILITY_SETTINGS",
    "PostgresServer",
    "QueryCounter",
    "describe_durability",
    "postgres_server",
    "read_durability",
]

#: The server settings that decide what a commit costs, and what a crash loses.
DURABILITY_SETTINGS = ("fsync", "synchronous_commit", "full_page_writes")

# Statements that are not queries: transaction control. They are excluded
# from the counts (both libraries wrap their work in transactions, and count
# the same way for both would only add noise to the comparison).
_TRANSACTION_CONTROL = r"^\s*(BEGIN|COMMIT|ROLLBACK|START TRANSACTION|END)\b"

# Marker put in our own statistics queries, so they are not counted.
_OWN = "/* benchmarks-housekeeping */"


@dataclass
class PostgresServer:
    """Connection settings of the server, and whether we started it."""

    settings: dict[str, str]
    started_here: bool
    version: str = ""
    counter_method: str = ""
    #: The server's values of :data:`DURABILITY_SETTINGS`, read by :meth:`prepare`.
    durability: dict[str, str] = field(default_factory=dict)
    _conn: psycopg.Connection[tuple[object, ...]] | None = field(
        default=None, repr=False
    )

    def env(self) -> dict[str, str]:
        """The ``POSTGRES_*`` settings, unprefixed."""
        return dict(self.settings)

    def connect(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(
            host=self.settings["POSTGRES_HOST"],
            port=int(self.settings["POSTGRES_PORT"]),
            user=self.settings["POSTGRES_USER"],
            password=self.settings["POSTGRES_PASSWORD"],
            dbname=self.settings["POSTGRES_DBNAME"],
            autocommit=True,
        )

    @property
    def conn(self) -> psycopg.Connection[tuple[object, ...]]:
        if self._conn is None or self._conn.closed:
            self._conn = self.connect()
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def prepare(self) -> None:
        """Read the server version and durability, pick the query counting method."""
        row = self.conn.execute("SHOW server_version").fetchone()
        self.version = str(row[0]) if row else "?"
        self.durability = read_durability(self.conn)
        try:
            self.conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            self.conn.execute(f"SELECT 1 FROM pg_stat_statements LIMIT 1 {_OWN}")
        except psycopg.Error:
            self.counter_method = "pg_stat_database"
        else:
            self.counter_method = "pg_stat_statements"

    def drop_tables(self) -> None:
        """Drop every table of schema public (both libraries' tables)."""
        rows = self.conn.execute(
            f"SELECT tablename FROM pg_tables WHERE schemaname = 'public' {_OWN}"
        ).fetchall()
        for (name,) in rows:
            self.conn.execute(
                psycopg.sql.SQL("DROP TABLE IF EXISTS public.{} CASCADE").format(
                    psycopg.sql.Identifier(str(name))
                )
            )

    def query_counter(self) -> QueryCounter:
        return QueryCounter(self)


class QueryCounter:
    """Counts the statements the server ran between :meth:`start` and :meth:`stop`.

    With ``pg_stat_statements``: the sum of ``calls`` over the database's
    statements other than transaction control and our own, whose counters are
    updated as each statement ends. Otherwise: the delta of
    ``xact_commit + xact_rollback`` of the database in ``pg_stat_database``
    (transactions, not statements; those counters are flushed by backends
    at most once a second, so it waits 1.5 s before each reading).
    """

    def __init__(self, server: PostgresServer) -> None:
        self.server = server
        self._start = 0

    def _read(self) -> int:
        conn = self.server.conn
        if self.server.counter_method == "pg_stat_statements":
            row = conn.execute(
                "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements "
                "WHERE dbid = (SELECT oid FROM pg_database "
                "WHERE datname = current_database()) "
                "AND query !~* %s AND query NOT LIKE %s "
                "AND query NOT LIKE '%%pg_stat_statements%%' " + _OWN,
                (_TRANSACTION_CONTROL, f"%{_OWN}%"),
            ).fetchone()
        else:
            time.sleep(1.5)
            conn.execute("SELECT pg_stat_clear_snapshot()")
            row = conn.execute(
                "SELECT xact_commit + xact_rollback FROM pg_stat_database "
                "WHERE datname = current_database() " + _OWN
            ).fetchone()
        return int(row[0]) if row else 0  # type: ignore[call-overload]

    def start(self) -> None:
        self._start = self._read()

    def stop(self) -> int:
        return self._read() - self._start


def read_durability(
    conn: psycopg.Connection[tuple[object, ...]],
) -> dict[str, str]:
    """The server's values of :data:`DURABILITY_SETTINGS` (``SHOW name``)."""
    values = {}
    for name in DURABILITY_SETTINGS:
        row = conn.execute(
            psycopg.sql.SQL("SHOW {} " + _OWN).format(psycopg.sql.Identifier(name))
        ).fetchone()
        values[name] = str(row[0]) if row else "?"
    return values


def describe_durability(durability: dict[str, str]) -> str:
    """``durable (fsync=on, ...)``, or ``NOT durable (fsync=off, ...)``.

    Durable: a commit that returned survives a crash of the server and of
    the machine (``fsync`` and ``full_page_writes`` on, ``synchronous_commit``
    anything but off).
    """
    values = ", ".join(f"{name}={value}" for name, value in durability.items())
    durable = (
        durability.get("fsync") == "on"
        and durability.get("full_page_writes") == "on"
        and durability.get("synchronous_commit", "off") != "off"
    )
    return f"{'durable' if durable else 'NOT durable'} ({values})"


@contextlib.contextmanager
def postgres_server(*, durable: bool = True) -> Iterator[PostgresServer]:
    """The server to benchmark on: ``POSTGRES_HOST``'s, or a throwaway one.

    ``durable`` chooses the throwaway server's settings
    (``TemporaryPostgres(durable=...)``); a ``POSTGRES_HOST`` server is used
    as it is configured.
    """
    if os.environ.get("POSTGRES_HOST"):
        settings = {
            "POSTGRES_HOST": os.environ["POSTGRES_HOST"],
            "POSTGRES_PORT": os.environ.get("POSTGRES_PORT", "5432"),
            "POSTGRES_USER": os.environ.get("POSTGRES_USER", "eventsourcing"),
            "POSTGRES_PASSWORD": os.environ.get("POSTGRES_PASSWORD", "eventsourcing"),
            "POSTGRES_DBNAME": os.environ.get("POSTGRES_DBNAME", "eventsourcing"),
        }
        log(f"postgres: using POSTGRES_HOST={settings['POSTGRES_HOST']}")
        server = PostgresServer(settings=settings, started_here=False)
        try:
            server.prepare()
            log(f"postgres: {server.version}, {describe_durability(server.durability)}")
            yield server
        finally:
            server.close()
        return
    log(f"postgres: starting a temporary server ({'durable' if durable else 'fast'})")
    with TemporaryPostgres(
        durable=durable,
        settings={
            "shared_preload_libraries": "pg_stat_statements",
            "pg_stat_statements.track": "top",
            "max_connections": "300",
        },
    ) as pg:
        server = PostgresServer(settings=pg.env(), started_here=True)
        try:
            server.prepare()
            log(
                f"postgres: {server.version} on port {pg.port}, "
                f"{describe_durability(server.durability)}"
            )
            yield server
        finally:
            server.close()
