"""The process recorder of the SQL backends: new events and the tracking of
the event that caused them, in one transaction."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from asyncsourcing.persistence import ProcessRecorder, StoredEvent, Tracking
from asyncsourcing.sql.datastore import Conn
from asyncsourcing.sql.events import SQLApplicationRecorder
from asyncsourcing.sql.tracking import SQLTrackingRecorder

__all__ = ["SQLProcessRecorder"]


class SQLProcessRecorder(
    SQLTrackingRecorder[Conn], SQLApplicationRecorder[Conn], ProcessRecorder
):
    """Events and the tracking of the processed event, in one transaction.

    ``insert_events(stored_events, tracking=tracking)`` records the tracking
    first, then the events, on every backend. So a tracking that conflicts
    (the event was processed already, by another runner say) fails before
    the events are written, and before the events table's lock is taken
    (PostgreSQL's EXCLUSIVE lock, which other writers of the application
    would wait for); and every process recorder takes the locks of the two
    tables in one order.
    """

    async def _insert_events(
        self, conn: Conn, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int]:
        tracking: Tracking | None = kwargs.get("tracking")
        if tracking is not None:
            await self.record_tracking(conn, tracking)
        return await super()._insert_events(conn, stored_events, **kwargs)

    async def drop_tables(self) -> None:
        """Not here: the events table is the projection's own record, which
        a reset must not lose."""
        msg = (
            f"{type(self).__qualname__} cannot drop its tables: an event-sourced "
            "projection's events are not a view"
        )
        raise NotImplementedError(msg)
