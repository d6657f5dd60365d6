"""What a scenario is, and the storage it runs on."""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from benchmarks.config import APP_NAME, PROJECTION_NAME, Profile
from benchmarks.results import Metric, Trial
from benchmarks.server import PostgresServer

__all__ = ["APP_NAME", "PROJECTION_NAME", "Context", "Scenario"]

#: Numbers the SQLite files of a run, so that no two trials share one.
_SQLITE_FILES = itertools.count()

_PERSISTENCE_MODULES = {
    ("eventsourcing", "popo"): "eventsourcing.popo",
    ("eventsourcing", "sqlite"): "eventsourcing.sqlite",
    ("eventsourcing", "postgres"): "eventsourcing.postgres",
    ("asyncsourcing", "popo"): "asyncsourcing.popo",
    ("asyncsourcing", "sqlite"): "asyncsourcing.sqlite",
    ("asyncsourcing", "postgres"): "asyncsourcing.postgres",
}


@dataclass
class Context:
    """The profile and the storage of one backend; :meth:`reset` before each trial.

    Every trial starts on empty storage: Postgres tables are dropped, SQLite
    gets a new database file (in ``workdir``, on the machine's disk).
    """

    profile: Profile
    backend: str
    workdir: Path
    server: PostgresServer | None = None
    sqlite_path: Path | None = None

    def reset(self) -> None:
        if self.backend == "postgres":
            assert self.server is not None
            self.server.drop_tables()
        elif self.backend == "sqlite":
            if self.sqlite_path is not None:
                # The previous trial's database, its WAL and shared memory.
                for path in self.workdir.glob(f"{self.sqlite_path.name}*"):
                    path.unlink()
            self.sqlite_path = self.workdir / f"bench-{next(_SQLITE_FILES)}.sqlite"

    def env(self, library: str, backend: str | None = None) -> dict[str, str]:
        """Settings for ``library`` on ``backend`` (default: this context's)."""
        backend = backend or self.backend
        env = {"PERSISTENCE_MODULE": _PERSISTENCE_MODULES[library, backend]}
        if backend == "sqlite":
            assert self.sqlite_path is not None, "reset() first"
            env["SQLITE_DBNAME"] = str(self.sqlite_path)
            # eventsourcing's default lock timeout is 5 s; with 16 writer
            # threads on one file it is not enough on a slow disk.
            env["SQLITE_LOCK_TIMEOUT"] = "60"
        elif backend == "postgres":
            assert self.server is not None
            env.update(self.server.env())
        return env


class Scenario(ABC):
    """A measurement made for both libraries on some backends.

    ``run_eventsourcing`` is plain blocking code, called when no event loop
    is running; ``run_asyncsourcing`` runs in a fresh ``asyncio.run()``.
    The two are never run at the same time.
    """

    name: ClassVar[str]
    title: ClassVar[str]
    description: ClassVar[str]
    backends: ClassVar[tuple[str, ...]] = ("popo", "sqlite", "postgres")

    @abstractmethod
    def metrics(self, ctx: Context) -> list[Metric]:
        """The rows this scenario adds to the table, in order."""

    def unsupported(self, library: str, backend: str) -> str | None:
        """Why ``library`` cannot run this scenario on ``backend``, if it can't."""
        return None

    def missing(self, library: str, ctx: Context, metric: Metric) -> str:
        """Why a metric has no value for ``library`` (when a trial left it out)."""
        return "not measured"

    def note(self, library: str, backend: str) -> str | None:
        """How this library's numbers were obtained, when it differs."""
        return None

    @abstractmethod
    def run_eventsourcing(self, ctx: Context) -> Trial: ...

    @abstractmethod
    async def run_asyncsourcing(self, ctx: Context) -> Trial: ...
