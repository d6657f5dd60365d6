"""The application: saving aggregates, getting them back, snapshots, the log."""

from __future__ import annotations

from uuid import UUID, uuid4

import pytest

from asyncsourcing.application import AggregateNotFoundError, Application
from asyncsourcing.domain import Aggregate, event
from asyncsourcing.persistence import IntegrityError
from asyncsourcing.popo import POPOApplicationRecorder


class Dog(Aggregate):
    @event("Registered")
    def __init__(self, name: str) -> None:
        self.name = name
        self.tricks: list[str] = []

    @event("TrickAdded")
    def add_trick(self, trick: str) -> None:
        self.tricks.append(trick)


class DogSchool(Application[UUID]):
    pass


class SnapshottingDogSchool(Application[UUID]):
    snapshotting_intervals = {Dog: 2}  # noqa: RUF012


async def test_save_returns_recordings_with_positions() -> None:
    async with DogSchool() as school:
        dog = Dog("Fido")
        dog.add_trick("roll over")
        recordings = await school.save(dog)

        assert [r.notification.id for r in recordings] == [1, 2]
        assert [type(r.domain_event) for r in recordings] == [
            Dog.Registered,
            Dog.TrickAdded,
        ]
        assert await school.recorder.max_notification_id() == 2


async def test_repository_gets_current_and_past_versions() -> None:
    async with DogSchool() as school:
        dog = Dog("Fido")
        await school.save(dog)
        dog.add_trick("roll over")
        dog.add_trick("play dead")
        await school.save(dog)

        copy = await school.repository.get(dog.id)
        assert copy.name == "Fido"
        assert copy.tricks == ["roll over", "play dead"]
        assert copy.version == 3

        past = await school.repository.get(dog.id, version=2)
        assert past.tricks == ["roll over"]
        assert await school.repository.contains(dog.id)


async def test_unknown_aggregate_raises_not_found() -> None:
    async with DogSchool() as school:
        missing = uuid4()
        with pytest.raises(AggregateNotFoundError, match=str(missing)):
            await school.repository.get(missing)
        assert not await school.repository.contains(missing)


async def test_concurrent_change_raises_integrity_error_and_records_nothing() -> None:
    async with DogSchool() as school:
        dog = Dog("Fido")
        await school.save(dog)
        first = await school.repository.get(dog.id)
        second = await school.repository.get(dog.id)
        first.add_trick("roll over")
        second.add_trick("play dead")
        await school.save(first)

        with pytest.raises(IntegrityError):
            await school.save(second)

        dog = await school.repository.get(dog.id)
        assert dog.tricks == ["roll over"]
        assert await school.recorder.max_notification_id() == 2


async def test_snapshots_are_taken_at_intervals_and_used() -> None:
    async with SnapshottingDogSchool() as school:
        dog = Dog("Fido")
        dog.add_trick("roll over")  # version 2: a snapshot
        dog.add_trick("play dead")
        await school.save(dog)

        assert school.snapshots is not None
        snapshots = await school.snapshots.get(dog.id)
        assert [s.originator_version for s in snapshots] == [2]

        copy = await school.repository.get(dog.id)
        assert copy.tricks == ["roll over", "play dead"]

        await school.take_snapshot(dog.id)
        snapshots = await school.snapshots.get(dog.id, desc=True, limit=1)
        assert snapshots[0].originator_version == 3


async def test_take_snapshot_without_snapshot_store_is_refused() -> None:
    async with DogSchool() as school:
        dog = Dog("Fido")
        await school.save(dog)
        with pytest.raises(AssertionError, match="IS_SNAPSHOTTING_ENABLED"):
            await school.take_snapshot(dog.id)


async def test_aggregate_cache_fastforwards() -> None:
    env = {"AGGREGATE_CACHE_MAXSIZE": "10"}
    async with DogSchool(env) as school:
        dog = Dog("Fido")
        await school.save(dog)
        cached = await school.repository.get(dog.id)
        cached.add_trick("sit")
        await school.save(cached)
        assert (await school.repository.get(dog.id)).tricks == ["sit"]


async def test_notification_log_sections() -> None:
    async with DogSchool() as school:
        dog = Dog("Fido")
        for trick in range(11):
            dog.add_trick(f"trick {trick}")
        await school.save(dog)

        section = await school.notification_log.section("1,10")
        assert section.id == "1,10"
        assert section.next_id == "11,20"
        assert [n.id for n in section.items] == list(range(1, 11))

        section = await school.notification_log.section("11,20")
        assert section.id == "11,12"
        assert section.next_id is None

        with pytest.raises(ValueError, match="greater than section size"):
            await school.notification_log.select(1, 11)
        with pytest.raises(ValueError, match="'x'"):
            await school.notification_log.section("x")


async def test_environment_picks_the_backend_with_the_name_prefix() -> None:
    env = {"DOGSCHOOL_PERSISTENCE_MODULE": "asyncsourcing.popo"}
    school = DogSchool(env)
    assert school.name == "DogSchool"
    assert isinstance(school.recorder, POPOApplicationRecorder)
    await school.close()
    await school.close()  # Idempotent.
