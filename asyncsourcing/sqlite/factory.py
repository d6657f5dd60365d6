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
    ProgrammingError,
)
from asyncsourcing.sqlite.datastore import DEFAULT_POLL_INTERVAL, SQLiteDatastore
from asyncsourcing.sqlite.recorders import (
    SHARED_TRACKING_TABLE,
    SQLiteAggregateRecorder,
    SQLiteApplicationRecorder,
    SQLiteProcessRecorder,
    SQLiteRecorder,
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
    - ``SQLITE_TRACKING_TABLE``: the tracking table of the factory's views
      (tracking recorders), instead of the default below;
    - ``CREATE_TABLE``: false when the tables are made elsewhere.

    Tables:

    - events: eventsourcing's ``stored_events`` and ``stored_snapshots``,
      whatever the environment's name, so that both libraries read the same
      file: give each application and each event-sourced projection a file
      of its own (``MYPROJECTION_SQLITE_DBNAME``);
    - a view's tracking (:meth:`construct_tracking_recorder`):
      ``<name>_tracking``, ``<name>`` being the environment's name
      lower-cased (a projection runner names it after the projection), as
      on PostgreSQL, so that views of one application share a file without
      sharing positions; eventsourcing's ``tracking`` without a name;
    - an event-sourced projection's tracking (:meth:`construct_process_recorder`):
      eventsourcing's ``tracking``, which its process recorders expect.

    A view or process recorder of a named factory claims, per application,
    its tracking rows for the environment's name: a second projection using
    the same rows raises
    :class:`~asyncsourcing.sqlite.recorders.TrackingConflictError`. A view
    whose default ``<name>_tracking`` has no position of an application
    while ``tracking`` has an unclaimed one (the file of an older version)
    raises :class:`~asyncsourcing.sqlite.recorders.TrackingUpgradeError`
    instead of processing from the start.
    """

    # The modules' layout is private: the factory's topic is the package's.
    __module__ = "asyncsourcing.sqlite"

    SQLITE_DBNAME = "SQLITE_DBNAME"
    SQLITE_LOCK_TIMEOUT = "SQLITE_LOCK_TIMEOUT"
    SQLITE_POLL_INTERVAL = "SQLITE_POLL_INTERVAL"
    SQLITE_SINGLE_ROW_TRACKING = "SINGLE_ROW_TRACKING"
    SQLITE_TRACKING_TABLE = "SQLITE_TRACKING_TABLE"
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
        self._tracking_table_setting = (
            self.env.get(self.SQLITE_TRACKING_TABLE) or ""
        ).strip()
        if self._tracking_table_setting:
            try:
                SQLiteRecorder.check_identifier_length(self._tracking_table_setting)
            except ProgrammingError as error:
                msg = f"Invalid {self._keys(self.SQLITE_TRACKING_TABLE)}: {error}"
                raise SQLiteSettingsError(msg) from None
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

    def tracking_table_name(self) -> str:
        """The tracking table of the factory's views.

        ``SQLITE_TRACKING_TABLE`` if set; else ``<name>_tracking``, the
        environment's name lower-cased, or eventsourcing's ``tracking``
        when the environment has no name.
        """
        if self._tracking_table_setting:
            return self._tracking_table_setting
        name = self.env.name
        if not name:
            return SHARED_TRACKING_TABLE
        table = f"{name.lower()}_tracking"
        try:
            SQLiteRecorder.check_identifier_length(table)
        except ProgrammingError:
            msg = (
                f"Cannot name the SQLite tracking table of {name!r} after it: "
                f"{table!r} is not a plain identifier (letters, digits and "
                "underscores, not starting with a digit); rename it, or set "
                f"{self._keys(self.SQLITE_TRACKING_TABLE)} to a table name"
            )
            raise ProgrammingError(msg) from None
        return table

    def construct_tracking_recorder(
        self, tracking_recorder_class: type[SQLiteTrackingRecorder] | None = None
    ) -> SQLiteTrackingRecorder:
        cls = self._resolve_recorder_class(
            self.TRACKING_RECORDER_TOPIC,
            self.tracking_recorder_class,
            tracking_recorder_class,
        )
        table = self.tracking_table_name()
        recorder: SQLiteTrackingRecorder
        if table == SHARED_TRACKING_TABLE:
            # As before, and as for eventsourcing: views whose __init__
            # takes the datastore alone keep working.
            recorder = cls(self.datastore)
        else:
            try:
                recorder = cls(self.datastore, tracking_table_name=table)
            except TypeError as error:
                if "tracking_table_name" not in str(error):
                    raise
                source = (
                    f"set by {self._keys(self.SQLITE_TRACKING_TABLE)}"
                    if self._tracking_table_setting
                    else f"named after {self.env.name!r}"
                )
                msg = (
                    f"{cls.__qualname__}.__init__() must pass keyword arguments "
                    "(tracking_table_name) on to SQLiteTrackingRecorder: its "
                    f"tracking table is {table!r}, {source}"
                )
                raise TypeError(msg) from error
        self._own(recorder, check_upgrade=not self._tracking_table_setting)
        return recorder

    def construct_process_recorder(self) -> ProcessRecorder:
        cls = self._resolve_recorder_class(
            self.PROCESS_RECORDER_TOPIC, self.process_recorder_class
        )
        # Always eventsourcing's "tracking": an event-sourced projection's
        # file is shared with eventsourcing's process applications.
        recorder: ProcessRecorder = cls(self.datastore)
        if isinstance(recorder, SQLiteTrackingRecorder):
            self._own(recorder, check_upgrade=False)
        return recorder

    def _own(self, recorder: SQLiteTrackingRecorder, *, check_upgrade: bool) -> None:
        """Have ``recorder`` claim its tracking rows for the environment's name."""
        if self.env.name:
            recorder.owner_name = self.env.name
            recorder.check_upgrade = check_upgrade

    async def close(self) -> None:
        """Close the datastore's connections; idempotent."""
        await self.datastore.close()
