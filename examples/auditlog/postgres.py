"""The audit log in PostgreSQL: an entries table beside the tracking tables."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from asyncsourcing.persistence import Tracking
from asyncsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
from asyncsourcing.postgres.identifiers import qualified
from examples.auditlog.views import AuditEntry, AuditLogView


class PostgresAuditLog(PostgresTrackingRecorder, AuditLogView):
    def __init__(self, datastore: PostgresDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        self.entries_table_name = self.tracking_table_name.replace(
            "_tracking", "_entries"
        )
        self.check_identifier_length(self.entries_table_name)
        table = qualified(self.datastore.schema, self.entries_table_name)
        # A sequence, not max() + 1: partitions append concurrently.
        self.sql_create_statements.append(
            f"CREATE TABLE IF NOT EXISTS {table} ("
            "notification_id bigint PRIMARY KEY, originator_id text, "
            "originator_version bigint, topic text, sequence bigserial)"
        )
        self._append_statement = (
            f"INSERT INTO {table} "
            "(notification_id, originator_id, originator_version, topic) "
            "VALUES ($1, $2, $3, $4)"
        )
        self._select_statement = (
            "SELECT notification_id, originator_id, originator_version, topic, "
            f"sequence FROM {table} ORDER BY notification_id"
        )

    async def append(
        self,
        originator_id: UUID | str,
        originator_version: int,
        topic: str,
        tracking: Tracking,
    ) -> None:
        async with self.datastore.transaction(commit=True) as conn:
            await self.record_tracking(conn, tracking)
            await conn.execute(
                self._append_statement,
                tracking.notification_id,
                str(originator_id),
                originator_version,
                topic,
            )

    async def entries(self) -> list[AuditEntry]:
        async with self.datastore.transaction(commit=False) as conn:
            rows = await conn.fetch(self._select_statement)
        return [AuditEntry(*row) for row in rows]
