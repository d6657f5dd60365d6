"""The audit log in SQLite: an entries table beside the tracking tables."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from asyncsourcing.persistence import Tracking
from asyncsourcing.sqlite import SQLiteDatastore, SQLiteTrackingRecorder
from examples.auditlog.views import AuditEntry, AuditLogView


class SQLiteAuditLog(SQLiteTrackingRecorder, AuditLogView):
    def __init__(self, datastore: SQLiteDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        self.entries_table_name = (
            self.tracking_table_name.removesuffix("tracking") + "entries"
        )
        self.check_identifier_length(self.entries_table_name)
        table = self.entries_table_name
        self.sql_create_statements.append(
            f"CREATE TABLE IF NOT EXISTS {table} ("
            "notification_id INTEGER PRIMARY KEY, originator_id TEXT, "
            "originator_version INTEGER, topic TEXT, sequence INTEGER)"
        )
        # Writers of one database take turns (BEGIN IMMEDIATE): the next
        # sequence number is read and used in one write transaction.
        self._append_statement = (
            f"INSERT INTO {table} SELECT ?, ?, ?, ?, "
            f"coalesce((SELECT max(sequence) FROM {table}), 0) + 1"
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
        async with self.datastore.transaction(commit=True) as connection:
            await self.record_tracking(connection, tracking)
            await connection.execute(
                self._append_statement,
                (
                    tracking.notification_id,
                    str(originator_id),
                    originator_version,
                    topic,
                ),
            )

    async def entries(self) -> list[AuditEntry]:
        async with self.datastore.transaction(commit=False) as connection:
            rows = await connection.execute_fetchall(self._select_statement)
        return [AuditEntry(*row) for row in rows]
