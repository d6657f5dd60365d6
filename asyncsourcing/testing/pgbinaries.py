"""The PostgreSQL server programs, and the account that runs them.

:func:`find_postgres_binaries` finds ``initdb``, ``pg_ctl`` and ``postgres``
on ``PATH`` or where Debian installs them. PostgreSQL refuses to run as
root: :func:`pick_run_as` chooses the unprivileged account that runs them
when this process is root (as in CI containers).
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DEBIAN_BIN_GLOB",
    "PostgresBinaries",
    "RunAs",
    "find_postgres_binaries",
    "pick_run_as",
    "traversable_by_others",
]

#: Where Debian (and Ubuntu) install the server binaries, one folder per major
#: version; they are not on PATH there.
DEBIAN_BIN_GLOB = "/usr/lib/postgresql/*/bin"

_REQUIRED = ("initdb", "pg_ctl", "postgres")
_INSTALL_HINT = (
    "install Debian's `postgresql` package (`apt-get install postgresql`), "
    "or put the PostgreSQL server binaries on PATH"
)


@dataclass(frozen=True)
class PostgresBinaries:
    """Paths of the PostgreSQL server programs.

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


@dataclass(frozen=True)
class RunAs:
    """The unprivileged account that runs the server when we are root."""

    name: str
    uid: int
    gid: int


def pick_run_as(requested: str | None) -> RunAs | None:
    """Choose the account that runs the server binaries, or None for ourselves.

    PostgreSQL refuses to run with an effective uid of 0, so as root we need
    another account; subprocess's ``user=``/``group=`` switches to it without
    su/sudo (which may be missing or prompt).

    :param requested: the account's name; by default, as root, ``postgres``
        if it exists, else ``nobody``.
    :raises RuntimeError: if the account is root, or none exists.
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
        return RunAs(name=name, uid=entry.pw_uid, gid=entry.pw_gid)
    raise RuntimeError(
        "running as root, but none of the accounts "
        f"{', '.join(map(repr, names))} exists to run PostgreSQL as "
        "(PostgreSQL refuses to run as root)"
    )


def traversable_by_others(directory: Path) -> bool:
    """Whether every folder from ``/`` down to ``directory`` has o+x.

    The unprivileged server account must be able to reach its temporary
    directory; e.g. a TMPDIR under /root would not do.
    """
    directory = directory.resolve()
    for folder in (directory, *directory.parents):
        if not folder.stat().st_mode & stat.S_IXOTH:
            return False
    return True
