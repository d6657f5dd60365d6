"""The SQLite backend, on aiosqlite: ``PERSISTENCE_MODULE=asyncsourcing.sqlite``.

Its tables are eventsourcing 9.5's, so a database file written by either
library is read, subscribed to and projected by the other. Modules:

- :mod:`~asyncsourcing.sqlite.datastore`: :class:`SQLiteDatastore`, the
  :mod:`asyncsourcing.sql` datastore protocol (transactions, table
  creation, position boards) on :mod:`.connections` (a writer and readers),
  with :mod:`.errors` (sqlite3 to PEP 249 errors);
- :mod:`~asyncsourcing.sqlite.notifier`: the process-wide wake-ups of
  subscriptions and waiters;
- :mod:`~asyncsourcing.sqlite.recorders`: the recorders, those of
  :mod:`asyncsourcing.sql` given SQLite's SQL: :mod:`.dialect`,
  :mod:`.events` (events tables) and :mod:`.tracking` (tracking tables);
- :mod:`~asyncsourcing.sqlite.ownership`: which projection records which
  application's positions in which tracking table;
- :mod:`~asyncsourcing.sqlite.subscription`: :class:`SQLiteSubscription`;
- :mod:`~asyncsourcing.sqlite.leases`: the leases of its projections' runners;
- :mod:`~asyncsourcing.sqlite.settings`: :class:`SQLiteSettings`, the
  settings and their parsing;
- :mod:`~asyncsourcing.sqlite.factory`: :class:`SQLiteFactory`, the one
  infrastructure factory of this module.
"""

from asyncsourcing.sqlite.datastore import SQLiteDatastore
from asyncsourcing.sqlite.factory import SQLiteFactory
from asyncsourcing.sqlite.notifier import SQLiteNotifier
from asyncsourcing.sqlite.recorders import (
    SQLiteAggregateRecorder,
    SQLiteApplicationRecorder,
    SQLiteProcessRecorder,
    SQLiteRecorder,
    SQLiteTrackingRecorder,
    TrackingConflictError,
    TrackingUpgradeError,
)
from asyncsourcing.sqlite.settings import SQLiteSettings, SQLiteSettingsError
from asyncsourcing.sqlite.subscription import SQLiteSubscription

__all__ = [
    "SQLiteAggregateRecorder",
    "SQLiteApplicationRecorder",
    "SQLiteDatastore",
    "SQLiteFactory",
    "SQLiteNotifier",
    "SQLiteProcessRecorder",
    "SQLiteRecorder",
    "SQLiteSettings",
    "SQLiteSettingsError",
    "SQLiteSubscription",
    "SQLiteTrackingRecorder",
    "TrackingConflictError",
    "TrackingUpgradeError",
]
