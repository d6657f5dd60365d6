"""The counters view: its interface, and the in-memory implementation."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from uuid import UUID

from asyncsourcing.persistence import Tracking, TrackingRecorder
from asyncsourcing.popo import POPOTrackingRecorder


class CountersView(TrackingRecorder):
    """Named counts, each increment recorded with the tracking of its event."""

    @abstractmethod
    async def get_count(self, name: str) -> int: ...

    @abstractmethod
    async def incr_count(self, name: str, tracking: Tracking) -> None: ...


class POPOCounters(POPOTrackingRecorder, CountersView):
    def __init__(self) -> None:
        super().__init__()
        self._counts: dict[str, int] = {}

    async def get_count(self, name: str) -> int:
        return self._counts.get(name, 0)

    async def incr_count(self, name: str, tracking: Tracking) -> None:
        async with self.database_lock:
            self.assert_tracking_uniqueness(tracking)
            self.record_tracking(tracking)
            self._counts[name] = self._counts.get(name, 0) + 1


@dataclass(frozen=True)
class DogUpdate:
    """What some events of one dog change in its row of a :class:`DogsView`."""

    name: str | None
    """The name it was registered with, or None if not registered by them."""

    tricks: tuple[str, ...]
    """The tricks they added, in order, to append to the dog's tricks."""


def merge(
    current: Mapping[UUID, tuple[str, tuple[str, ...]]],
    updates: Mapping[UUID, DogUpdate],
) -> dict[UUID, tuple[str, tuple[str, ...]]]:
    """The name and tricks of each updated dog, ``updates`` applied to the
    ``current`` rows (which may hold other dogs too).

    Raises :class:`LookupError` for tricks of a dog that has no row and is
    not registered by its update: before any row is written.
    """
    rows = {}
    for dog_id, update in updates.items():
        row = current.get(dog_id)
        name = update.name if update.name is not None else row and row[0]
        if name is None:
            msg = f"tricks added to dog {dog_id}, which was not registered"
            raise LookupError(msg)
        rows[dog_id] = (name, (row[1] if row else ()) + update.tricks)
    return rows


class DogsView(CountersView):
    """A row per dog (its name and tricks) beside the counts of dogs and tricks.

    :meth:`update_dogs` updates many dogs at once: in SQL, it loads their
    current rows with one query and writes them back with one statement.
    """

    @abstractmethod
    async def get_dog(self, dog_id: UUID) -> tuple[str, tuple[str, ...]] | None:
        """The name and tricks of a dog, None if it is not in the view."""

    @abstractmethod
    async def update_dogs(
        self,
        updates: Mapping[UUID, DogUpdate],
        counts: Mapping[str, int],
        tracking: Tracking,
    ) -> None:
        """Apply ``updates`` to the dogs' rows and add ``counts`` to the named
        counts, recording ``tracking`` in the same transaction.

        Raises :class:`LookupError` (and changes nothing) for tricks of a dog
        that has no row and is not registered by its update.
        """


class POPODogs(POPOCounters, DogsView):
    def __init__(self) -> None:
        super().__init__()
        self._dogs: dict[UUID, tuple[str, tuple[str, ...]]] = {}

    async def get_dog(self, dog_id: UUID) -> tuple[str, tuple[str, ...]] | None:
        return self._dogs.get(dog_id)

    async def update_dogs(
        self,
        updates: Mapping[UUID, DogUpdate],
        counts: Mapping[str, int],
        tracking: Tracking,
    ) -> None:
        async with self.database_lock:
            self.assert_tracking_uniqueness(tracking)
            # Merged before anything changes, so that an error changes nothing.
            rows = merge(self._dogs, updates)
            self.record_tracking(tracking)
            self._dogs.update(rows)
            for name, n in counts.items():
                self._counts[name] = self._counts.get(name, 0) + n
