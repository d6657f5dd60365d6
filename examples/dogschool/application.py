"""The dog school application."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from asyncsourcing.application import Application
from examples.dogschool.domain import Dog


class DogSchool(Application[UUID]):
    async def register_dog(self, name: str) -> tuple[UUID, int]:
        """Register a dog; returns its id and the position of its event."""
        dog = Dog(name)
        recordings = await self.save(dog)
        return dog.id, recordings[-1].notification.id

    async def add_trick(self, dog_id: UUID, trick: str) -> int:
        """Teach a dog a trick; returns the position of the event."""
        dog: Dog = await self.repository.get(dog_id)
        dog.add_trick(trick)
        recordings = await self.save(dog)
        return recordings[-1].notification.id

    async def get_dog(self, dog_id: UUID) -> dict[str, Any]:
        dog: Dog = await self.repository.get(dog_id)
        return {"name": dog.name, "tricks": tuple(dog.tricks)}
