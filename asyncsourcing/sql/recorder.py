"""The base of the SQL recorders: a datastore, and the statements that make
the recorder's tables."""

from __future__ import annotations

from typing import Any, ClassVar, Generic

from asyncsourcing.persistence import Recorder
from asyncsourcing.sql.datastore import Conn, SQLDatastore
from asyncsourcing.sql.dialects import Dialect

__all__ = ["SQLRecorder"]


class SQLRecorder(Recorder, Generic[Conn]):
    """A recorder whose tables live in the database of ``datastore``.

    Its tables are made by the statements of :attr:`sql_create_statements`,
    run in order, in one transaction, by :meth:`create_table`, and also
    before the datastore next hands out a connection, so that a recorder
    constructed without IO is ready when first used (unless tables are made
    elsewhere: ``CREATE_TABLE=false``). A subclass, a view say, adds its
    tables' statements either by extending
    :meth:`_construct_create_table_statements` or by appending to
    :attr:`sql_create_statements` in its ``__init__``, after calling its
    base's; names derived from the recorder's should be checked with
    :meth:`check_identifier_length`.

    A backend's recorder base class (``SQLiteRecorder``, ``PostgresRecorder``)
    sets :attr:`dialect` and makes the dialects of the tables
    (``_construct_events_dialect``, ``_construct_tracking_dialect``); it
    comes first among the bases of the backend's recorders, so that its
    methods, and its ``__init__``'s checks, come before those of the
    recorders written here.
    """

    dialect: ClassVar[Dialect[Any]]
    """The backend's SQL for what is not about one table: set by the
    backend's recorder base class."""

    def __init__(self, datastore: SQLDatastore[Conn]) -> None:
        super().__init__()
        self.datastore = datastore
        self.sql_create_statements: list[str] = (
            self._construct_create_table_statements()
        )
        datastore.create_tables_on_first_use(self._create_tables)

    def _construct_create_table_statements(self) -> list[str]:
        """The statements that make the recorder's tables: each subclass
        adds its own to its base's (which set their attributes first)."""
        return []

    @classmethod
    def check_identifier_length(cls, name: str) -> None:
        """Raise :class:`ProgrammingError` unless ``name`` can name a table
        of this backend as it is: the backend's rule (see
        :class:`SQLiteRecorder <asyncsourcing.sqlite.SQLiteRecorder>` and
        :class:`PostgresRecorder <asyncsourcing.postgres.PostgresRecorder>`)."""
        cls.dialect.check_identifier(name)

    async def create_table(self) -> None:
        """Create the recorder's tables if they do not exist."""
        async with self.datastore.creating_tables() as conn:
            await self._create_tables(conn)
        self.datastore.tables_created(self._create_tables)

    async def _create_tables(self, conn: Conn) -> None:
        """Make the tables in the transaction of ``conn``; idempotent.
        Subclasses may do more around it (a migration, a function)."""
        for statement in self.sql_create_statements:
            await self.dialect.execute_create(conn, statement)
