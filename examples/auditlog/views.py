"""The audit log view: its interface and its entries."""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from uuid import UUID

from asyncsourcing.persistence import Tracking, TrackingRecorder


@dataclass(frozen=True)
class AuditEntry:
    """One event, as the log recorded it."""

    notification_id: int
    originator_id: UUID | str
    originator_version: int
    topic: str
    sequence: int
    """The order in which the log recorded the entries: increasing with
    each entry appended, across processes."""


class AuditLogView(TrackingRecorder):
    """Appends an entry per event; each event's entry at most once (the
    notification id is the entry's key: appending one twice fails)."""

    @abstractmethod
    async def append(
        self,
        originator_id: UUID | str,
        originator_version: int,
        topic: str,
        tracking: Tracking,
    ) -> None:
        """Append the entry of the event of ``tracking``, recording ``tracking``."""

    @abstractmethod
    async def entries(self) -> list[AuditEntry]:
        """Every entry, by notification id."""
