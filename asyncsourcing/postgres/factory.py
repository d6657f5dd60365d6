"""The infrastructure factory of the Postgres backend."""

from __future__ import annotations

from typing import TYPE_CHECKING

from asyncsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    InfrastructureFactory,
    ProcessRecorder,
)
from asyncsourcing.postgres.datastore import PostgresDatastore
from asyncsourcing.postgres.recorders import (
    PostgresAggregateRecorder,
    PostgresApplicationRecorder,
    PostgresProcessRecorder,
    PostgresTrackingRecorder,
)
from asyncsourcing.postgres.settings import PostgresSettings

if TYPE_CHECKING:
    from eventsourcing.utils import Environment, EnvType

__all__ = ["PostgresFactory"]


class PostgresFactory(InfrastructureFactory[PostgresTrackingRecorder]):
    """Recorders on one :class:`PostgresDatastore`, configured by ``POSTGRES_*``.

    The connection is given by ``POSTGRES_DBNAME``, ``POSTGRES_HOST``,
    ``POSTGRES_PORT``, ``POSTGRES_USER`` and ``POSTGRES_PASSWORD``, or by a URL
    in ``POSTGRES_URL`` (else ``DATABASE_URL``) whose parts those variables
    override (see :mod:`asyncsourcing.postgres.settings`).

    Table names follow eventsourcing 9.5: ``<name>_events`` (``stored_events``
    without a name), ``<name>_snapshots`` and ``<name>_tracking``
    (``notification_tracking``), ``<name>`` being the environment's name,
    lower-cased. Constructing the factory validates the settings (one
    :class:`~asyncsourcing.postgres.settings.PostgresSettingsError` names every
    missing or malformed variable) but does not connect. All its recorders
    share the datastore's pool, LISTEN connection and position boards;
    :meth:`close` closes them.
    """

    # Its topic is the public name, "asyncsourcing.postgres:PostgresFactory",
    # where InfrastructureFactory.construct() finds it.
    __module__ = "asyncsourcing.postgres"

    POSTGRES_URL = "POSTGRES_URL"
    DATABASE_URL = "DATABASE_URL"
    POSTGRES_DBNAME = "POSTGRES_DBNAME"
    POSTGRES_HOST = "POSTGRES_HOST"
    POSTGRES_PORT = "POSTGRES_PORT"
    POSTGRES_USER = "POSTGRES_USER"
    POSTGRES_PASSWORD = "POSTGRES_PASSWORD"
    POSTGRES_GET_PASSWORD_TOPIC = "POSTGRES_GET_PASSWORD_TOPIC"
    POSTGRES_SCHEMA = "POSTGRES_SCHEMA"
    POSTGRES_POOL_SIZE = "POSTGRES_POOL_SIZE"
    POSTGRES_MAX_OVERFLOW = "POSTGRES_MAX_OVERFLOW"
    POSTGRES_CONNECT_TIMEOUT = "POSTGRES_CONNECT_TIMEOUT"
    POSTGRES_CONN_MAX_AGE = "POSTGRES_CONN_MAX_AGE"
    POSTGRES_LOCK_TIMEOUT = "POSTGRES_LOCK_TIMEOUT"
    POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT = (
        "POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT"
    )
    POSTGRES_SSLMODE = "POSTGRES_SSLMODE"
    POSTGRES_POLL_INTERVAL = "POSTGRES_POLL_INTERVAL"
    POSTGRES_APPLICATION_NAME = "POSTGRES_APPLICATION_NAME"
    POSTGRES_CONCURRENT_WRITES = "POSTGRES_CONCURRENT_WRITES"
    ORIGINATOR_ID_TYPE = "ORIGINATOR_ID_TYPE"

    def __init__(self, env: Environment | EnvType | None = None) -> None:
        super().__init__(env)
        self.datastore = PostgresDatastore(PostgresSettings.from_env(self.env))

    def _events_table_name(self, purpose: str = "events") -> str:
        return f"{self.env.name.lower() or 'stored'}_{purpose}"

    def _tracking_table_name(self) -> str:
        return f"{self.env.name.lower() or 'notification'}_tracking"

    def construct_aggregate_recorder(
        self, purpose: str = "events"
    ) -> AggregateRecorder:
        return PostgresAggregateRecorder(
            datastore=self.datastore,
            events_table_name=self._events_table_name(purpose),
        )

    def construct_application_recorder(self) -> ApplicationRecorder:
        cls = self._resolve_recorder_class(
            self.APPLICATION_RECORDER_TOPIC, PostgresApplicationRecorder
        )
        recorder: ApplicationRecorder = cls(
            datastore=self.datastore,
            events_table_name=self._events_table_name(),
        )
        return recorder

    def construct_tracking_recorder(
        self, tracking_recorder_class: type[PostgresTrackingRecorder] | None = None
    ) -> PostgresTrackingRecorder:
        cls = self._resolve_recorder_class(
            self.TRACKING_RECORDER_TOPIC,
            PostgresTrackingRecorder,
            tracking_recorder_class,
        )
        recorder: PostgresTrackingRecorder = cls(
            datastore=self.datastore,
            tracking_table_name=self._tracking_table_name(),
        )
        return recorder

    def construct_process_recorder(self) -> ProcessRecorder:
        cls = self._resolve_recorder_class(
            self.PROCESS_RECORDER_TOPIC, PostgresProcessRecorder
        )
        recorder: ProcessRecorder = cls(
            datastore=self.datastore,
            events_table_name=self._events_table_name(),
            tracking_table_name=self._tracking_table_name(),
        )
        return recorder

    async def close(self) -> None:
        """Close the datastore: its pool, LISTEN connection and boards."""
        await self.datastore.close()
