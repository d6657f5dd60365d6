"""Partitions of a projection: which events go together, and their positions.

A projection may declare ``partitions = N``: its events are then processed
by N workers, concurrently, each in view transactions of its own. An
event's partition is :func:`partition_of` its originator id, so each
aggregate's events stay in order, in one partition. The number is fixed
when the projection first runs (:meth:`TrackingRecorder.claim_partitions
<asyncsourcing.persistence.TrackingRecorder.claim_partitions>`): changing it
would move aggregates between partitions whose positions differ, so a new
number needs a new version of the projection, which rebuilds its view.

Each partition has a position of its own
(:class:`~asyncsourcing.persistence.PartitionTracking`): every event of
that partition up to it has been processed. The application's position is
the least of them.

This module does no IO; the recorders keep the positions.
"""

from __future__ import annotations

from collections.abc import Mapping
from hashlib import blake2b
from uuid import UUID

__all__ = [
    "MAX_PARTITIONS",
    "PARTITION_SEPARATOR",
    "PartitionError",
    "check_partitions",
    "describe_position",
    "least_position",
    "partition_key",
    "partition_of",
    "split_partition_key",
]

MAX_PARTITIONS = 1024
"""The most partitions a projection may have."""

PARTITION_SEPARATOR = "\x1f"
"""Separates an application name from a partition in a :func:`partition_key`
(the ASCII unit separator, which no application name contains)."""


class PartitionError(ValueError):
    """A number of partitions that is not allowed, or that does not match the
    one a projection's tables were made for."""


def check_partitions(partitions: int) -> int:
    """``partitions``, if it is a number of partitions a projection may have
    (an int from 1 to :data:`MAX_PARTITIONS`); else :class:`PartitionError`."""
    if (
        not isinstance(partitions, int)
        or isinstance(partitions, bool)
        or not 1 <= partitions <= MAX_PARTITIONS
    ):
        msg = (
            f"The number of partitions must be an integer from 1 to "
            f"{MAX_PARTITIONS}, not {partitions!r}"
        )
        raise PartitionError(msg)
    return partitions


def partition_of(originator_id: UUID | str, partitions: int) -> int:
    """The partition, from 0 to ``partitions - 1``, of the events of ``originator_id``.

    Stable across processes, machines and Python versions: the first 8 bytes
    of the BLAKE2b digest (``digest_size=8``) of the id, as a big-endian
    integer, modulo ``partitions``. The digest is of a UUID's 16 bytes; a
    string that :class:`~uuid.UUID` parses (as SQLite stores UUIDs, or
    written any other way it accepts) counts as that UUID, so an id lands
    in one partition however it was read back; any other string is
    digested as its UTF-8 bytes.
    """
    check_partitions(partitions)
    if isinstance(originator_id, UUID):
        data = originator_id.bytes
    else:
        try:
            data = UUID(originator_id).bytes
        except ValueError:
            data = originator_id.encode()
    digest = blake2b(data, digest_size=8).digest()
    return int.from_bytes(digest, "big") % partitions


def partition_key(application_name: str, partition: int) -> str:
    """The key of a partition's position on a
    :class:`~asyncsourcing.waiting.PositionBoard`, beside the application's
    own key, its name."""
    return f"{application_name}{PARTITION_SEPARATOR}{partition}"


def split_partition_key(key: str) -> tuple[str, int] | None:
    """The application name and partition of a :func:`partition_key`, or
    None for an application's own key."""
    application_name, separator, partition = key.rpartition(PARTITION_SEPARATOR)
    if not separator:
        return None
    return application_name, int(partition)


def describe_position(application_name: str, partition: int | None) -> str:
    """``application 'name'``, or ``partition 3 of application 'name'``: for
    messages."""
    if partition is None:
        return f"application '{application_name}'"
    return f"partition {partition} of application '{application_name}'"


def least_position(positions: Mapping[int, int | None]) -> int | None:
    """The position of an application from those of its partitions: the
    least, or None if one has none (or there are none)."""
    if not positions or None in positions.values():
        return None
    return min(p for p in positions.values() if p is not None)


def mismatch_error(
    where: str, application_name: str, recorded: int, declared: int
) -> PartitionError:
    """The error of a projection that declares ``declared`` partitions where
    its tables (named by ``where``) were made for ``recorded``."""
    msg = (
        f"Application '{application_name}' has {recorded} partitions {where}, "
        f"but the projection declares {declared}: {_NEW_VERSION}"
    )
    return PartitionError(msg)


def unpartitioned_error(
    where: str, application_name: str, position: int
) -> PartitionError:
    """The error of a projection that declares partitions where its tables
    (named by ``where``) hold a position recorded without them."""
    msg = (
        f"Application '{application_name}' has position {position} {where}, "
        "recorded without partitions, but the projection declares partitions: "
        f"{_NEW_VERSION}"
    )
    return PartitionError(msg)


def unclaimed_error(
    where: str, application_name: str, partition: int
) -> PartitionError:
    """The error of recording the position of a partition that was never
    claimed (:meth:`~asyncsourcing.persistence.TrackingRecorder.claim_partitions`)."""
    msg = (
        f"No {describe_position(application_name, partition)} {where}: claim "
        "the application's partitions first (claim_partitions())"
    )
    return PartitionError(msg)


_NEW_VERSION = (
    "the number of partitions is fixed when a projection first runs; to "
    "change it, make a new version of the projection (which rebuilds its view)"
)
