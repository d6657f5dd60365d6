"""The versions of projections: which exist, which one readers are served.

A projection's ``version`` (default 1) is part of its identity: version 1's
tables keep the projection's name (``dogcounters_tracking``), version ``n``
has ``dogcounters_v<n>_tracking`` and view tables named alike, and a lease
of its own, so a new version builds beside the one that serves.

The source of truth is a row per version in ``asyncsourcing_versions``,
beside the views' tables: its status (:class:`VersionStatus`), the
application it follows, and its replay mark. At most one version of a
projection serves; the first version run serves at once, later ones build
until :meth:`Versions.switch` makes one serve, in one transaction.

Replay: a version that does not serve replays every event it processes (the
serving version does the side effects). The switch records, as the new
version's mark, the position the old version had processed by then (read
under the same lock), and a reset records the position reached before it:
an event at or before the mark is a replay. See
:mod:`asyncsourcing.projection.replay`.

Locking: a building version's view transactions read its row ``FOR SHARE``
(PostgreSQL) or under the file's write lock (SQLite), and the switch takes
the rows ``FOR UPDATE``: a batch that committed as a replay is inside the
mark, and one that starts after the switch sees it.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from asyncsourcing.persistence import PersistenceError

__all__ = [
    "VersionError",
    "VersionRecord",
    "VersionStatus",
    "Versions",
    "find_version",
    "versioned_name",
]


def versioned_name(name: str, version: int) -> str:
    """The name of the tables, lease and settings of ``version`` of the
    projection ``name``: ``name`` itself for version 1, so that the tables
    of projections that had no version keep theirs."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        msg = f"A projection's version must be an int >= 1, not {version!r}"
        raise ValueError(msg)
    return name if version == 1 else f"{name}_v{version}"


class VersionStatus(enum.StrEnum):
    """Where a version of a projection stands."""

    BUILDING = "building"
    """Processing events beside the serving version; everything it
    processes is a replay."""

    SERVING = "serving"
    """The version readers are given (at most one per projection)."""

    RETIRED = "retired"
    """Served once; kept until dropped (``asyncsourcing reset``)."""


@dataclass(frozen=True)
class VersionRecord:
    """A version of a projection, as ``asyncsourcing_versions`` records it."""

    projection_name: str
    version: int
    status: VersionStatus
    application_name: str
    replay_until: int | None
    """Events at or before this position are replays (see the module)."""
    created_at: datetime
    switched_at: datetime | None
    """When it last started or stopped serving."""

    def is_replay(self, position: int) -> bool:
        """Whether the event at ``position`` is a replay for this version."""
        if self.status is not VersionStatus.SERVING:
            return True
        return self.replay_until is not None and position <= self.replay_until


class VersionError(PersistenceError):
    """A version that does not exist, or an operation that would leave the
    projection without a serving version while readers depend on it."""


def find_version(
    records: list[VersionRecord], projection_name: str, version: int
) -> VersionRecord:
    """The record of ``version`` among ``records``; :class:`VersionError`
    naming the projection and the version if it is not there."""
    for record in records:
        if record.version == version:
            return record
    msg = f"Projection {projection_name!r} has no version {version}"
    raise VersionError(msg)


ReadPositions = Callable[[Any], Awaitable[int | None]]
"""Reads a position with the connection of the transaction it is given."""


class Versions(ABC):
    """The ``asyncsourcing_versions`` table of a database."""

    table_name = "asyncsourcing_versions"

    @abstractmethod
    async def create_table(self) -> None:
        """Create the table unless it exists."""

    @abstractmethod
    async def register(
        self, projection_name: str, version: int, application_name: str
    ) -> VersionRecord:
        """The record of ``version``, made if new: serving if the projection
        has no version yet, else building."""

    @abstractmethod
    async def records(self, projection_name: str) -> list[VersionRecord]:
        """Every version of the projection, by version."""

    @abstractmethod
    async def read_locked(
        self, projection_name: str, version: int
    ) -> VersionRecord | None:
        """The record of ``version``, read in the current task's write
        transaction so that a switch waits for the transaction to end."""

    @abstractmethod
    async def switch(
        self, projection_name: str, version: int, old_position: ReadPositions
    ) -> VersionRecord:
        """Make ``version`` serve, in one transaction: the serving one
        retires, and ``version``'s replay mark becomes the greater of its
        own and what ``old_position`` reads (the old version's position,
        with the transaction's connection). Raises :class:`VersionError` if
        ``version`` does not exist."""

    @abstractmethod
    async def mark_replay(
        self, projection_name: str, version: int, position: int | None
    ) -> None:
        """Raise ``version``'s replay mark to ``position`` (a reset's)."""

    @abstractmethod
    async def forget(self, projection_name: str, version: int) -> None:
        """Delete the record of ``version``."""

    @staticmethod
    def greater(a: int | None, b: int | None) -> int | None:
        """The greater of two marks, either of which may be None."""
        if a is None:
            return b
        return a if b is None else max(a, b)
