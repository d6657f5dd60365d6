"""The server programs run on one throwaway PostgreSQL cluster.

A :class:`PostgresCluster` is a temporary directory that holds the data
directory, the server's log and its Unix socket, owned by the account that
runs the programs (:func:`~asyncsourcing.testing.pgbinaries.pick_run_as`).
Its methods run ``initdb``, ``postgres --single`` and ``pg_ctl`` as that
account; :class:`~asyncsourcing.testing.pgserver.TemporaryPostgres` decides
what runs when.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from asyncsourcing.testing.pgbinaries import traversable_by_others

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Self

    from asyncsourcing.testing.pgbinaries import PostgresBinaries, RunAs

__all__ = ["PostgresCluster", "free_port"]

# Generous bound on each server-side command, so that a wedged initdb or
# pg_ctl fails the run instead of hanging it.
_COMMAND_TIMEOUT = 120.0
_SETTINGS_FILE = "asyncsourcing.conf"


def free_port(host: str) -> int:
    """Return a TCP port of ``host`` that is free right now (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _conf_value(value: str) -> str:
    """Quote a postgresql.conf value (quoting is valid for every setting type)."""
    return "'" + value.replace("'", "''") + "'"


class PostgresCluster:
    """A cluster in ``directory``, whose programs run as ``run_as``.

    :param binaries: the server programs.
    :param directory: the temporary directory, owned by ``run_as``.
    :param run_as: the account that runs the programs; None: this process's.
    """

    def __init__(
        self, binaries: PostgresBinaries, directory: Path, run_as: RunAs | None
    ) -> None:
        self.binaries = binaries
        self.directory = directory
        self.run_as = run_as

    @classmethod
    def create(cls, binaries: PostgresBinaries, run_as: RunAs | None) -> Self:
        """A cluster, not initialised yet, in a new temporary directory."""
        base = Path(tempfile.gettempdir())
        if run_as is not None and not traversable_by_others(base):
            # Another account must reach the directory: fall back to /tmp,
            # which is world-traversable on any sane system.
            base = Path("/tmp")
        # A short prefix: the Unix socket's path must stay under ~107 bytes.
        directory = Path(tempfile.mkdtemp(prefix="aspg-", dir=base))
        if run_as is not None:
            os.chown(directory, run_as.uid, run_as.gid)
        return cls(binaries, directory, run_as)

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory (PGDATA)."""
        return self.directory / "data"

    @property
    def log_path(self) -> Path:
        """The server's log file."""
        return self.directory / "postgres.log"

    @property
    def pid_file(self) -> Path:
        """The postmaster's pid file: it exists while the server runs."""
        return self.data_dir / "postmaster.pid"

    def initdb(self, *, user: str, password: str, durable: bool) -> None:
        """Create the cluster, with the superuser ``user``.

        Its postgresql.conf includes the file :meth:`write_settings` writes,
        which must be written before the server first starts.

        :param durable: false to skip flushing the new cluster to disk.
        """
        # SCRAM is the modern default, but the password is only stored as a
        # SCRAM verifier from version 14 on (password_encryption's default);
        # before that, md5 is the method that can check the stored password.
        major = self._server_major_version()
        host_auth = "scram-sha-256" if major >= 14 else "md5"
        pwfile = self.directory / "pwfile"
        self._write_owned(pwfile, password + "\n")
        try:
            self._run(
                [
                    self.binaries.initdb,
                    "--pgdata", self.data_dir,
                    "--username", user,
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
                    *([] if durable else ["--no-sync"]),
                ],
                what="initdb",
            )  # fmt: skip
        finally:
            pwfile.unlink(missing_ok=True)
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(f"\ninclude '{_SETTINGS_FILE}'\n")

    def write_settings(self, settings: Mapping[str, str]) -> None:
        """Write server settings to the file included by postgresql.conf.

        In a file rather than on pg_ctl's command line, so that a restart by
        anyone (``pg_ctl restart`` included) keeps them. The Unix socket is
        put in :attr:`directory`.
        """
        settings = {**settings, "unix_socket_directories": str(self.directory)}
        lines = [f"{name} = {_conf_value(value)}" for name, value in settings.items()]
        text = "# Written by asyncsourcing.testing.pgserver\n" + "\n".join(lines)
        self._write_owned(self.data_dir / _SETTINGS_FILE, text + "\n")

    def create_database(self, dbname: str, *, owner: str) -> None:
        """Create the database ``dbname``, the server being stopped."""
        # Created in single-user mode, before the server starts: this needs
        # no client program (psql/createdb) nor an event loop for asyncpg,
        # and the database exists by the time anyone can connect.
        statement = (
            f'CREATE DATABASE "{dbname.replace(chr(34), chr(34) * 2)}" '
            f'OWNER "{owner.replace(chr(34), chr(34) * 2)}"\n'
        )
        output = self._run(
            [
                self.binaries.postgres,
                "--single",
                "-D", self.data_dir,
                # Exit non-zero on an SQL error instead of printing it only.
                "-c", "exit_on_error=on",
                "postgres",
            ],
            input_text=statement,
            what=f"creating database {dbname!r}",
        )  # fmt: skip
        if "ERROR" in output:
            raise RuntimeError(f"creating database {dbname!r} failed:\n{output}")

    def pg_ctl(self, action: str, *args: str, timeout: float) -> None:
        """Run ``pg_ctl action *args``, waiting up to ``timeout`` seconds."""
        self._run(
            [
                self.binaries.pg_ctl,
                action,
                "-D", self.data_dir,
                "-l", self.log_path,
                # -w waits until the postmaster reports it accepts connections.
                "-w",
                "-t", str(max(1, round(timeout))),
                *args,
            ],
            what=f"pg_ctl {action}",
        )  # fmt: skip

    def stop(self) -> None:
        """Stop the server at once, if it runs.

        Uses ``pg_ctl stop -m immediate`` (there is nothing to save), and
        signals the postmaster directly if that fails, so that no server
        outlives its deleted directory.
        """
        if not self.pid_file.exists():
            return
        try:
            self._run(
                [self.binaries.pg_ctl, "stop", "-D", self.data_dir,
                 "-m", "immediate", "-w", "-t", "30"],
                what="pg_ctl stop",
            )  # fmt: skip
        except RuntimeError:
            # SIGQUIT is the postmaster's own "immediate shutdown" signal.
            with contextlib.suppress(OSError, ValueError, IndexError):
                pid = int(self.pid_file.read_text().splitlines()[0])
                os.kill(pid, signal.SIGQUIT)
                for _ in range(100):
                    os.kill(pid, 0)  # raises once the process is gone
                    time.sleep(0.05)
                os.kill(pid, signal.SIGKILL)

    def log_tail(self, lines: int = 30) -> str:
        """The server log's last lines, formatted for an error message."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        tail = "\n".join(text.splitlines()[-lines:])
        return f"\n--- last lines of {self.log_path} ---\n{tail}" if tail else ""

    def _write_owned(self, path: Path, text: str) -> None:
        """Write a file that the server account can read (and only it)."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(text)
        if self.run_as is not None:
            os.chown(path, self.run_as.uid, self.run_as.gid)

    def _env(self) -> dict[str, str]:
        # Drop PG* variables (PGDATA, PGPORT, PGHOST, ...): they would steer
        # the programs to a different cluster than the one we pass explicitly.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        if self.run_as is not None:
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
        run_as = self.run_as
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
                f"{what} timed out after {_COMMAND_TIMEOUT:.0f} s{self.log_tail()}"
            ) from error
        output = (result.stdout or "") + (result.stderr or "")
        if result.returncode != 0:
            raise RuntimeError(
                f"{what} failed (exit code {result.returncode}):\n"
                f"{output.strip()}{self.log_tail()}"
            )
        return output

    def _server_major_version(self) -> int:
        output = self._run(
            [self.binaries.postgres, "--version"], what="postgres --version"
        )
        match = re.search(r"(\d+)(?:\.\d+)?", output)
        return int(match.group(1)) if match else 0
