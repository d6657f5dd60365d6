"""A runner's share of the partitions of a projection (``partitions = N``).

The runners of a partitioned projection, in any processes or hosts, share
its N partitions through the database alone. Each partition has a lease row
of its own (:func:`~asyncsourcing.leases.partition_lease_name`), taken,
renewed, released and fenced exactly as a projection's lease is (see
:mod:`asyncsourcing.leases`): a view transaction of partition ``p`` checks
the lease of ``p``, so a runner that lost it never commits there. Each
runner also records its presence under the projection's name, with the role
``partitions 0,3,5`` (what it holds), so that runners can count each other.

Each step (every :attr:`~asyncsourcing.leases.LeaseSettings.renew_interval`,
or every ``standby_interval`` while the share is moving), a runner:

1. renews its leases once a renewal interval; a lease that another runner
   took, or that it could not renew before its expiry (measured from the
   start of its last renewal, so before the database's expiry), is lost;
2. reads the present runners and the partitions' leases (two reads). The
   members are the present runners, less those whose owner has gone
   (below), plus itself. Their targets split N as evenly as can be: they
   differ by one at most and sum to N (4 over 3 runners: 2, 1, 1, never
   2, 2, 0), the larger ones going to the members that hold most now, so
   that as few partitions move as possible (8 held 4 and 4, a third
   joins: 3, 3, 2, two partitions move). Every member computes the same
   targets from the same reads;
3. if it holds more than its target, and the members have not changed for
   a renewal interval (a newcomer is seen by all, and a flapping presence
   moves nothing), gives back the excess, highest-numbered first: reported
   lost (the runner stops those workers) before the release, so no
   partition is ever processed by two runners;
4. claims free partitions (never taken, expired, released, or whose owner
   has gone) up to its target, starting at an offset derived from its
   owner id, so that newcomers do not all contend for partition 0;
5. claims, beyond its target, a partition that has been free for a whole
   renewal interval: the targets leave one uncovered while the members
   are miscounted (a dead runner's presence outlives it by up to a time to
   live) or while a member does not claim. What it takes so is kept while
   the members stay the same, or it would give it back, and take it
   again, until they change;
6. records its presence (its role) when its partitions changed or once a
   renewal interval.

Once each member holds its target, every partition is held, by one
runner. A runner below its target while another holds more than its own,
or while a partition is free, steps every ``standby_interval``: it claims
a release long before the giver's step 5 could take it back.

Death: an owner has gone when its session lock's session has ended
(PostgreSQL: a session per runner, whose server process id is recorded in
each of its leases, so its leases are taken over at the next step, not at
their expiry) or, on SQLite, when its process on this host has exited.
Otherwise its leases expire (at most a time to live). A clean stop
(:meth:`PartitionLeadership.release`) gives them back and withdraws the
presence at once: the others claim them at their next step.

Without leases (in memory, or ``LEADERSHIP=false``) the runner owns all the
partitions from the start, and that never changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable

from asyncsourcing.leases import (
    Lease,
    Leases,
    LeaseSettings,
    LeaseState,
    Presence,
    SessionLock,
    new_owner_id,
    partition_lease_name,
)
from asyncsourcing.persistence import PersistenceError

__all__ = ["ROLE", "PartitionLeadership", "PartitionStatus"]

logger = logging.getLogger(__name__)

ROLE = "partitions"
"""The first word of the presence role of a runner of partitions."""

OnChange = Callable[[frozenset[int], frozenset[int]], Awaitable[None]]


@dataclasses.dataclass(frozen=True)
class PartitionStatus:
    """A runner's share, as :meth:`PartitionLeadership.describe` tells it."""

    owner: str
    partitions: int
    """N, the projection's number of partitions."""
    owned: tuple[int, ...]
    """The partitions this runner may process now, in order."""
    epochs: dict[int, int]
    """The epoch of each owned partition's lease (none without leases)."""


class PartitionLeadership:
    """Takes, keeps, rebalances and gives back a runner's partitions."""

    def __init__(
        self,
        leases: Leases | None,
        application_name: str,
        projection_name: str,
        partitions: int,
        settings: LeaseSettings,
    ) -> None:
        if partitions < 1:
            msg = f"partitions must be at least 1, got {partitions!r}"
            raise ValueError(msg)
        self.settings = settings
        self.partitions = partitions
        self.owner = new_owner_id()
        self._leases = leases if settings.enabled else None
        self._application_name = application_name
        self._projection_name = projection_name
        self._names = [
            partition_lease_name(projection_name, p) for p in range(partitions)
        ]
        self._partition_of = {name: p for p, name in enumerate(self._names)}
        self._lock: SessionLock | None = None
        if self._leases is not None and settings.fast_takeover:
            # Keyed by the owner: nobody else takes it, only its session
            # matters (its end is the owner's death, see the docstring).
            self._lock = self._leases.session_lock(
                application_name, f"{projection_name} runner {self.owner}"
            )
        self._holds_lock = False
        self.leases_held: dict[int, Lease] = {}
        self._renewed_at: dict[int, float] = {}  # When its last renewal began.
        self._reported: frozenset[int] = frozenset()
        self._offset = zlib.crc32(self.owner.encode()) % partitions
        self._members: frozenset[str] = frozenset()
        self._members_since = 0.0
        self._surplus_members: frozenset[str] | None = None
        self._free_since: dict[int, float] = {}
        self._next_renewal = 0.0
        self._next_announcement = 0.0
        self._announced: str | None = None
        self._wake = asyncio.Event()

    @property
    def coordinates(self) -> bool:
        """Whether this runner shares the partitions through leases."""
        return self._leases is not None

    @property
    def owned(self) -> frozenset[int]:
        """The partitions this runner may process now: those whose lease it
        holds and has renewed in time (checked now, not at the last step)."""
        if self._leases is None:
            return frozenset(range(self.partitions))
        now = time.monotonic()
        ttl = self.settings.ttl
        return frozenset(p for p in self.leases_held if now < self._renewed_at[p] + ttl)

    def lease(self, partition: int) -> Lease | None:
        """The lease that a view transaction of ``partition`` checks (None
        without leases, or when not owned)."""
        if partition not in self.owned:
            return None
        return self.leases_held.get(partition)

    def describe(self) -> PartitionStatus:
        """This runner's owner id, owned partitions and their epochs."""
        owned = sorted(self.owned)
        epochs = {p: self.leases_held[p].epoch for p in owned if p in self.leases_held}
        return PartitionStatus(self.owner, self.partitions, tuple(owned), epochs)

    async def create_table(self) -> None:
        if self._leases is not None:
            await self._leases.create_table()

    async def run(self, on_change: OnChange) -> None:
        """Until cancelled: claim a fair share, renew, rebalance (see the
        module's docstring), awaiting ``on_change(gained, lost)`` after each
        change of the owned set. Losses are reported before the step goes
        on (before a release, so the runner stops those workers first);
        partitions reported by :meth:`lost` are reported too. Without leases:
        one call with all the partitions, then nothing.

        ``on_change`` runs within the step: while it runs, nothing is
        renewed, so it should take well under a time to live.
        """
        if self._leases is None:
            await self._report(on_change)
            await asyncio.Event().wait()
            return
        await self._keep_session()
        await self._announce(time.monotonic())  # Before the first count.
        while True:
            self._wake.clear()
            hurry = await self._step(self._leases, on_change)
            settings, now = self.settings, time.monotonic()
            delay = settings.standby_interval if hurry else settings.renew_interval
            # Wake for the next renewal, and to report a lease's expiry.
            expiries = (t + settings.ttl - now for t in self._renewed_at.values())
            delay = max(0.0, min(delay, self._next_renewal - now, *expiries))
            # asyncio.timeout(), not wait_for(): on Python 3.11, wait_for()
            # can swallow a cancellation that comes as the wake-up does.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    def lost(self, partition: int, reason: str) -> None:
        """A view transaction of ``partition`` was fenced off: the lease is
        lost, and :meth:`run` reports it at once."""
        if partition in self.leases_held:
            self._drop(partition, reason)
            self._wake.set()

    async def release(self) -> None:
        """Give every lease back and withdraw the presence (a clean stop:
        once :meth:`run` is cancelled and the workers have stopped), and end
        the lock's session;
        idempotent. Also gives back a lease that an acquire cancelled on its
        way back took without this runner knowing."""
        held, self.leases_held = self.leases_held, {}
        self._renewed_at.clear()
        self._reported = frozenset()
        try:
            if self._leases is not None:
                await self._give_back(self._leases, {self._names[p] for p in held})
        finally:
            self._holds_lock = False
            if self._lock is not None:
                await self._lock.aclose()

    async def _give_back(self, leases: Leases, names: set[str]) -> None:
        app, owner = self._application_name, self.owner
        with contextlib.suppress(PersistenceError):
            states = await leases.survey(app, self._names)
            names |= {s.lease.projection_name for s in states if s.lease.owner == owner}
        with contextlib.suppress(PersistenceError):
            for name in sorted(names):
                await leases.release(app, name, owner)
        with contextlib.suppress(PersistenceError):
            await leases.withdraw(app, self._projection_name, owner)

    async def _step(self, leases: Leases, on_change: OnChange) -> bool:
        """One step (see the module's docstring); True if the next should
        come soon (the share is moving)."""
        await self._keep_session()
        now = time.monotonic()
        hurry = False
        if now >= self._next_renewal:
            renewed_all = await self._renew_all(leases)
            interval = self.settings.renew_interval
            if not renewed_all:  # Try again soon, while the leases last.
                interval, hurry = self.settings.standby_interval, True
            self._next_renewal = now + interval
        self._expire(time.monotonic())
        await self._report(on_change)
        try:
            present = await leases.present(
                self._application_name, self._projection_name
            )
            states = await leases.survey(self._application_name, self._names)
        except PersistenceError as error:
            logger.warning("Cannot read the partitions' leases (%s)", error)
            return True
        now = time.monotonic()
        free, holders = self._observe(present, states, now)
        await self._report(on_change)  # Leases that the reads found taken.
        targets = self._targets(holders)
        target = targets[self.owner]
        excess = len(self.leases_held) - target
        if excess > 0 and self._members != self._surplus_members:
            if now - self._members_since >= self.settings.renew_interval:
                await self._give_excess(leases, on_change, excess)
            else:
                hurry = True  # Give it at the end of the interval.
        await self._claim(leases, free, target, now)
        await self._report(on_change)
        await self._announce(time.monotonic())
        others_over = any(
            holders[owner] > targets[owner] for owner in targets if owner != self.owner
        )
        below = len(self.leases_held) < target
        return hurry or bool(self._free_since) or (below and others_over)

    def _targets(self, holders: Counter[str]) -> dict[str, int]:
        """Each member's target: shares of N differing by one at most, the
        larger ones to the members that hold most (then by owner)."""
        counts = {owner: holders[owner] for owner in self._members}
        counts[self.owner] = len(self.leases_held)
        ranked = sorted(self._members, key=lambda owner: (-counts[owner], owner))
        share, rest = divmod(self.partitions, len(ranked))
        return {owner: share + (rank < rest) for rank, owner in enumerate(ranked)}

    def _observe(
        self, present: list[Presence], states: list[LeaseState], now: float
    ) -> tuple[list[int], Counter[str]]:
        """The free partitions, in this runner's order, and how many each
        live owner holds; updates the members, and drops the leases found
        taken by another."""
        free = set(range(self.partitions))
        holders: Counter[str] = Counter()
        gone: set[str] = set()
        for state in states:
            p = self._partition_of[state.lease.projection_name]
            held = self.leases_held.get(p)
            if state.owner_gone:
                gone.add(state.lease.owner)
            if held is not None:
                free.discard(p)
                if (state.lease.owner, state.lease.epoch) != (held.owner, held.epoch):
                    self._drop(p, "another runner took it over")
            elif not (state.expired or state.owner_gone):
                free.discard(p)
                holders[state.lease.owner] += 1
        members = {r.owner for r in present if r.role.split(" ")[0] == ROLE}
        members = (members - gone) | {self.owner}
        if members != self._members:
            self._members, self._members_since = frozenset(members), now
            self._surplus_members = None
        self._free_since = {p: self._free_since.get(p, now) for p in free}
        order = sorted(free, key=lambda p: (p - self._offset) % self.partitions)
        return order, holders

    async def _give_excess(
        self, leases: Leases, on_change: OnChange, excess: int
    ) -> None:
        given = sorted(self.leases_held)[-excess:]
        for p in given:
            self._drop(p, "another runner's share", level=logging.INFO)
        await self._report(on_change)  # Its workers stop before the release.
        for p in given:
            try:
                await leases.release(self._application_name, self._names[p], self.owner)
            except PersistenceError as error:  # It expires instead.
                logger.warning("Cannot release partition %d (%s)", p, error)

    async def _claim(
        self, leases: Leases, free: list[int], target: int, now: float
    ) -> None:
        for p in free:
            beyond = len(self.leases_held) >= target
            if beyond and now - self._free_since[p] < self.settings.renew_interval:
                continue
            started = time.monotonic()
            try:
                lease = await leases.acquire(
                    self._application_name,
                    self._names[p],
                    self.owner,
                    self.settings.ttl,
                    holder_pid=self._holder_pid(),
                )
            except PersistenceError as error:
                logger.warning("Cannot acquire partition %d (%s)", p, error)
                continue
            if lease is not None:
                self.leases_held[p], self._renewed_at[p] = lease, started
                del self._free_since[p]
                if beyond:
                    self._surplus_members = self._members

    async def _renew_all(self, leases: Leases) -> bool:
        """Renew each lease held; False if one failed for an error."""
        renewed_all = True
        holder_pid = self._holder_pid()
        for p, lease in list(self.leases_held.items()):
            started = time.monotonic()
            deadline = self._renewed_at[p] + self.settings.ttl
            if holder_pid != lease.holder_pid:
                lease = dataclasses.replace(lease, holder_pid=holder_pid)
            try:
                renewed = await asyncio.wait_for(
                    leases.renew(lease, self.settings.ttl),
                    max(0.001, deadline - started),
                )
            except (PersistenceError, TimeoutError) as error:
                logger.warning("Cannot renew partition %d (%s); retrying", p, error)
                renewed_all = False
                continue
            if p not in self.leases_held:
                continue  # Lost meanwhile (fenced).
            if renewed is None:
                self._drop(p, "another runner took it over")
            else:
                self.leases_held[p], self._renewed_at[p] = renewed, started
        return renewed_all

    def _expire(self, now: float) -> None:
        for p in list(self.leases_held):
            if now >= self._renewed_at[p] + self.settings.ttl:
                self._drop(p, "it could not be renewed before it expired")

    def _drop(self, p: int, reason: str, level: int = logging.WARNING) -> None:
        del self.leases_held[p]
        del self._renewed_at[p]
        logger.log(
            level,
            "Runner %s gives up partition %d of projection %r: %s",
            self.owner,
            p,
            self._projection_name,
            reason,
        )

    async def _report(self, on_change: OnChange) -> None:
        owned = self.owned
        gained, lost = owned - self._reported, self._reported - owned
        if gained or lost:
            self._reported = owned
            logger.info(
                "Runner %s processes partitions %s of projection %r",
                self.owner,
                sorted(owned),
                self._projection_name,
            )
            await on_change(gained, lost)

    async def _announce(self, now: float) -> None:
        assert self._leases is not None
        role = f"{ROLE} " + (",".join(map(str, sorted(self.leases_held))) or "none")
        if role == self._announced and now < self._next_announcement:
            return
        try:
            await self._leases.announce(
                self._application_name,
                self._projection_name,
                self.owner,
                role,
                self.settings.ttl,
            )
        except PersistenceError as error:
            logger.debug("Cannot record runner %s: %s", self.owner, error)
            return
        self._announced = role
        self._next_announcement = now + self.settings.renew_interval

    async def _keep_session(self) -> None:
        """Hold the runner's lock, on a session whose end tells the others
        that this runner has gone; take it again when its session ended."""
        if self._lock is None:
            return
        if self._holds_lock and self._lock.pid is None:
            self._holds_lock = False
        if not self._holds_lock:
            try:
                self._holds_lock = await self._lock.try_acquire()
            except PersistenceError as error:
                # Only the fast path is at stake: the leases expire instead.
                logger.warning("Runner %s has no lock session (%s)", self.owner, error)

    def _holder_pid(self) -> int | None:
        if self._lock is not None and self._holds_lock:
            return self._lock.pid
        return None
