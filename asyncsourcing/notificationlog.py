"""The notification log: an application sequence read in sections."""

from __future__ import annotations

from collections.abc import Sequence

from eventsourcing.application import Section

from asyncsourcing.persistence import ApplicationRecorder, Notification

__all__ = ["NotificationLog", "Section"]


class NotificationLog:
    """Sections of at most ``section_size`` notifications from a recorder.

    Section ids are two notification ids separated by a comma ("1,10"), as in
    eventsourcing, so remote readers of either library can page through it.
    """

    DEFAULT_SECTION_SIZE = 10

    def __init__(
        self, recorder: ApplicationRecorder, section_size: int = DEFAULT_SECTION_SIZE
    ) -> None:
        self.recorder = recorder
        self.section_size = section_size

    async def section(self, section_id: str) -> Section:
        """The section named by ``section_id``, with the id of what it holds.

        The returned id describes the notifications actually included (there
        may be fewer than requested); ``next_id`` is set when the section is full.
        """
        try:
            first, last = (int(part) for part in section_id.split(","))
        except ValueError:
            msg = f"Invalid section id {section_id!r}: expected 'first,last'"
            raise ValueError(msg) from None
        start = max(1, first)
        limit = min(max(0, last - start + 1), self.section_size)
        notifications = await self.select(start, limit)
        if not notifications:
            return Section(id=None, items=notifications, next_id=None)
        last_id = notifications[-1].id
        next_id = (
            self.format_section_id(last_id + 1, last_id + limit)
            if len(notifications) == limit
            else None
        )
        return Section(
            id=self.format_section_id(notifications[0].id, last_id),
            items=notifications,
            next_id=next_id,
        )

    async def select(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Notification]:
        """At most ``limit`` notifications (no more than a section) from ``start``."""
        if limit > self.section_size:
            msg = (
                f"Requested limit {limit} greater than section size {self.section_size}"
            )
            raise ValueError(msg)
        return await self.recorder.select_notifications(
            start=start,
            limit=limit,
            stop=stop,
            topics=topics,
            inclusive_of_start=inclusive_of_start,
        )

    @staticmethod
    def format_section_id(first_id: int, last_id: int) -> str:
        return f"{first_id},{last_id}"
