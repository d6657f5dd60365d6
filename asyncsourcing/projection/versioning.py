"""A runner's version of its projection: its record, and which events replay.

See :mod:`asyncsourcing.versions` for the records, and
:mod:`asyncsourcing.projection.replay` for what handlers see.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from contextlib import AbstractContextManager

from asyncsourcing.persistence import Notification
from asyncsourcing.projection.replay import replaying
from asyncsourcing.versions import VersionRecord, Versions, VersionStatus

__all__ = ["MarkCrossedError", "RunnerVersion"]

logger = logging.getLogger(__name__)


class MarkCrossedError(Exception):
    """A batch holds replays and live events: a switch moved the mark into
    it after it was split. The batch rolls back and is split again."""


class RunnerVersion:
    """Version ``version`` of projection ``projection_name``, as its runner
    sees it: registered when the runner starts, read again (locked) in
    each view transaction while it builds, until it serves.

    Without ``versions`` (in memory) nothing is recorded and nothing replays.
    """

    def __init__(
        self,
        versions: Versions | None,
        projection_name: str,
        version: int,
        *,
        side_effects_during_replay: bool = False,
    ) -> None:
        self.versions = versions
        self.projection_name = projection_name
        self.version = version
        self.side_effects_during_replay = side_effects_during_replay
        self.record: VersionRecord | None = None

    async def register(self, application_name: str) -> None:
        """Record the version (serving if it is the projection's first)."""
        if self.versions is None:
            return
        self.record = await self.versions.register(
            self.projection_name, self.version, application_name
        )
        logger.info(
            "Projection %r version %d is %s (replay mark %s)",
            self.projection_name,
            self.version,
            self.record.status,
            self.record.replay_until,
        )

    def split(self, batch: Sequence[Notification]) -> list[Sequence[Notification]]:
        """``batch`` in runs of replays and of live events, in order."""
        record = self.record
        if record is None or not batch or self._all_live(batch):
            return [batch]
        runs: list[list[Notification]] = []
        last: bool | None = None
        for notification in batch:
            flag = record.is_replay(notification.id)
            if flag is not last:
                runs.append([])
                last = flag
            runs[-1].append(notification)
        return list(runs)

    def _all_live(self, batch: Sequence[Notification]) -> bool:
        """Whether the serving version's ``batch`` is past its mark: the
        usual case, answered without looking at each event."""
        record = self.record
        return (
            record is not None
            and record.status is VersionStatus.SERVING
            and (record.replay_until is None or batch[0].id > record.replay_until)
        )

    async def context(
        self, batch: Sequence[Notification]
    ) -> AbstractContextManager[object]:
        """The replay context to process ``batch`` in, called in its view
        transaction: a building version's record is read there, locked, so
        that a switch waits for the transaction. Raises
        :class:`MarkCrossedError` if ``batch`` holds replays and live events."""
        if self.record is None or self._all_live(batch):
            return contextlib.nullcontext()
        if self.record.status is not VersionStatus.SERVING:
            assert self.versions is not None
            fresh = await self.versions.read_locked(self.projection_name, self.version)
            if fresh is not None:
                self.record = fresh
        flags = {self.record.is_replay(n.id) for n in batch}
        if len(flags) > 1:
            raise MarkCrossedError
        if flags == {True}:
            return replaying(
                self.record.replay_until,
                side_effects=self.side_effects_during_replay,
            )
        return contextlib.nullcontext()
