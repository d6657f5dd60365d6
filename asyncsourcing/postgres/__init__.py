"""The PostgreSQL backend, on asyncpg.

Select it with ``PERSISTENCE_MODULE=asyncsourcing.postgres`` and the
``POSTGRES_*`` variables of ``eventsourcing`` (``POSTGRES_DBNAME``,
``POSTGRES_HOST``, ``POSTGRES_PORT``, ``POSTGRES_USER``, ``POSTGRES_PASSWORD``,
``POSTGRES_SCHEMA``, ...). Tables are those of ``eventsourcing.postgres`` 9.5.

Modules: :mod:`.settings` (settings and their parsing) and :mod:`.urls`
(connection URLs), :mod:`.datastore` (the :mod:`asyncsourcing.sql`
datastore protocol: transactions, table creation, position boards) on
:mod:`.connections` (the pool), :mod:`.listener` (the shared LISTEN
connection), :mod:`.recorders` (those of :mod:`asyncsourcing.sql`, given
PostgreSQL's SQL: :mod:`.dialect`, :mod:`.events`, :mod:`.tracking`),
:mod:`.subscription`, :mod:`.leases`, :mod:`.factory`, :mod:`.errors`
(asyncpg to PEP 249 errors), :mod:`.identifiers`, :mod:`.concurrent`
(concurrent write mode, ``POSTGRES_CONCURRENT_WRITES``).
"""

from asyncsourcing.postgres.concurrent import EventsTableModeError
from asyncsourcing.postgres.datastore import PostgresConnection, PostgresDatastore
from asyncsourcing.postgres.factory import PostgresFactory
from asyncsourcing.postgres.listener import PostgresListener
from asyncsourcing.postgres.recorders import (
    PostgresAggregateRecorder,
    PostgresApplicationRecorder,
    PostgresProcessRecorder,
    PostgresRecorder,
    PostgresTrackingRecorder,
)
from asyncsourcing.postgres.settings import PostgresSettings, PostgresSettingsError
from asyncsourcing.postgres.subscription import PostgresSubscription

__all__ = [
    "EventsTableModeError",
    "PostgresAggregateRecorder",
    "PostgresApplicationRecorder",
    "PostgresConnection",
    "PostgresDatastore",
    "PostgresFactory",
    "PostgresListener",
    "PostgresProcessRecorder",
    "PostgresRecorder",
    "PostgresSettings",
    "PostgresSettingsError",
    "PostgresSubscription",
    "PostgresTrackingRecorder",
]
