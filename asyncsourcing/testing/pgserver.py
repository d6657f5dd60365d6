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
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import quote

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from types import TracebackType
    from typing import Self

__all__ = [
    "DEFAULT_SETTINGS",
    "DURABLE_SETTINGS",
    "FAST_SETTINGS",
    "PostgresBinaries",
    "TemporaryPostgres",
    "find_postgres_binaries",
]

#: Where Debian (and Ubuntu) install the server binaries, one folder per major
#: version; they are not on PATH there.
DEBIAN_BIN_GLOB = "/usr/lib/postgresql/*/bin"

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

_REQUIRED = ("initdb", "pg_ctl", "postgres")
_INSTALL_HINT = (
    "install Debian's `postgresql` package (`apt-get install postgresql`), "
    "or put the PostgreSQL server binaries on PATH"
)
# Generous bound on each server-side command, so that a wedged initdb or
# pg_ctl fails the run instead of hanging it.
_COMMAND_TIMEOUT = 120.0
# A free port found by binding to port 0 may be taken by someone else before
# the server binds it: try a new one this many times.
_PORT_ATTEMPTS = 3


@dataclass(frozen=True)
class PostgresBinaries:
    """Paths of the PostgreSQL server programs used by :class:`TemporaryPostgres`.

    All three are taken from one folder where possible, because ``pg_ctl`` and
    ``initdb`` run the ``postgres`` binary found beside themselves.
    """

    initdb: Path
    pg_ctl: Path
    postgres: Path


def _version_key(path: Path) -> tuple[int, ...]:
    """Sort key for ``/usr/lib/postgresql/<version>/bin``: numeric, then others."""
    parts = re.findall(r"\d+", path.parent.name)
    return tuple(int(part) for part in parts) if parts else (-1,)


def find_postgres_binaries(
    path: str | None = None,
    bin_glob: str = DEBIAN_BIN_GLOB,
) -> PostgresBinaries:
    """Find ``initdb``, ``pg_ctl`` and ``postgres``.

    Looks on ``path`` (the ``PATH`` environment variable by default) first, and
    otherwise in the newest version's folder matching ``bin_glob``.

    :raises RuntimeError: if no location has all three programs; the message
        names the missing ones and says how to install them.
    """
    on_path = {name: shutil.which(name, path=path) for name in _REQUIRED}
    if all(on_path.values()):
        # Resolve symlinks (e.g. /usr/local/bin/pg_ctl -> /usr/lib/...): it is
        # the real folder where pg_ctl and initdb look for `postgres`.
        found = {name: Path(str(p)).resolve() for name, p in on_path.items()}
        return PostgresBinaries(**found)

    root = Path(bin_glob).anchor or "/"
    candidates = sorted(
        Path(root).glob(str(Path(bin_glob).relative_to(root))),
        key=_version_key,
        reverse=True,
    )
    for bin_dir in candidates:
        programs = {name: bin_dir / name for name in _REQUIRED}
        if all(os.access(p, os.X_OK) for p in programs.values()):
            return PostgresBinaries(**programs)

    missing = ", ".join(name for name, p in on_path.items() if p is None)
    raise RuntimeError(
        f"PostgreSQL server programs not found: {missing} (looked on PATH and "
        f"in {bin_glob}); {_INSTALL_HINT}."
    )


def _free_port(host: str) -> int:
    """Return a TCP port of ``host`` that is free right now (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _conf_value(value: str) -> str:
    """Quote a postgresql.conf value (quoting is valid for every setting type)."""
    return "'" + value.replace("'", "''") + "'"


@dataclass(frozen=True)
class _RunAs:
    """The unprivileged account that runs the server when we are root."""

    name: str
    uid: int
    gid: int


def _pick_run_as(requested: str | None) -> _RunAs | None:
    """Choose the account that runs the server binaries, or None for ourselves.

    PostgreSQL refuses to run with an effective uid of 0, so as root we need
    another account; subprocess's ``user=``/``group=`` switches to it without
    su/sudo (which may be missing or prompt).
    """
    if requested is None and os.geteuid() != 0:
        return None
    names = [requested] if requested is not None else ["postgres", "nobody"]
    for name in names:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        if entry.pw_uid == 0:
            raise RuntimeError(f"cannot run PostgreSQL as {name!r}: it is root")
        return _RunAs(name=name, uid=entry.pw_uid, gid=entry.pw_gid)
    raise RuntimeError(
        "running as root, but none of the accounts "
        f"{', '.join(map(repr, names))} exists to run PostgreSQL as "
        "(PostgreSQL refuses to run as root)"
    )


def _traversable_by_others(directory: Path) -> bool:
    """Whether every folder from ``/`` down to ``directory`` has o+x.

    The unprivileged server account must be able to reach its temporary
    directory; e.g. a TMPDIR under /root would not do.
    """
    directory = directory.resolve()
    for folder in (directory, *directory.parents):
        if not folder.stat().st_mode & stat.S_IXOTH:
            return False
    return True


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
        self._run_as: _RunAs | None = None
        self._tmpdir: Path | None = None
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
        if self._tmpdir is None:
            raise RuntimeError("TemporaryPostgres is not started")
        return self._tmpdir

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory (PGDATA)."""
        return self.directory / "data"

    @property
    def log_path(self) -> Path:
        """The server's log file."""
        return self.directory / "postgres.log"

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
        return self._tmpdir is not None

    def start(self) -> Self:
        """Create the cluster and database and start the server.

        Returns once the server accepts TCP connections. Does nothing if the
        server is already started.

        :raises RuntimeError: if a program is missing or fails, or the server
            does not accept connections within ``startup_timeout`` seconds;
            the message includes the program's output or the log's tail.
        """
        if self._tmpdir is not None:
            return self
        binaries = self._binaries or find_postgres_binaries()
        self._binaries = binaries
        self._run_as = _pick_run_as(self._requested_run_as)
        self._tmpdir = self._make_tmpdir()
        # Registered before anything is started, so that an interrupt in the
        # middle of start() still stops whatever got started.
        atexit.register(self.stop)
        try:
            self._initdb(binaries)
            self._create_database(binaries)
            self._start_server(binaries)
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
        binaries = self._started_binaries()
        self._pg_ctl(binaries, "restart", "-m", mode)
        self._wait_for_tcp(time.monotonic() + self.startup_timeout)

    def stop(self) -> None:
        """Stop the server at once and delete the temporary directory.

        Idempotent. Uses ``pg_ctl stop -m immediate`` (there is nothing to
        save), and signals the postmaster directly if that fails, so that no
        server outlives its deleted directory.
        """
        tmpdir = self._tmpdir
        if tmpdir is None:
            return
        try:
            pid_file = self.data_dir / "postmaster.pid"
            if pid_file.exists() and self._binaries is not None:
                self._stop_server(self._binaries, pid_file)
        finally:
            self._tmpdir = None
            self._port = None
            atexit.unregister(self.stop)
            shutil.rmtree(tmpdir, ignore_errors=True)

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

    def _started_binaries(self) -> PostgresBinaries:
        if self._tmpdir is None or self._binaries is None:
            raise RuntimeError("TemporaryPostgres is not started")
        return self._binaries

    def _make_tmpdir(self) -> Path:
        base = Path(tempfile.gettempdir())
        if self._run_as is not None and not _traversable_by_others(base):
            # Another account must reach the directory: fall back to /tmp,
            # which is world-traversable on any sane system.
            base = Path("/tmp")
        # A short prefix: the Unix socket's path must stay under ~107 bytes.
        tmpdir = Path(tempfile.mkdtemp(prefix="aspg-", dir=base))
        if self._run_as is not None:
            os.chown(tmpdir, self._run_as.uid, self._run_as.gid)
        return tmpdir

    def _write_owned(self, path: Path, text: str) -> None:
        """Write a file that the server account can read (and only it)."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(text)
        if self._run_as is not None:
            os.chown(path, self._run_as.uid, self._run_as.gid)

    def _env(self) -> dict[str, str]:
        # Drop PG* variables (PGDATA, PGPORT, PGHOST, ...): they would steer
        # the programs to a different cluster than the one we pass explicitly.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        if self._run_as is not None:
            # Root's HOME is unreadable to the server account.
            env["HOME"] = str(self.directory)
        return env

    def _run(
        self,
        args: Sequence[str | Path],
        *,
        input_text: str | None = None,
        what: str,
    ) -> str:
        """Run a server program as the server account; return its output.

        :raises RuntimeError: if it exits non-zero, with its output and the
            server log's tail.
        """
        run_as = self._run_as
        try:
            result = subprocess.run(
                [str(arg) for arg in args],
                input=input_text,
                stdin=None if input_text is not None else subprocess.DEVNULL,
                capture_output=True,
                text=True,
                check=False,
                timeout=_COMMAND_TIMEOUT,
                cwd=self.directory,  # root's cwd may be unreadable to run_as
                env=self._env(),
                user=run_as.uid if run_as else None,
                group=run_as.gid if run_as else None,
                # Drop root's supplementary groups too, not only the uid/gid.
                extra_groups=[] if run_as else None,
            )
        except subprocess.TimeoutExpired as error:
            raise RuntimeError(
                f"{what} timed out after {_COMMAND_TIMEOUT:.0f} s{self._log_tail()}"
            ) from error
        output = (result.stdout or "") + (result.stderr or "")
        if result.returncode != 0:
            raise RuntimeError(
                f"{what} failed (exit code {result.returncode}):\n"
                f"{output.strip()}{self._log_tail()}"
            )
        return output

    def _log_tail(self, lines: int = 30) -> str:
        """The server log's last lines, formatted for an error message."""
        try:
            text = self.log_path.read_text(errors="replace")
        except (OSError, RuntimeError):
            return ""
        tail = "\n".join(text.splitlines()[-lines:])
        return f"\n--- last lines of {self.log_path} ---\n{tail}" if tail else ""

    def _server_major_version(self, binaries: PostgresBinaries) -> int:
        output = self._run([binaries.postgres, "--version"], what="postgres --version")
        match = re.search(r"(\d+)(?:\.\d+)?", output)
        return int(match.group(1)) if match else 0

    def _initdb(self, binaries: PostgresBinaries) -> None:
        # SCRAM is the modern default, but the password is only stored as a
        # SCRAM verifier from version 14 on (password_encryption's default);
        # before that, md5 is the method that can check the stored password.
        major = self._server_major_version(binaries)
        host_auth = "scram-sha-256" if major >= 14 else "md5"
        pwfile = self.directory / "pwfile"
        self._write_owned(pwfile, self.password + "\n")
        try:
            self._run(
                [
                    binaries.initdb,
                    "--pgdata", self.data_dir,
                    "--username", self.user,
                    f"--pwfile={pwfile}",
                    f"--auth-host={host_auth}",
                    # The socket sits in a 0700 directory of the server
                    # account, so only it (and root) can reach it anyway.
                    "--auth-local=trust",
                    # Locale-independent: the machine's LANG may name a
                    # locale that is not installed, which fails initdb.
                    "--no-locale",
                    "--encoding=UTF8",
                    # Skip fsyncing the new cluster when durability is
                    # traded for speed anyway: saves about a second.
                    *([] if self.durable else ["--no-sync"]),
                ],
                what="initdb",
            )  # fmt: skip
        finally:
            pwfile.unlink(missing_ok=True)
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\ninclude 'asyncsourcing.conf'\n")
        # The included file must exist for any start, even single-user mode;
        # the port is chosen again right before the server starts.
        self._write_settings(_free_port(self.host))

    def _write_settings(self, port: int) -> None:
        """Write our settings to a file included by postgresql.conf.

        In a file rather than on pg_ctl's command line, so that a restart by
        anyone (``pg_ctl restart`` or :meth:`restart`) keeps them.
        """
        settings = {
            **self._settings,
            "listen_addresses": self.host,
            "port": str(port),
            "unix_socket_directories": str(self.directory),
        }
        lines = [f"{name} = {_conf_value(value)}" for name, value in settings.items()]
        text = "# Written by asyncsourcing.testing.pgserver\n" + "\n".join(lines)
        self._write_owned(self.data_dir / "asyncsourcing.conf", text + "\n")

    def _create_database(self, binaries: PostgresBinaries) -> None:
        # Created in single-user mode, before the server starts: this needs
        # no client program (psql/createdb) nor an event loop for asyncpg,
        # and the database exists by the time anyone can connect.
        statement = (
            f'CREATE DATABASE "{self.dbname.replace(chr(34), chr(34) * 2)}" '
            f'OWNER "{self.user.replace(chr(34), chr(34) * 2)}"\n'
        )
        output = self._run(
            [
                binaries.postgres,
                "--single",
                "-D", self.data_dir,
                # Exit non-zero on an SQL error instead of printing it only.
                "-c", "exit_on_error=on",
                "postgres",
            ],
            input_text=statement,
            what=f"creating database {self.dbname!r}",
        )  # fmt: skip
        if "ERROR" in output:
            raise RuntimeError(f"creating database {self.dbname!r} failed:\n{output}")

    def _start_server(self, binaries: PostgresBinaries) -> None:
        deadline = time.monotonic() + self.startup_timeout
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            port = _free_port(self.host)
            self._write_settings(port)
            log_size = self.log_path.stat().st_size if self.log_path.exists() else 0
            try:
                self._pg_ctl(binaries, "start")
            except RuntimeError:
                # Another process may have taken the port between our probe
                # and the server's bind: retry with another, else give up.
                new_log = self.log_path.read_text(errors="replace")[log_size:]
                if attempt < _PORT_ATTEMPTS and "could not bind" in new_log:
                    continue
                raise
            self._port = port
            self._wait_for_tcp(deadline)
            return

    def _pg_ctl(self, binaries: PostgresBinaries, action: str, *args: str) -> None:
        self._run(
            [
                binaries.pg_ctl,
                action,
                "-D", self.data_dir,
                "-l", self.log_path,
                # -w waits until the postmaster reports it accepts connections.
                "-w",
                "-t", str(max(1, round(self.startup_timeout))),
                *args,
            ],
            what=f"pg_ctl {action}",
        )  # fmt: skip

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
                        f"({error}){self._log_tail()}"
                    ) from error
                time.sleep(0.05)

    def _stop_server(self, binaries: PostgresBinaries, pid_file: Path) -> None:
        try:
            self._run(
                [binaries.pg_ctl, "stop", "-D", self.data_dir, "-m", "immediate",
                 "-w", "-t", "30"],
                what="pg_ctl stop",
            )  # fmt: skip
        except RuntimeError:
            # Never leave a server running on a deleted directory: SIGQUIT is
            # the postmaster's own "immediate shutdown" signal.
            with contextlib.suppress(OSError, ValueError, IndexError):
                pid = int(pid_file.read_text().splitlines()[0])
                os.kill(pid, signal.SIGQUIT)
                for _ in range(100):
                    os.kill(pid, 0)  # raises once the process is gone
                    time.sleep(0.05)
                os.kill(pid, signal.SIGKILL)
