"""The repository: aggregates reconstructed from their stored events."""

from __future__ import annotations

import asyncio
import weakref
from copy import deepcopy
from itertools import chain
from typing import Any, Generic, cast

from eventsourcing.application import (
    AggregateNotFoundError,
    Cache,
    LRUCache,
    ProjectorFunction,
    project_aggregate,
)
from eventsourcing.domain import MutableOrImmutableAggregate, TAggregateID

from asyncsourcing.eventstore import EventStore

__all__ = ["AggregateNotFoundError", "Repository"]


class Repository(Generic[TAggregateID]):
    """Reconstructs aggregates from an event store, from a snapshot when there is one.

    With ``cache_maxsize`` set, aggregates are kept in an LRU cache (unbounded
    when zero or less) and, with ``fastforward``, brought up to date from the
    events recorded after the cached version before being returned.
    """

    def __init__(
        self,
        event_store: EventStore[TAggregateID],
        *,
        snapshot_store: EventStore[TAggregateID] | None = None,
        cache_maxsize: int | None = None,
        fastforward: bool = True,
        deepcopy_from_cache: bool = True,
    ) -> None:
        self.event_store = event_store
        self.snapshot_store = snapshot_store
        self.cache: (
            Cache[TAggregateID, MutableOrImmutableAggregate[TAggregateID]] | None
        )
        self._cache_maxsize = cache_maxsize
        self.cache = None
        self.clear_cache()
        self.fastforward = fastforward
        self.deepcopy_from_cache = deepcopy_from_cache
        # Fast-forwarding one cached aggregate from two tasks would apply
        # events twice; a lock per aggregate id, dropped when unused.
        self._fastforward_locks: weakref.WeakValueDictionary[Any, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    def clear_cache(self) -> None:
        """Forget the cached aggregates (after a transaction that recorded
        their new events rolled back, say); no-op without a cache."""
        maxsize = self._cache_maxsize
        if maxsize is None:
            self.cache = None
        elif maxsize <= 0:
            self.cache = Cache()
        else:
            self.cache = LRUCache(maxsize=maxsize)

    async def get(
        self,
        aggregate_id: TAggregateID,
        *,
        version: int | None = None,
        projector_func: ProjectorFunction[Any, Any] = project_aggregate,
    ) -> Any:
        """The aggregate with ``aggregate_id``, at ``version`` if given.

        Raises :class:`AggregateNotFoundError` when it has no events (at that version).
        """
        if self.cache is None or version is not None:
            return await self._reconstruct(aggregate_id, version, projector_func)
        try:
            aggregate = self.cache.get(aggregate_id)
        except KeyError:
            aggregate = await self._reconstruct(aggregate_id, None, projector_func)
            self.cache.put(aggregate_id, aggregate)
        else:
            if self.fastforward:
                aggregate = await self._fastforward(aggregate_id, projector_func)
        return deepcopy(aggregate) if self.deepcopy_from_cache else aggregate

    async def contains(self, aggregate_id: TAggregateID) -> bool:
        """True when the aggregate has been recorded."""
        try:
            await self.get(aggregate_id)
        except AggregateNotFoundError:
            return False
        return True

    async def _fastforward(
        self,
        aggregate_id: TAggregateID,
        projector_func: ProjectorFunction[Any, Any],
    ) -> Any:
        lock = self._fastforward_locks.get(aggregate_id)
        if lock is None:
            lock = self._fastforward_locks[aggregate_id] = asyncio.Lock()
        async with lock:
            assert self.cache is not None
            cached = self.cache.get(aggregate_id)
            new_events = await self.event_store.get(aggregate_id, gt=cached.version)
            if not new_events:
                return cached
            aggregate = projector_func(cached, new_events)
            if aggregate is None:
                raise AggregateNotFoundError(aggregate_id)
            self.cache.put(aggregate_id, aggregate)
            return aggregate

    async def _reconstruct(
        self,
        aggregate_id: TAggregateID,
        version: int | None,
        projector_func: ProjectorFunction[Any, Any],
    ) -> Any:
        gt: int | None = None
        snapshots: list[Any] = []
        if self.snapshot_store is not None:
            snapshots = list(
                await self.snapshot_store.get(
                    aggregate_id, desc=True, limit=1, lte=version
                )
            )
            if snapshots:
                gt = snapshots[0].originator_version
        events = await self.event_store.get(aggregate_id, gt=gt, lte=version)
        aggregate = projector_func(None, chain(snapshots, events))
        if aggregate is None:
            msg = f"Aggregate {aggregate_id!r} version {version!r} not found."
            raise AggregateNotFoundError(msg)
        return cast("Any", aggregate)
