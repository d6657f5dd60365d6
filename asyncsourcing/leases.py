"""Leases: which runner of a projection processes, and which stand by.

Replicas of a service each run the projection; one of them (the leader)
processes, the others stand by. The source of truth is a lease row per
projection (application name and projection name) in a table of its own,
``asyncsourcing_leases``, beside the view's tables: its owner, its epoch
(incremented at every change of owner) and its expiry, from the database's
clock. The leader renews it at a fraction of its time to live; a leader that
cannot renew it before it expires stops processing at once.

Fencing: every view transaction of the leader locks the row (``FOR SHARE``)
and checks its epoch, raising :class:`FencedError` if another runner has
taken over; a takeover waits for the leader's transactions in flight. So a
paused or cut-off former leader never commits after a takeover.

Fast path (PostgreSQL): the leader also holds a session advisory lock on a
connection of its own, and records that connection's process id in the
lease. Standbys block on the same lock: when the leader's session ends (a
crash, a stop), one of them gets the lock at once, and takes the lease over
without waiting for it to expire, since its owner's session is gone. So
that the leader is the lock's holder whenever one is alive, a runner
without the lock takes an expired lease only a time to live after it
expired (a released lease expires when it is released), and leaves the
first row to the lock's holder; a leader without the lock (after a
paused leader's lease expired) is taken over at its expiry.
Poolers that do not keep sessions (PgBouncer in transaction mode, RDS Proxy)
break this: turn it off (``LEASE_FAST_TAKEOVER=false``), and takeover then
waits for the lease to expire (at most its time to live).

Fast path (SQLite): the file is shared by processes of one host, so a
standby asks the operating system whether the owner's process (named in
the owner's id, :func:`new_owner_id`) still runs, and takes over at once
if it has exited. A process id reused meanwhile only delays the takeover
until expiry; a standby mistaken about another host (containers given one
hostname) takes over early, and fencing still keeps the former leader from
committing.

Presence: besides the lease, each runner records its role in
``asyncsourcing_runners`` every renewal, with an expiry, and deletes its row
when it stops, so that ``asyncsourcing status`` can name the standbys too.
Nothing reads presence to decide anything, except for partitions.

Partitions: the runners of a projection of ``partitions = N`` share its N
partitions instead, a lease row for each (:func:`partition_lease_name`),
fenced as above; each one's presence counts it in the share (see
:mod:`asyncsourcing.projection.partition_leadership`).
"""

from __future__ import annotations

import os
import socket
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import uuid4

from asyncsourcing.persistence import PersistenceError

__all__ = [
    "FencedError",
    "Lease",
    "LeaseSettings",
    "LeaseState",
    "Leases",
    "Presence",
    "SessionLock",
    "has_exited_here",
    "new_owner_id",
    "partition_lease_name",
]


def new_owner_id() -> str:
    """Names a runner in leases: ``host:pid:suffix`` (a random suffix)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid4().hex[:8]}"


def has_exited_here(owner: str) -> bool:
    """True if ``owner`` (a :func:`new_owner_id`) ran on this host and its
    process has exited; False if it runs, runs elsewhere, or is unknown."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)  # Signal 0: only asks whether it exists.
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # It exists, as another user's process.
    return False


def partition_lease_name(projection_name: str, partition: int) -> str:
    """The name of partition ``partition``'s lease row, in the column of
    projection names (``text``, unbounded: no identifier rules apply)."""
    return f"{projection_name}[{partition}]"


class FencedError(PersistenceError):
    """A view transaction of a runner that no longer holds the lease.

    Another runner of the projection took the lease over (its epoch moved):
    the transaction rolls back, and the runner stands by.
    """

    @classmethod
    def unless_held(cls, lease: Lease, recorded: tuple[str, int] | None) -> None:
        """Raise one unless the ``(owner, epoch)`` recorded are ``lease``'s."""
        if recorded is not None and recorded == (lease.owner, lease.epoch):
            return
        current = (
            "nobody"
            if recorded is None
            else (f"{recorded[0]!r} at epoch {recorded[1]}")
        )
        msg = (
            f"Runner {lease.owner!r} lost the lease of projection "
            f"{lease.projection_name!r} of application {lease.application_name!r} "
            f"(epoch {lease.epoch}); it is now held by {current}"
        )
        raise cls(msg)


@dataclass(frozen=True)
class Lease:
    """A lease of a projection, as read from its row."""

    application_name: str
    projection_name: str
    owner: str
    epoch: int
    expires_at: datetime
    acquired_at: datetime
    holder_pid: int | None = None
    """The server process id of the owner's session lock, if it holds one."""


@dataclass(frozen=True)
class LeaseState:
    """A lease as :meth:`Leases.survey` found it, judged by the database."""

    lease: Lease
    expired: bool
    """Its expiry has passed, by the database's clock (released, or not
    renewed in time)."""
    owner_gone: bool
    """Its owner is known to have ended: its session lock's session is gone
    (PostgreSQL), or its process on this host has exited (SQLite). An
    acquire takes such a lease over at once (with a ``holder_pid`` on
    PostgreSQL)."""


@dataclass(frozen=True)
class Presence:
    """A runner of a projection, as it last recorded itself."""

    owner: str
    role: str
    """``leader`` or ``standby``, when it was recorded."""
    seen_at: datetime
    """When the runner last recorded itself (the database's clock)."""


@dataclass(frozen=True)
class LeaseSettings:
    """How runners of a projection share it (``LEADERSHIP``, ``LEASE_*``)."""

    enabled: bool = True
    """``LEADERSHIP``: one runner processes, the others stand by."""
    ttl: float = 10.0
    """``LEASE_TTL``: seconds a lease lasts unless renewed."""
    fast_takeover: bool = True
    """``LEASE_FAST_TAKEOVER``: the session advisory lock of the fast path."""

    def __post_init__(self) -> None:
        if not self.ttl > 0:
            msg = f"LEASE_TTL must be a positive number of seconds, got {self.ttl!r}"
            raise ValueError(msg)

    @property
    def renew_interval(self) -> float:
        """Seconds between renewals: a third of the time to live."""
        return self.ttl / 3

    @property
    def standby_interval(self) -> float:
        """Seconds between a standby's attempts to take an expired lease."""
        return min(self.ttl / 3, 0.5)


class SessionLock(ABC):
    """A lock held by a session of its own, released when the session ends."""

    @property
    @abstractmethod
    def pid(self) -> int | None:
        """The server process id of the session, recorded in the lease; None
        when there is no session (never opened, closed, or lost: a lock held
        by a lost session is lost with it)."""

    @abstractmethod
    async def try_acquire(self) -> bool:
        """Take the lock if it is free; True if this session holds it."""

    @abstractmethod
    async def acquire(self) -> None:
        """Return once this session holds the lock (cancellable)."""

    @abstractmethod
    async def aclose(self) -> None:
        """End the session, releasing the lock; idempotent."""


class Leases(ABC):
    """The lease rows of the projections of one database."""

    table_name = "asyncsourcing_leases"
    presence_table_name = "asyncsourcing_runners"

    @abstractmethod
    async def create_table(self) -> None:
        """Create the leases and presence tables if they do not exist."""

    @abstractmethod
    async def acquire(
        self,
        application_name: str,
        projection_name: str,
        owner: str,
        ttl: float,
        *,
        holder_pid: int | None = None,
        grace: float = 0.0,
    ) -> Lease | None:
        """Take the lease for ``owner`` if it is free, expired for ``grace``
        seconds, or (``holder_pid`` given) its owner's session is gone; a new
        epoch. None if another runner holds it."""

    @abstractmethod
    async def renew(self, lease: Lease, ttl: float) -> Lease | None:
        """Extend ``lease`` by ``ttl`` seconds; None if it was lost."""

    @abstractmethod
    async def release(
        self, application_name: str, projection_name: str, owner: str
    ) -> None:
        """Let the lease expire now if ``owner`` holds it (a clean stop).

        By owner, not by :class:`Lease`: an acquire cancelled on its way back
        may have taken the lease without its caller knowing.
        """

    @abstractmethod
    async def read(self, application_name: str, projection_name: str) -> Lease | None:
        """The lease of a projection, as recorded, or None."""

    @abstractmethod
    async def survey(
        self, application_name: str, projection_names: Sequence[str]
    ) -> list[LeaseState]:
        """The recorded leases among ``projection_names`` (one read): whether
        each has expired and whether its owner has gone. A name without a
        row has never been taken."""

    @abstractmethod
    async def announce(
        self,
        application_name: str,
        projection_name: str,
        owner: str,
        role: str,
        ttl: float,
    ) -> None:
        """Record that ``owner`` runs the projection as ``role``, for ``ttl``
        seconds; forget the runners whose records have expired."""

    @abstractmethod
    async def withdraw(
        self, application_name: str, projection_name: str, owner: str
    ) -> None:
        """Forget ``owner``'s record (a clean stop)."""

    @abstractmethod
    async def present(
        self, application_name: str, projection_name: str
    ) -> list[Presence]:
        """The runners of a projection whose records have not expired, by
        owner."""

    @abstractmethod
    async def fence_out(
        self, conn: Any, application_name: str, projection_name: str
    ) -> None:
        """Move the lease's epoch on, in the transaction of ``conn``, owner
        unchanged: the leader's next view transaction is fenced off, and it
        stands by until the lease expires (as a version's switch wants of
        the old version's runners). Waits for the leader's transactions in
        flight."""

    def session_lock(
        self, application_name: str, projection_name: str
    ) -> SessionLock | None:
        """The fast path's lock of a projection, or None where there is none."""
        return None
