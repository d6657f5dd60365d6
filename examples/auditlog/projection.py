"""The projection that appends each event of an application to an audit log."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from asyncsourcing.persistence import Tracking
from asyncsourcing.projection import Projection
from asyncsourcing.utils import get_topic
from examples.auditlog.views import AuditLogView


class AuditLogProjection(Projection[AuditLogView]):
    """Appends every event to the view, in 4 partitions.

    ``io_delay`` seconds are awaited before each entry is appended: a handler
    that calls another service, as the benchmarks time it.
    """

    name = "auditlog"
    partitions: ClassVar[int] = 4
    io_delay: ClassVar[float] = 0.0

    async def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        if self.io_delay:
            await asyncio.sleep(self.io_delay)
        await self.view.append(
            domain_event.originator_id,
            domain_event.originator_version,
            get_topic(type(domain_event)),
            tracking,
        )
