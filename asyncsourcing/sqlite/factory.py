"""The SQLite infrastructure factory, configured as eventsourcing's is."""

from __future__ import annotations

import math
from typing import Literal

from eventsourcing.utils import Environment, EnvType, strtobool

from asyncsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    InfrastructureFactory,
    InfrastructureFactoryError,
    ProcessRecorder,
)
from asyncsourcing.sqlite.datastore import DEFAULT_POLL_INTERVAL, SQLiteDatastore
from asyncsourcing.sqlite.recorders import (
    SQLiteAggregateRecorder,
    SQLiteApplicationRecorder,
    SQLiteProcessRecorder,
    SQLiteTrackingRecorder,
)

__all__ = ["SQLiteFactory", "SQLiteSettingsError"]


class SQLiteSettingsError(InfrastructureFactoryError, OSError):
    """An SQLite setting is missing or malformed; the message names it.

    An :class:`~eventsourcing.persistence.InfrastructureFactoryError`, like
    the other errors of constructing a factory, and an :class:`OSError`,
    which is what ``eventsourcing.sqlite`` raises for the same mistakes.
    """


class SQLiteFactory(InfrastructureFactory[SQLiteTrackingRecorder]):
    """Recorders on one SQLite database, through one :class:`SQLiteDatastore`.

    Settings (each may be prefixed with the environment's name):

    - ``SQLITE_DBNAME``: a file path, ``:memory:`` or a ``file:`` URI (required);
    - ``SQLITE_LOCK_TIMEOUT``: seconds to wait for another connection's lock
      (default 5);
    - ``SQLITE_POLL_INTERVAL``: seconds between reads that look for other
      processes' commits while something waits (default 0.1); commits in
      this process wake waiters directly;
    - ``ORIGINATOR_ID_TYPE``: "uuid" (default) or "text";
    - ``SINGLE_ROW_TRACKING``: must be true (the default): eventsourcing 9.5's
      single-row tracking is the only layout supported;
    - ``CREATE_TABLE``: false when the tables are made elsewhere.

    Table names are eventsourcing's: ``stored_events``, ``stored_snapshots``
    and ``tracking``, whatever the environment's name, so that both
    libraries read the same file. Give each application or view a database
    of its own with prefixed settings (``MYVIEW_SQLITE_DBNAME``).
    """

    # The modules' layout is private: the factory's topic is the package's.
    __module__ = "asyncsourcing.sqlite"

    SQLITE_DBNAME = "SQLITE_DBNAME"
    SQLITE_LOCK_TIMEOUT = "SQLITE_LOCK_TIMEOUT"
    SQLITE_POLL_INTERVAL = "SQLITE_POLL_INTERVAL"
    SQLITE_SINGLE_ROW_TRACKING = "SINGLE_ROW_TRACKING"
    ORIGINATOR_ID_TYPE = "ORIGINATOR_ID_TYPE"

    aggregate_recorder_class = SQLiteAggregateRecorder
    application_recorder_class = SQLiteApplicationRecorder
    tracking_recorder_class = SQLiteTrackingRecorder
    process_recorder_class = SQLiteProcessRecorder

    def __init__(self, env: Environment | EnvType | None = None) -> None:
        super().__init__(env)
        db_name = self.env.get(self.SQLITE_DBNAME)
        if not db_name:
            msg = (
                "SQLite database name not found in environment with keys: "
                f"{', '.join(self.env.create_keys(self.SQLITE_DBNAME))}"
            )
            raise SQLiteSettingsError(msg)
        if not self._bool_setting(self.SQLITE_SINGLE_ROW_TRACKING, default=True):
            msg = (
                f"{self._keys(self.SQLITE_SINGLE_ROW_TRACKING)} is false, but only "
                "single-row tracking (eventsourcing 9.5's layout) is supported"
            )
            raise SQLiteSettingsError(msg)
        originator_id_type = (self.env.get(self.ORIGINATOR_ID_TYPE) or "uuid").lower()
        if originator_id_type not in ("uuid", "text"):
            msg = (
                f"Invalid {self._keys(self.ORIGINATOR_ID_TYPE)} "
                f"{originator_id_type!r}: expected 'uuid' or 'text'"
            )
            raise SQLiteSettingsError(msg)
        id_type: Literal["uuid", "text"] = (
            "uuid" if originator_id_type == "uuid" else "text"
        )
        lock_timeout = self._seconds_setting(self.SQLITE_LOCK_TIMEOUT, allow_zero=True)
        poll_interval = self._seconds_setting(
            self.SQLITE_POLL_INTERVAL, allow_zero=False
        )
        self.datastore = SQLiteDatastore(
            db_name,
            lock_timeout=lock_timeout,
            poll_interval=poll_interval or DEFAULT_POLL_INTERVAL,
            originator_id_type=id_type,
            create_tables=self.env_create_table(),
        )

    def env_create_table(self) -> bool:
        """False when ``CREATE_TABLE`` says tables are made elsewhere."""
        return self._bool_setting(self.CREATE_TABLE, default=True)

    def _keys(self, key: str) -> str:
        return " or ".join(self.env.create_keys(key))

    def _bool_setting(self, key: str, *, default: bool) -> bool:
        value = (self.env.get(key) or "").strip()
        if not value:
            return default
        try:
            return strtobool(value)
        except ValueError:
            msg = f"Invalid {self._keys(key)} {value!r}: expected true or false"
            raise SQLiteSettingsError(msg) from None

    def _seconds_setting(self, key: str, *, allow_zero: bool) -> float | None:
        """A finite number of seconds, or None if unset."""
        value = (self.env.get(key) or "").strip()
        if not value:
            return None
        try:
            seconds = float(value)
        except ValueError:
            seconds = math.nan
        if not (
            math.isfinite(seconds) and (seconds >= 0 if allow_zero else seconds > 0)
        ):
            msg = (
                f"Invalid {self._keys(key)} {value!r}: expected a number of "
                f"seconds {'>= 0' if allow_zero else '> 0'}"
            )
            raise SQLiteSettingsError(msg)
        return seconds

    def construct_aggregate_recorder(
        self, purpose: str = "events"
    ) -> AggregateRecorder:
        return self.aggregate_recorder_class(
            self.datastore, events_table_name="stored_" + purpose
        )

    def construct_application_recorder(self) -> ApplicationRecorder:
        cls = self._resolve_recorder_class(
            self.APPLICATION_RECORDER_TOPIC, self.application_recorder_class
        )
        recorder: ApplicationRecorder = cls(self.datastore)
        return recorder

    def construct_tracking_recorder(
        self, tracking_recorder_class: type[SQLiteTrackingRecorder] | None = None
    ) -> SQLiteTrackingRecorder:
        cls = self._resolve_recorder_class(
            self.TRACKING_RECORDER_TOPIC,
            self.tracking_recorder_class,
            tracking_recorder_class,
        )
        recorder: SQLiteTrackingRecorder = cls(self.datastore)
        return recorder

    def construct_process_recorder(self) -> ProcessRecorder:
        cls = self._resolve_recorder_class(
            self.PROCESS_RECORDER_TOPIC, self.process_recorder_class
        )
        recorder: ProcessRecorder = cls(self.datastore)
        return recorder

    async def close(self) -> None:
        """Close the datastore's connections; idempotent."""
        await self.datastore.close()
