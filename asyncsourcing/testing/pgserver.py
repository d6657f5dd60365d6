"""A throwaway PostgreSQL server for test suites and benchmarks.

:class:`TemporaryPostgres` runs ``initdb`` into a fresh temporary directory,
starts a server on a free TCP port of 127.0.0.1, creates one database owned by
a password-protected superuser, and removes everything again on :meth:`stop`.

By default the server is as durable as a production server
(:data:`DURABLE_SETTINGS`: ``fsync``, ``synchronous_commit`` and
``full_page_writes`` on), so that a test that crashes it
(:meth:`TemporaryPostgres.restart` with ``mode="immediate"``) sees what a
crash of a real server does. ``TemporaryPostgres(durable=False)`` trades
durability for speed (:data:`FAST_SETTINGS`); its docstring says exactly what
each setting loses.

Usage::

    with TemporaryPostgres() as pg:
        os.environ.update(pg.env())
        ...

PostgreSQL refuses to run as root. When this process is root (as in CI
containers), the server binaries are run as an unprivileged system user
(``postgres`` if it exists, otherwise ``nobody``) that owns the temporary
directory.

The programs and that account are found by
:mod:`asyncsourcing.testing.pgbinaries`, and run on the temporary directory
by :mod:`asyncsourcing.testing.pgcluster`.
"""

from __future__ import annotations

import atexit
import shutil
import socket
import time
from typing import TYPE_CHECKING, Literal
from urllib.parse import quote

from asyncsourcing.testing.pgbinaries import (
    DEBIAN_BIN_GLOB,
    PostgresBinaries,
    find_postgres_binaries,
    pick_run_as,
)
from asyncsourcing.testing.pgcluster import PostgresCluster, free_port

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path
    from types import TracebackType
    from typing import Self

__all__ = [
    "DEBIAN_BIN_GLOB",
    "DEFAULT_SETTINGS",
    "DURABLE_SETTINGS",
    "FAST_SETTINGS",
    "PostgresBinaries",
    "TemporaryPostgres",
    "find_postgres_binaries",
]

#: Server settings of every :class:`TemporaryPostgres`, whatever its
#: durability.
DEFAULT_SETTINGS: dict[str, str] = {
    "max_connections": "200",
    "shared_buffers": "128MB",
}

#: The durability settings of ``TemporaryPostgres(durable=True)``, the
#: default: PostgreSQL's own defaults, written out so that no configuration
#: of the machine changes them. A commit returns once its WAL is on disk.
DURABLE_SETTINGS: dict[str, str] = {
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
}

#: The durability settings of ``TemporaryPostgres(durable=False)``: faster
#: commits, and what each loses (see :class:`TemporaryPostgres`).
FAST_SETTINGS: dict[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}

# A free port found by binding to port 0 may be taken by someone else before
# the server binds it: try a new one this many times.
_PORT_ATTEMPTS = 3


class TemporaryPostgres:
    """A PostgreSQL server in a temporary directory, for tests and benchmarks.

    :meth:`start` creates the cluster with a superuser ``user``/``password``
    and a database ``dbname`` owned by it, and starts the server listening on
    127.0.0.1 only (plus a Unix socket inside the temporary directory) on a
    free port. Clients authenticate with the password over TCP.
    :meth:`stop` shuts it down immediately and deletes the directory; it is
    idempotent and also runs at interpreter exit if the caller never gets to
    call it.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.

    Durability: by default (``durable=True``) the server runs with
    :data:`DURABLE_SETTINGS`, and a commit that returned survives a crash of
    the server (an immediate :meth:`restart`, a killed postmaster) and of the
    machine, as on a production server with PostgreSQL's defaults.
    ``durable=False`` runs it with :data:`FAST_SETTINGS` instead, which lose:

    * ``synchronous_commit=off``: a commit returns before its WAL is flushed,
      so a crash of the *server* (an immediate :meth:`restart` included), not
      only of the machine, loses the transactions committed in its last
      moments (up to three times ``wal_writer_delay``, 0.6 s by default),
      although their clients were told they committed. The database stays
      consistent: the lost transactions are lost whole.
    * ``fsync=off``: nothing is forced to disk. A crash of the server loses
      nothing more (the operating system still has the writes), but a crash
      of the operating system or machine, or a power loss, may lose any
      data, committed long before, and leave the cluster corrupt beyond
      recovery.
    * ``full_page_writes=off``: a page only partly written when the operating
      system or machine crashes cannot be repaired from the WAL: silent
      corruption after such a crash (not after a crash of the server alone).

    The fast server's cluster is also created without being flushed to disk
    (``initdb --no-sync``), which only a crash of the machine soon after
    :meth:`start` can hurt. For data that is thrown away when the process
    ends, only the first item matters: a test that crashes the server and
    counts on acknowledged commits needs the durable default.

    :param user: name of the superuser created by ``initdb``.
    :param password: that superuser's password.
    :param dbname: name of the database created for the tests.
    :param durable: :data:`DURABLE_SETTINGS` (true, the default) or
        :data:`FAST_SETTINGS` (false), as described above.
    :param settings: server settings added to (and overriding)
        :data:`DEFAULT_SETTINGS` and the durability settings, e.g.
        ``{"log_statement": "all"}``.
    :param run_as: account that runs the server; by default ourselves, or, as
        root, ``postgres`` or else ``nobody``.
    :param startup_timeout: seconds to wait for the server to accept
        connections after each start or restart.
    :param binaries: the programs to use; found by
        :func:`find_postgres_binaries` by default.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        *,
        user: str = "eventsourcing",
        password: str = "eventsourcing",
        dbname: str = "eventsourcing",
        durable: bool = True,
        settings: Mapping[str, str] | None = None,
        run_as: str | None = None,
        startup_timeout: float = 30.0,
        binaries: PostgresBinaries | None = None,
    ) -> None:
        self.user = user
        self.password = password
        self.dbname = dbname
        self.startup_timeout = startup_timeout
        self.durable = durable
        durability = DURABLE_SETTINGS if durable else FAST_SETTINGS
        self._settings = {**DEFAULT_SETTINGS, **durability, **(settings or {})}
        self._requested_run_as = run_as
        self._binaries = binaries
        self._cluster: PostgresCluster | None = None
        self._port: int | None = None

    # -- public API ---------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port the server listens on (fixed from :meth:`start` on)."""
        if self._port is None:
            raise RuntimeError("TemporaryPostgres is not started")
        return self._port

    @property
    def directory(self) -> Path:
        """The temporary directory holding the data, socket and log."""
        return self._started().directory

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory (PGDATA)."""
        return self._started().data_dir

    @property
    def log_path(self) -> Path:
        """The server's log file."""
        return self._started().log_path

    @property
    def dsn(self) -> str:
        """A ``postgresql://`` URL for the superuser and the test database."""
        user = quote(self.user, safe="")
        password = quote(self.password, safe="")
        dbname = quote(self.dbname, safe="")
        return f"postgresql://{user}:{password}@{self.host}:{self.port}/{dbname}"

    def env(self) -> dict[str, str]:
        """The ``POSTGRES_*`` settings read by eventsourcing and our tests."""
        return {
            "POSTGRES_HOST": self.host,
            "POSTGRES_PORT": str(self.port),
            "POSTGRES_USER": self.user,
            "POSTGRES_PASSWORD": self.password,
            "POSTGRES_DBNAME": self.dbname,
        }

    @property
    def running(self) -> bool:
        """Whether :meth:`start` has run and :meth:`stop` has not."""
        return self._cluster is not None

    def start(self) -> Self:
        """Create the cluster and database and start the server.

        Returns once the server accepts TCP connections. Does nothing if the
        server is already started.

        :raises RuntimeError: if a program is missing or fails, or the server
            does not accept connections within ``startup_timeout`` seconds;
            the message includes the program's output or the log's tail.
        """
        if self._cluster is not None:
            return self
        binaries = self._binaries or find_postgres_binaries()
        self._binaries = binaries
        run_as = pick_run_as(self._requested_run_as)
        cluster = self._cluster = PostgresCluster.create(binaries, run_as)
        # Registered before anything is started, so that an interrupt in the
        # middle of start() still stops whatever got started.
        atexit.register(self.stop)
        try:
            cluster.initdb(user=self.user, password=self.password, durable=self.durable)
            # The included file must exist for any start, even single-user
            # mode; the port is chosen again right before the server starts.
            self._write_settings(free_port(self.host))
            cluster.create_database(self.dbname, owner=self.user)
            self._start_server(cluster)
        except BaseException:
            self.stop()
            raise
        return self

    def restart(self, mode: Literal["fast", "immediate"] = "fast") -> None:
        """Restart the server, keeping its data directory and port.

        Clients' connections are dropped; new ones are accepted when this
        returns.

        :param mode: ``pg_ctl`` shutdown mode: ``"fast"`` (clean shutdown
            that disconnects clients) or ``"immediate"`` (like a crash: the
            server recovers from its WAL on start). A durable server (the
            default) keeps every commit that returned; with
            ``durable=False`` an immediate restart may lose the last
            fraction of a second of commits, as a real crash would with
            ``synchronous_commit=off``.
        """
        self._started().pg_ctl("restart", "-m", mode, timeout=self.startup_timeout)
        self._wait_for_tcp(time.monotonic() + self.startup_timeout)

    def stop(self) -> None:
        """Stop the server at once and delete the temporary directory.

        Idempotent. Uses ``pg_ctl stop -m immediate`` (there is nothing to
        save), and signals the postmaster directly if that fails, so that no
        server outlives its deleted directory.
        """
        cluster = self._cluster
        if cluster is None:
            return
        try:
            cluster.stop()
        finally:
            self._cluster = None
            self._port = None
            atexit.unregister(self.stop)
            shutil.rmtree(cluster.directory, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def settings(self) -> dict[str, str]:
        """The server settings it runs with (besides address, port and socket)."""
        return dict(self._settings)

    def __repr__(self) -> str:
        where = f"{self.host}:{self._port}" if self._port else "not started"
        durability = "durable" if self.durable else "fast"
        return f"<{type(self).__name__} {where} {durability}>"

    # -- internals ----------------------------------------------------------

    def _started(self) -> PostgresCluster:
        if self._cluster is None:
            raise RuntimeError("TemporaryPostgres is not started")
        return self._cluster

    def _write_settings(self, port: int) -> None:
        self._started().write_settings(
            {**self._settings, "listen_addresses": self.host, "port": str(port)}
        )

    def _start_server(self, cluster: PostgresCluster) -> None:
        deadline = time.monotonic() + self.startup_timeout
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            port = free_port(self.host)
            self._write_settings(port)
            log_path = cluster.log_path
            log_size = log_path.stat().st_size if log_path.exists() else 0
            try:
                cluster.pg_ctl("start", timeout=self.startup_timeout)
            except RuntimeError:
                # Another process may have taken the port between our probe
                # and the server's bind: retry with another, else give up.
                new_log = log_path.read_text(errors="replace")[log_size:]
                if attempt < _PORT_ATTEMPTS and "could not bind" in new_log:
                    continue
                raise
            self._port = port
            self._wait_for_tcp(deadline)
            return

    def _wait_for_tcp(self, deadline: float) -> None:
        """Wait until 127.0.0.1:port accepts TCP connections.

        ``pg_ctl -w`` already waited for the postmaster to be ready; this
        double-checks the address clients will use, bounded by ``deadline``.
        """
        while True:
            try:
                with socket.create_connection((self.host, self.port), timeout=1.0):
                    return
            except OSError as error:
                if time.monotonic() >= deadline:
                    raise RuntimeError(
                        f"PostgreSQL did not accept connections on "
                        f"{self.host}:{self.port} within {self.startup_timeout} s "
                        f"({error}){self._started().log_tail()}"
                    ) from error
                time.sleep(0.05)
