"""The SQLite infrastructure factory, configured as eventsourcing's is."""

from __future__ import annotations

from typing import TYPE_CHECKING

from asyncsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    InfrastructureFactory,
    ProcessRecorder,
    ProgrammingError,
)
from asyncsourcing.sqlite.recorders import (
    SHARED_TRACKING_TABLE,
    SQLiteAggregateRecorder,
    SQLiteApplicationRecorder,
    SQLiteProcessRecorder,
    SQLiteRecorder,
    SQLiteTrackingRecorder,
)

# SQLiteSettingsError is re-exported: it was defined here.
from asyncsourcing.sqlite.settings import SQLiteSettings, SQLiteSettingsError

if TYPE_CHECKING:
    from eventsourcing.utils import Environment, EnvType

__all__ = ["SQLiteFactory", "SQLiteSettingsError"]


class SQLiteFactory(InfrastructureFactory[SQLiteTrackingRecorder]):
    """Recorders on one SQLite database, through one :class:`SQLiteDatastore`.

    Settings, read into :attr:`settings` by
    :meth:`SQLiteSettings.from_env() <asyncsourcing.sqlite.SQLiteSettings.from_env>`
    (each may be prefixed with the environment's name):

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
        #: The settings read from the environment.
        self.settings = SQLiteSettings.from_env(self.env)
        self.datastore = self.settings.create_datastore()

    def env_create_table(self) -> bool:
        """False when ``CREATE_TABLE`` says tables are made elsewhere."""
        return self.settings.create_tables

    def _keys(self, key: str) -> str:
        return " or ".join(self.env.create_keys(key))

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
        if self.settings.tracking_table:
            return self.settings.tracking_table
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
                    if self.settings.tracking_table
                    else f"named after {self.env.name!r}"
                )
                msg = (
                    f"{cls.__qualname__}.__init__() must pass keyword arguments "
                    "(tracking_table_name) on to SQLiteTrackingRecorder: its "
                    f"tracking table is {table!r}, {source}"
                )
                raise TypeError(msg) from error
        self._own(recorder, check_upgrade=not self.settings.tracking_table)
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
