"""Finding the failing event of a batch by splitting the batch in halves.

A projection runner processes a catch-up batch in one view transaction. If
that fails, something in the batch is at fault, but not necessarily all of
it: :func:`bisect_batch` commits what it can in batches and narrows the
failure down to a single event, which is then processed alone (under the
runner's error policy) before the rest is batched again. A batch of ``n``
events with one failing event costs about ``log2(n)`` failed transactions,
where replaying one event at a time would cost up to ``n`` transactions.

:func:`group_by_originator` helps a projection's ``process_events()`` update
a view once per aggregate of a batch rather than once per event.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar
from uuid import UUID

from eventsourcing.domain import DomainEventProtocol

from asyncsourcing.persistence import Tracking
from asyncsourcing.projection.projections import EventSourcedProjection, Projection

__all__ = ["bisect_batch", "group_by_originator", "process_events"]

T = TypeVar("T")
TID = TypeVar("TID", bound=UUID | str)


async def bisect_batch(
    batch: Sequence[T],
    try_batch: Callable[[Sequence[T]], Awaitable[bool]],
    process_alone: Callable[[T], Awaitable[bool]],
) -> None:
    """Process ``batch`` in order, each item once, in as few batches as it can.

    ``try_batch(items)`` processes ``items`` (more than one) in one
    transaction: True if it committed, False if it failed and rolled back
    (nothing of it is kept). ``process_alone(item)`` processes one item in a
    transaction of its own, dealing with its errors (the error policy): True
    if it met an error. Other exceptions of either propagate.

    The whole batch is tried first. While a failed range is known, its
    first half is tried, the range shrinking to that half when it fails
    too; a range of one item is processed alone. Once an item alone has
    met an error, or the failed range is passed, everything left is tried
    as one batch again. So each failed transaction halves the range where
    the failure is, and the items around it are committed in batches.
    """
    start = 0
    # The end of the shortest range from ``start`` known to fail as a batch.
    failed_end: int | None = None
    while start < len(batch):
        end = len(batch) if failed_end is None else start + (failed_end - start) // 2
        if end - start <= 1:
            if await process_alone(batch[start]):
                # The error is dealt with: what follows may well be good.
                failed_end = None
            start += 1
        elif await try_batch(batch[start:end]):
            start = end
        else:
            failed_end = end
        if failed_end is not None and failed_end <= start:
            failed_end = None


async def process_events(
    projection: Projection[Any] | EventSourcedProjection[Any],
    events: Sequence[tuple[DomainEventProtocol[Any], Tracking]],
) -> None:
    """Process ``events`` with the projection's ``process_events()``, or,
    for an event-sourced projection (which has none), one at a time."""
    if isinstance(projection, Projection):
        await projection.process_events(events)
        return
    for domain_event, tracking in events:
        await projection.process_event(domain_event, tracking)


def group_by_originator(
    events: Iterable[tuple[DomainEventProtocol[TID], Tracking]],
) -> dict[TID, list[tuple[DomainEventProtocol[TID], Tracking]]]:
    """The ``(domain_event, tracking)`` pairs of ``events`` by the events'
    ``originator_id``.

    Each originator's list keeps the order of ``events`` (so, for a batch,
    the order of the aggregate's versions), and the originators come in the
    order of their first events. A projection's ``process_events()`` can
    then load the current rows of the batch's aggregates with one query
    (their ids are the keys), apply each aggregate's events to its row, and
    write the rows with one statement.
    """
    groups: dict[TID, list[tuple[DomainEventProtocol[TID], Tracking]]] = {}
    for pair in events:
        groups.setdefault(pair[0].originator_id, []).append(pair)
    return groups
