"""A runner's part in the leadership of its projection: lead, or stand by.

See :mod:`asyncsourcing.leases` for the lease, its fencing and the fast path.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
from datetime import UTC, datetime

from asyncsourcing.leases import (
    Lease,
    Leases,
    LeaseSettings,
    SessionLock,
    new_owner_id,
)
from asyncsourcing.persistence import PersistenceError

__all__ = ["Leadership", "Role"]

logger = logging.getLogger(__name__)


class Role(enum.StrEnum):
    LEADER = "leader"
    """Processes the projection's events."""
    STANDBY = "standby"
    """Waits to take over; its view's ``wait()`` works all the same."""


class Leadership:
    """Takes, keeps and gives back the lease of one projection.

    Without ``leases`` (in memory) there is nothing to coordinate: the
    runner leads from the start.
    """

    def __init__(
        self,
        leases: Leases | None,
        application_name: str,
        projection_name: str,
        settings: LeaseSettings,
    ) -> None:
        self.settings = settings
        self.owner = new_owner_id()
        self._leases = leases if settings.enabled else None
        self._application_name = application_name
        self._projection_name = projection_name
        self._lock: SessionLock | None = None
        if self._leases is not None and settings.fast_takeover:
            self._lock = self._leases.session_lock(application_name, projection_name)
        self._holds_lock = False
        # When this runner first found the lock held by another.
        self._first_try_at: float | None = None
        # A standby's wait for the lock, which has the lock's session to itself.
        self._waiting_for_lock: asyncio.Task[None] | None = None
        self.lease: Lease | None = None
        self.role = Role.LEADER if self._leases is None else Role.STANDBY
        self.since = datetime.now(UTC)
        self._role_changed = asyncio.Event()

    @property
    def coordinates(self) -> bool:
        """Whether this runner shares its projection through a lease."""
        return self._leases is not None

    async def create_table(self) -> None:
        if self._leases is not None:
            await self._leases.create_table()

    async def try_acquire(self) -> bool:
        """Lead if the lease can be taken now; True if this runner leads."""
        if self._leases is None:
            return True
        self._forget_lost_lock()
        grace = 0.0
        if self._lock is not None and not self._holds_lock:
            if self._waiting_for_lock is None:
                try:
                    self._holds_lock = await self._lock.try_acquire()
                except PersistenceError as error:
                    self._lock_failed(error)
            if not self._holds_lock:
                now = asyncio.get_running_loop().time()
                if self._first_try_at is None:
                    self._first_try_at = now
                if now - self._first_try_at < self.settings.standby_interval:
                    # The lock's holder is starting too: the first row is its.
                    return False
                # The lock's holder, if alive, takes an expired lease first.
                grace = self.settings.ttl
        lease = await self._leases.acquire(
            self._application_name,
            self._projection_name,
            self.owner,
            self.settings.ttl,
            holder_pid=self._lock.pid if self._holds_lock and self._lock else None,
            grace=grace,
        )
        if lease is None:
            return False
        self._become(Role.LEADER, lease)
        return True

    async def acquire(self) -> None:
        """Stand by until this runner leads (cancellable).

        Tries to take the lease every :attr:`LeaseSettings.standby_interval`
        and, on the fast path, as soon as the leader's session lock is free.
        """
        try:
            while not await self.try_acquire():
                if self._lock is not None and not self._holds_lock:
                    if self._waiting_for_lock is None:
                        self._waiting_for_lock = asyncio.create_task(
                            self._lock.acquire()
                        )
                    waiting = self._waiting_for_lock
                    interval = self.settings.standby_interval
                    await asyncio.wait({waiting}, timeout=interval)
                    if waiting.done():
                        self._waiting_for_lock = None
                        self._holds_lock = self._lock_result(waiting)
                        if not self._holds_lock:  # Not in a tight loop.
                            await asyncio.sleep(interval)
                else:
                    await asyncio.sleep(self.settings.standby_interval)
        finally:
            pending, self._waiting_for_lock = self._waiting_for_lock, None
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError, PersistenceError):
                    await pending

    async def keep(self) -> None:
        """Renew the lease until it is lost; return then (cancel to stop).

        A renewal that fails for a database error is tried again until the
        lease would expire: then the lease counts as lost, since another
        runner may take it over from that moment on.
        """
        if self._leases is None:
            await asyncio.Event().wait()  # Nothing to lose.
            return
        loop = asyncio.get_running_loop()
        renewed_at = loop.time()
        while self.lease is not None:
            deadline = renewed_at + self.settings.ttl
            await asyncio.sleep(
                max(0.0, min(self.settings.renew_interval, deadline - loop.time()))
            )
            if loop.time() >= deadline:
                self._lose("it could not be renewed before it expired")
                return
            started = loop.time()
            try:
                lease = await asyncio.wait_for(
                    self._renew(self.lease), max(0.001, deadline - started)
                )
            except (PersistenceError, TimeoutError) as error:
                logger.warning(
                    "Cannot renew the lease of projection %r (%s); retrying",
                    self._projection_name,
                    error,
                )
                continue
            if lease is None:
                self._lose("another runner took it over")
                return
            self.lease, renewed_at = lease, started

    async def announce(self) -> None:
        """Record this runner's role every renewal and at each change, until
        cancelled (see "Presence" in :mod:`asyncsourcing.leases`)."""
        if self._leases is None:
            return
        while True:
            self._role_changed.clear()
            try:
                await self._leases.announce(
                    self._application_name,
                    self._projection_name,
                    self.owner,
                    self.role,
                    self.settings.ttl,
                )
            except PersistenceError as error:
                # Presence is only reported: the lease's own errors matter.
                logger.debug("Cannot record runner %s: %s", self.owner, error)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._role_changed.wait(), self.settings.renew_interval
                )

    async def _renew(self, lease: Lease) -> Lease | None:
        """Renew ``lease``, with the lock's session as it is now: a leader
        that lost its lock's session takes the lock again if it is free."""
        assert self._leases is not None
        self._forget_lost_lock()
        if self._lock is not None and not self._holds_lock:
            # Only the fast path is at stake: renew the lease all the same.
            with contextlib.suppress(PersistenceError):
                self._holds_lock = await self._lock.try_acquire()
        holder_pid = self._lock.pid if self._lock and self._holds_lock else None
        if holder_pid != lease.holder_pid:
            lease = dataclasses.replace(lease, holder_pid=holder_pid)
        return await self._leases.renew(lease, self.settings.ttl)

    def _lock_result(self, waiting: asyncio.Task[None]) -> bool:
        """Whether the wait for the lock got it; False if its session failed."""
        try:
            waiting.result()
        except PersistenceError as error:
            self._lock_failed(error)
            return False
        return True

    def _lock_failed(self, error: PersistenceError) -> None:
        # The lock only makes takeover fast: stand by on the lease alone,
        # and try the lock again with a new session next time.
        logger.warning(
            "Runner %s cannot hold projection %r's lock (%s); trying again",
            self.owner,
            self._projection_name,
            error,
        )

    def _forget_lost_lock(self) -> None:
        """A lock held by a session that has ended is held no more."""
        if self._holds_lock and self._lock is not None and self._lock.pid is None:
            self._holds_lock = False
            logger.warning(
                "Runner %s lost the session of projection %r's lock",
                self.owner,
                self._projection_name,
            )

    def lost(self, reason: str) -> None:
        """A view transaction found the lease taken over: stand by."""
        if self.role is Role.LEADER and self._leases is not None:
            self._lose(reason)

    async def step_down(self, reason: str) -> None:
        """Stand by, giving the lease back, so that any runner (this one
        too) may take it at once; if the database refuses, it expires."""
        lease = self.lease
        self.lost(reason)
        if lease is not None and self._leases is not None:
            with contextlib.suppress(PersistenceError):
                await self._leases.release(
                    self._application_name, self._projection_name, self.owner
                )

    async def release(self) -> None:
        """Give the lease back (a clean stop), and end the lock's session."""
        self.lease = None
        try:
            if self._leases is not None:
                # Even when not leading: a cancelled acquire may have taken it.
                with contextlib.suppress(PersistenceError):
                    await self._leases.release(
                        self._application_name, self._projection_name, self.owner
                    )
                    await self._leases.withdraw(
                        self._application_name, self._projection_name, self.owner
                    )
        finally:
            self._holds_lock = False
            if self._lock is not None:
                await self._lock.aclose()

    def _become(self, role: Role, lease: Lease | None) -> None:
        self.lease = lease
        if role is not self.role:
            self.role, self.since = role, datetime.now(UTC)
            self._role_changed.set()
            logger.info(
                "Runner %s is now %s of projection %r of application %r%s",
                self.owner,
                role,
                self._projection_name,
                self._application_name,
                f" (epoch {lease.epoch})" if lease is not None else "",
            )

    def _lose(self, reason: str) -> None:
        logger.warning(
            "Runner %s lost the lease of projection %r: %s; standing by",
            self.owner,
            self._projection_name,
            reason,
        )
        self._become(Role.STANDBY, None)
