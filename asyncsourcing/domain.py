"""The domain model, re-exported unchanged from :mod:`eventsourcing.domain`.

Aggregates and their events do no IO, so they stay synchronous: an aggregate
written for ``eventsourcing`` works here as it is.
"""

from eventsourcing.domain import (
    Aggregate,
    AggregateCreated,
    AggregateEvent,
    BaseAggregate,
    CanSnapshotAggregate,
    DomainEvent,
    DomainEventProtocol,
    LogEvent,
    MutableOrImmutableAggregate,
    OriginatorIDError,
    OriginatorVersionError,
    Snapshot,
    SnapshotProtocol,
    TAggregateID,
    create_utc_datetime_now,
    event,
    triggers,
)

__all__ = [
    "Aggregate",
    "AggregateCreated",
    "AggregateEvent",
    "BaseAggregate",
    "CanSnapshotAggregate",
    "DomainEvent",
    "DomainEventProtocol",
    "LogEvent",
    "MutableOrImmutableAggregate",
    "OriginatorIDError",
    "OriginatorVersionError",
    "Snapshot",
    "SnapshotProtocol",
    "TAggregateID",
    "create_utc_datetime_now",
    "event",
    "triggers",
]
