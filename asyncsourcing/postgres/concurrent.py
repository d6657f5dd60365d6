"""Concurrent write mode: events tables written without the table lock.

By default every save takes eventsourcing's ``LOCK TABLE ... IN EXCLUSIVE
MODE``, so that notification ids commit in their order and a reader that
reads ``notification_id > last ORDER BY notification_id`` never passes over
an id that commits later. Writers then take turns, in every process.

With ``POSTGRES_CONCURRENT_WRITES=true`` writers do not lock the table, so
ids may commit out of order, and readers keep to a *visibility horizon*
instead: they pass only ids below it, all of whose transactions have ended.

*The writers' protocol.* First thing in its transaction, before its insert
calls ``nextval`` on the ``notification_id`` sequence, a writer reads the
sequence's last value ``L`` (``pg_sequence_last_value()``, which is not
transactional; 0 before the first id) and takes
``pg_advisory_xact_lock_shared(K, L & 0x7fffffff)``, held to the end of the
transaction, commit or abort, where ``K`` is the table's key
(:func:`table_key`). The ids it then gets are all greater than ``L``.
Shared locks do not conflict with each other: writers never wait for one
another (but for rows they both write).

*The readers' horizon.* A reader first reads ``S``, the sequence's last
value, then lists the advisory locks of the table's key in ``pg_locks`` (one
snapshot of the whole lock table), reconstructing each writer's ``L`` from
its low 31 bits as the largest value not above ``S`` with those bits. The
horizon is ``H = min(S + 1, min(L_i + 1))``, and the reader's next
statement, which takes its snapshot after that, passes only ids below ``H``,
in order.

*Why no id below H can commit after a reader has passed it.* Take a writer
that got an id ``x < H``. Had it been running at the scan, its lock would
have been listed with ``L < x`` (its ids are above its ``L``), so
``H <= L + 1 <= x``, a contradiction (for a writer that read its ``L`` after
``S``, the reconstruction gives less than its ``L``: only more cautious).
Had it taken its lock after the scan, it called ``nextval`` after the scan,
so after ``S`` was read: ``x > S >= H - 1``, again a contradiction. So it
had ended before the scan, and the reader's later snapshot sees it
committed, or never sees it (rolled back). Nothing is ever passed over on a
timer: a writer that stays open holds the horizon back (a *visibility
stall*) until it ends. Ids below a horizon, once all ended, stay so: a
reader keeps the greatest horizon it has computed (it never moves back,
which matters to a subscription that reads the last id and then the events
up to it).

*What it needs*, checked once per recorder where it can be: ``READ
COMMITTED`` reads (the horizon function refuses other isolation levels,
whose snapshot may predate the scan) on the primary server (a standby does
not see the primary's locks: refused too); a sequence of ``CACHE 1`` and a
positive increment (a session's cached values could be below ``L``); fewer
than ``2**31`` ids issued while a writer stays open (the reconstruction's
bound); and every writer of the table following the protocol. A trigger on
the table refuses the inserts of transactions that have not taken the lock
(eventsourcing's writers, asyncsourcing's in table-lock mode, its earlier
versions), with an error that names the setting.

*Notifications.* A writer's transaction does not NOTIFY: PostgreSQL
serialises the commits of all the transactions that NOTIFY
(``PreCommit_Notify`` takes a cluster-wide lock held until the commit's WAL
is flushed), which would make concurrent writers take turns again. Instead
each datastore NOTIFYs the table's channel once a write has committed, from
a short transaction of its own (:class:`ChannelNotifier`). A lost
notification delays subscribers to their next poll; while the horizon is
held back they poll every :data:`STALL_POLL_INTERVAL` seconds, since a
writer that rolls back notifies no one.

The mode is recorded on the table, whose comment starts with
:data:`MARKER`: a recorder in either mode refuses a table of the other
(:class:`EventsTableModeError`). eventsourcing's readers do not know the
horizon: they must not follow a table in this mode.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from eventsourcing.persistence import ProgrammingError

from asyncsourcing.postgres.identifiers import (
    dollar_quote,
    qualified,
    quote_identifier,
)

__all__ = [
    "CONCURRENT_WRITER_SETTING",
    "GUARD_TRIGGER_NAME",
    "MARKER",
    "NOTIFY_INTERVAL",
    "STALL_POLL_INTERVAL",
    "ChannelNotifier",
    "EventsTableModeError",
    "table_key",
]

logger = logging.getLogger(__name__)

#: The start of the comment of an events table in concurrent write mode.
MARKER = "asyncsourcing: concurrent writes"

#: How often a subscription reads again while the horizon is held back.
STALL_POLL_INTERVAL = 0.05

#: The least time between two notifications of a datastore's commits.
NOTIFY_INTERVAL = 0.005

#: The trigger that refuses inserts that do not follow the protocol.
GUARD_TRIGGER_NAME = "asyncsourcing_concurrent_writes"

#: The transaction-local setting by which a writer tells the trigger that
#: it holds its lock (set right after taking it).
CONCURRENT_WRITER_SETTING = "asyncsourcing.concurrent_writer"

HORIZON_FUNCTION_NAME = "asyncsourcing_notification_horizon"
GUARD_FUNCTION_NAME = "asyncsourcing_concurrent_writes_guard"


class _Executor(Protocol):
    async def execute(self, query: str, *args: Any) -> str: ...


# The low 31 bits of a value: advisory lock keys are int4, kept non-negative
# so that they read back unchanged from pg_locks' oid columns.
_LOW_BITS = 0x7FFFFFFF


def table_key(schema: str, table_name: str) -> int:
    """The first key of the writers' advisory locks on ``schema.table_name``.

    The first four bytes, big-endian, of the SHA-256 digest of the table's
    quoted, schema-qualified name (``"public"."stored_events"``, UTF-8), with
    the top bit cleared: a stable non-negative int4, the same in every
    process. Two tables whose keys collide, or another user of two-key
    advisory locks with the same first key, only hold each other's horizon
    back: never a skip.
    """
    digest = hashlib.sha256(qualified(schema, table_name).encode()).digest()
    return int.from_bytes(digest[:4], "big") & _LOW_BITS


class EventsTableModeError(ProgrammingError):
    """An events table is in one write mode and the recorder in the other, or
    the table cannot be written in the recorder's mode.

    Raised once per recorder, when it creates its tables or first uses them.
    """


def table_lock_on_concurrent_table(table: str) -> EventsTableModeError:
    """The error of a recorder in table-lock mode on a table in concurrent mode."""
    return EventsTableModeError(
        f"The events table {table} is in concurrent write mode (its comment "
        f"starts with {MARKER!r}), but this recorder uses the table lock "
        "(POSTGRES_CONCURRENT_WRITES is not true): its reads would pass over "
        "events that concurrent writers commit late, and the table refuses its "
        "inserts. Set POSTGRES_CONCURRENT_WRITES=true (or <NAME>_POSTGRES_"
        "CONCURRENT_WRITES for one application) in every process that uses "
        "this table."
    )


def concurrent_on_table_lock_table(table: str) -> EventsTableModeError:
    """The error of a recorder in concurrent mode on an unmarked table."""
    return EventsTableModeError(
        f"The events table {table} exists but is not in concurrent write mode "
        "(POSTGRES_CONCURRENT_WRITES=true): it has been written with the table "
        "lock, by asyncsourcing or by eventsourcing, whose readers rely on it. "
        "eventsourcing 9.5's readers (and asyncsourcing's in table-lock mode) "
        "would pass over events that concurrent writers commit out of order, "
        "for good. To switch it deliberately, once every process that reads "
        "or writes it otherwise has stopped, run "
        f"COMMENT ON TABLE {table} IS '{MARKER}'; "
        "and start a recorder with CREATE_TABLE=true to install the mode's "
        "functions and trigger. Or use a new table (another application name, "
        "or another POSTGRES_SCHEMA), or leave POSTGRES_CONCURRENT_WRITES "
        "unset."
    )


def missing_objects(table: str) -> EventsTableModeError:
    """The error of a recorder in concurrent mode, with ``CREATE_TABLE=false``,
    on a marked table without the mode's functions or trigger."""
    return EventsTableModeError(
        f"The events table {table} is in concurrent write mode, but its "
        "functions or its trigger are missing: start a recorder with "
        "POSTGRES_CONCURRENT_WRITES=true and CREATE_TABLE=true once to "
        "install them."
    )


def unsuitable_sequence(table: str, sequence: str, detail: str) -> EventsTableModeError:
    """The error of a recorder in concurrent mode on a table whose
    notification id sequence cannot give the mode's guarantee."""
    return EventsTableModeError(
        f"The notification id sequence {sequence} of the events table {table} "
        f"{detail}: in concurrent write mode (POSTGRES_CONCURRENT_WRITES=true) "
        "every id must be greater than the sequence's last value when its "
        "writer started (CACHE 1 and a positive INCREMENT)."
    )


def sql_literal(text: str) -> str:
    """``text`` as a standard SQL string constant."""
    return "'" + text.replace("'", "''") + "'"


def writer_prelude(key: int, sequence: str) -> str:
    """The PL/pgSQL statements that a concurrent writer runs before its
    insert: the shared lock keyed by the sequence's last value, then the
    setting that tells the guard trigger so."""
    return (
        # Before any nextval: the ids this transaction gets are all greater.
        f"PERFORM pg_advisory_xact_lock_shared({key}, "
        f"(coalesce(pg_sequence_last_value({sql_literal(sequence)}::regclass), 0) "
        f"& {_LOW_BITS})::integer); "
        f"PERFORM set_config('{CONCURRENT_WRITER_SETTING}', 'on', true); "
    )


def create_horizon_function_statement(schema: str) -> str:
    """The schema's horizon function: ``(horizon, last_issued)`` of the
    table whose sequence and key are given (see the module's docstring)."""
    body = (
        "DECLARE lowest bigint; "
        "BEGIN "
        # A snapshot taken before the scan (REPEATABLE READ, SERIALIZABLE)
        # could miss a writer that committed in between.
        "IF current_setting('transaction_isolation') <> 'read committed' THEN "
        "RAISE EXCEPTION 'asyncsourcing: an events table in concurrent write "
        "mode is read in READ COMMITTED transactions only, not %', "
        "current_setting('transaction_isolation') "
        "USING ERRCODE = 'feature_not_supported'; "
        "END IF; "
        # A standby sees neither the primary's locks nor its sequences as
        # they are now.
        "IF pg_is_in_recovery() THEN "
        "RAISE EXCEPTION 'asyncsourcing: an events table in concurrent write "
        "mode is read on the primary server only, not on a standby' "
        "USING ERRCODE = 'feature_not_supported'; "
        "END IF; "
        # S first, then the locks: a writer that locks after the scan gets
        # ids above S. (Statements of a function run in order.)
        "last_issued := coalesce(pg_sequence_last_value(seq), 0); "
        # Each writer's L: the largest value <= S with its low 31 bits.
        "SELECT min(last_issued - ((last_issued - l.objid::bigint) "
        f"& {_LOW_BITS})) INTO lowest "
        "FROM pg_catalog.pg_locks l "
        "WHERE l.locktype = 'advisory' AND l.objsubid = 2 "
        "AND l.classid = table_key::oid "
        "AND l.database = (SELECT oid FROM pg_catalog.pg_database "
        "WHERE datname = current_database()); "
        # least() ignores NULL: no writer.
        "horizon := least(last_issued + 1, lowest + 1); "
        "END;"
    )
    return (
        f"CREATE OR REPLACE FUNCTION {qualified(schema, HORIZON_FUNCTION_NAME)}"
        "(seq regclass, table_key integer, "
        "OUT horizon bigint, OUT last_issued bigint) "
        f"LANGUAGE plpgsql VOLATILE AS {dollar_quote(body)}"
    )


def horizon_statement(schema: str) -> str:
    """Calls the horizon function: ``$1`` the sequence, ``$2`` the table's key."""
    return (
        "SELECT horizon, last_issued FROM "
        f"{qualified(schema, HORIZON_FUNCTION_NAME)}($1::text::regclass, $2::integer)"
    )


def create_guard_statements(schema: str, table: str) -> list[str]:
    """The schema's guard function, and the statement that makes the
    trigger on ``table`` (a qualified name) that calls it."""
    guard = qualified(schema, GUARD_FUNCTION_NAME)
    body = (
        "BEGIN "
        f"IF current_setting('{CONCURRENT_WRITER_SETTING}', true) "
        "IS DISTINCT FROM 'on' THEN "
        "RAISE EXCEPTION 'asyncsourcing: the events table %.% is in concurrent "
        "write mode: only asyncsourcing recorders with "
        "POSTGRES_CONCURRENT_WRITES=true may insert into it', "
        "quote_ident(TG_TABLE_SCHEMA), quote_ident(TG_TABLE_NAME) "
        "USING ERRCODE = 'feature_not_supported', "
        "HINT = 'Inserts that do not take its advisory lock (eventsourcing''s, "
        "those of the table lock mode) could commit behind the readers'' "
        "horizon, and be passed over.'; "
        "END IF; "
        "RETURN NULL; "
        "END;"
    )
    return [
        f"CREATE OR REPLACE FUNCTION {guard}() RETURNS trigger "
        f"LANGUAGE plpgsql AS {dollar_quote(body)}",
        f"CREATE TRIGGER {quote_identifier(GUARD_TRIGGER_NAME)} "
        f"BEFORE INSERT ON {table} FOR EACH STATEMENT EXECUTE FUNCTION {guard}()",
    ]


class ChannelNotifier:
    """Sends ``NOTIFY`` on channels after commits, outside the commits.

    :meth:`notify` returns at once. The first notification after a quiet
    spell is sent at once; then, while commits keep coming, at most one
    statement per ``interval`` seconds carries the channels of all the
    commits since the last (a statement costs the writers' process and the
    server a round trip, about as much as a save costs them). So a
    subscriber in another process learns of a commit at once when writes
    are few, and within ``interval`` when they are many. A failed send is
    logged: subscribers read again at their next poll.
    """

    def __init__(
        self,
        connection: Callable[[], AbstractAsyncContextManager[_Executor]],
        *,
        interval: float = NOTIFY_INTERVAL,
    ) -> None:
        self._connection = connection
        self._interval = interval
        self._pending: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def notify(self, channel: str) -> None:
        """Send ``NOTIFY channel`` soon (nothing once closed)."""
        if self._closed:
            return
        self._pending.add(channel)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="asyncsourcing postgres notifier"
            )

    async def _run(self) -> None:
        try:
            while self._pending:
                channels = sorted(self._pending)
                self._pending.clear()
                try:
                    # Simple protocol (no parameters): no statement to
                    # prepare. A connection per statement, not kept while
                    # sleeping: a pool of one must be able to lend it.
                    async with self._connection() as conn:
                        await conn.execute(
                            "; ".join(f"NOTIFY {quote_identifier(c)}" for c in channels)
                        )
                except Exception:
                    logger.warning(
                        "Could not notify %s: subscribers will read at their next poll",
                        ", ".join(channels),
                        exc_info=True,
                    )
                if self._closed:
                    break
                await asyncio.sleep(self._interval)
        finally:
            self._task = None

    async def aclose(self, timeout: float) -> None:
        """Send what is pending, for at most ``timeout`` seconds, then stop."""
        self._closed = True
        task = self._task
        if task is None:
            return
        try:
            # wait() raises no error of the task, only our own cancellation.
            await asyncio.wait({task}, timeout=timeout)
        finally:
            if not task.done():
                task.cancel()
                await asyncio.wait({task})
