"""Which partition an aggregate's events belong to: stable, and spread evenly.

The partition of an event is a function of its originator id and the number
of partitions only, so that runners in other processes, on other machines,
with other versions of Python, hand each aggregate's events to the same
worker, in order.
"""

from __future__ import annotations

from collections import Counter
from hashlib import blake2b
from uuid import UUID, uuid4

import pytest

from asyncsourcing.partitions import (
    MAX_PARTITIONS,
    PartitionError,
    check_partitions,
    partition_of,
)

ZERO = UUID(int=0)
SOME = UUID("12345678-1234-5678-1234-567812345678")
ALL_ONES = UUID("ffffffff-ffff-ffff-ffff-ffffffffffff")


def test_the_partition_is_the_blake2b_digest_of_the_id_modulo_the_count() -> None:
    digest = blake2b(SOME.bytes, digest_size=8).digest()
    assert partition_of(SOME, 1000) == int.from_bytes(digest, "big") % 1000
    digest = blake2b(b"dog-1", digest_size=8).digest()
    assert partition_of("dog-1", 1000) == int.from_bytes(digest, "big") % 1000


@pytest.mark.parametrize(
    ("originator_id", "expected"),
    [
        # Fixed for good: a change would move aggregates between partitions
        # of projections that are running.
        (ZERO, [0, 0, 6, 14]),
        (SOME, [0, 1, 7, 207]),
        (ALL_ONES, [0, 1, 7, 807]),
        ("dog-1", [0, 1, 5, 581]),
        ("", [0, 0, 4, 692]),
        ("Übung", [0, 1, 1, 1]),
    ],
)
def test_partitions_are_fixed_values(
    originator_id: UUID | str, expected: list[int]
) -> None:
    assert [partition_of(originator_id, n) for n in (1, 2, 8, 1024)] == expected


def test_a_uuid_lands_alike_whichever_way_it_was_read_back() -> None:
    originator_id = uuid4()
    partition = partition_of(originator_id, 64)
    # As eventsourcing stores it in SQLite (hex), in text, in capitals.
    for text in (originator_id.hex, str(originator_id), str(originator_id).upper()):
        assert partition_of(text, 64) == partition


def test_ids_spread_evenly_over_the_partitions() -> None:
    counts = Counter(partition_of(uuid4(), 8) for _ in range(10_000))
    assert sorted(counts) == list(range(8))
    # 1,250 each on average; a standard deviation is about 33.
    assert all(1_100 < count < 1_400 for count in counts.values()), counts
    strings = Counter(partition_of(f"dog-{n}", 8) for n in range(10_000))
    assert all(1_100 < count < 1_400 for count in strings.values()), strings


@pytest.mark.parametrize("partitions", [0, -1, MAX_PARTITIONS + 1, 2.0, True, "4"])
def test_bad_numbers_of_partitions_are_refused(partitions: object) -> None:
    with pytest.raises(PartitionError, match=r"integer from 1 to 1024"):
        check_partitions(partitions)  # type: ignore[arg-type]
    with pytest.raises(PartitionError):
        partition_of(SOME, partitions)  # type: ignore[arg-type]
    # A ValueError, to code that catches those.
    assert issubclass(PartitionError, ValueError)


def test_good_numbers_of_partitions_are_returned() -> None:
    assert check_partitions(1) == 1
    assert check_partitions(MAX_PARTITIONS) == MAX_PARTITIONS
