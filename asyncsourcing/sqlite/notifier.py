"""In-process wake-ups for SQLite databases.

SQLite has nothing like Postgres's LISTEN/NOTIFY. Within one process,
though, every commit goes through a datastore of this package, which tells
the database's :class:`SQLiteNotifier` once it has committed: the notifier
then wakes the subscriptions following that events table, and advances the
:class:`~asyncsourcing.waiting.PositionBoard` of that tracking table, with
no query and no polling. Datastores on the same database file (found by its
real path) or on the same shared-cache memory database share one notifier,
so a commit by any recorder instance, from any factory, wakes them all.

Notifiers are kept per event loop, because the futures and events they
resolve belong to one loop: datastores on the same file in two event loops
(two threads) see each other's commits as they see other processes', by
polling.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Hashable
from typing import Protocol

from asyncsourcing.persistence import InterfaceError
from asyncsourcing.waiting import FetchMax, PositionBoard

__all__ = ["SQLiteNotifier", "Subscriber", "shared_notifier"]


class Subscriber(Protocol):
    """What a notifier wakes: a subscription.

    (On PostgreSQL, the listener is the LISTEN connection that wakes the
    subscribers: :class:`~asyncsourcing.postgres.listener.PostgresListener`.)
    """

    def notify(self) -> None:
        """New events may have been committed."""

    def stop(self) -> None:
        """The datastore the subscriber reads through has been closed."""


class _TrackingChannel:
    """The shared position board of one tracking table.

    The board reads recorded positions (an application's, or a partition's)
    through a recorder of any datastore still attached, so that closing one
    datastore does not stop the others' waiters from being served.
    """

    def __init__(self, name: str, poll_interval: float | None) -> None:
        self.name = name
        self.fetchers: dict[object, FetchMax] = {}
        self.board = PositionBoard(self._fetch_max, poll_interval=poll_interval)

    async def _fetch_max(self, application_name: str) -> int | None:
        for fetch_max in list(self.fetchers.values()):
            return await fetch_max(application_name)
        msg = f"No open datastore reads tracking table {self.name!r}"
        raise InterfaceError(msg)


class SQLiteNotifier:
    """Wakes the subscriptions and waiters of one database, in one event loop.

    Datastores :meth:`attach` to it when they first need it and
    :meth:`detach` when they close; ``on_empty`` is called when the last one
    has detached.
    """

    def __init__(self, name: str, on_empty: Callable[[], None] | None = None) -> None:
        self.name = name
        self._on_empty = on_empty
        self._owners: set[object] = set()
        # The subscribers of each events table, each with its datastore.
        self._subscribers: dict[str, dict[Subscriber, object]] = {}
        self._channels: dict[str, _TrackingChannel] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    def attach(self, owner: object) -> None:
        """Count ``owner`` (a datastore) among the notifier's users."""
        self._owners.add(owner)

    def detach(self, owner: object) -> list[PositionBoard]:
        """Forget ``owner``: stop its subscribers, drop its board readers.

        Returns the boards no attached datastore reads any more; the caller
        closes them (:meth:`PositionBoard.aclose`), which fails their
        waiters with :class:`WaitInterruptedError`.
        """
        self._owners.discard(owner)
        for subscribers in self._subscribers.values():
            for subscriber in [s for s, o in subscribers.items() if o is owner]:
                del subscribers[subscriber]
                subscriber.stop()
        unused = []
        for table, channel in list(self._channels.items()):
            channel.fetchers.pop(owner, None)
            if not channel.fetchers:
                del self._channels[table]
                unused.append(channel.board)
        if not self._owners and self._on_empty is not None:
            self._on_empty()
        return unused

    # Events.

    def add_subscriber(
        self, owner: object, events_table: str, subscriber: Subscriber
    ) -> None:
        """Wake ``subscriber`` when events are committed to ``events_table``;
        stop it when ``owner``, the datastore it reads through, detaches."""
        self._subscribers.setdefault(events_table, {})[subscriber] = owner

    def discard_subscriber(self, events_table: str, subscriber: Subscriber) -> None:
        """Wake ``subscriber`` no more (nothing if it is not subscribed)."""
        self._subscribers.get(events_table, {}).pop(subscriber, None)

    def events_committed(self, events_table: str) -> None:
        """Events have been committed to ``events_table``: wake its subscribers."""
        for subscriber in list(self._subscribers.get(events_table, ())):
            subscriber.notify()

    # Tracking.

    def position_board(
        self,
        owner: object,
        tracking_table: str,
        fetch_max: FetchMax,
        *,
        poll_interval: float | None,
    ) -> PositionBoard:
        """The board of ``tracking_table``, shared by every attached datastore.

        Whoever commits tracking advances it. ``fetch_max`` reads recorded
        positions for ``owner``'s recorders; ``poll_interval``, when the
        board is made, is how often it re-reads positions that tasks wait
        for, to notice other processes' commits.
        """
        channel = self._channel(tracking_table, poll_interval)
        channel.fetchers.setdefault(owner, fetch_max)
        return channel.board

    def advance_position_board(
        self,
        tracking_table: str,
        application_name: str,
        position: int,
        *,
        poll_interval: float | None,
    ) -> None:
        """Tell the board of ``tracking_table`` of a commit of ``position``.

        The board is made if need be (``poll_interval`` as in
        :meth:`position_board`), so that it knows the position without a
        read when a recorder of any attached datastore asks for it.
        """
        channel = self._channel(tracking_table, poll_interval)
        channel.board.advance(application_name, position)

    def _channel(
        self, tracking_table: str, poll_interval: float | None
    ) -> _TrackingChannel:
        channel = self._channels.get(tracking_table)
        if channel is None:
            channel = _TrackingChannel(tracking_table, poll_interval)
            self._channels[tracking_table] = channel
        return channel


_notifiers: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[Hashable, SQLiteNotifier]
] = weakref.WeakKeyDictionary()


def shared_notifier(key: Hashable, loop: asyncio.AbstractEventLoop) -> SQLiteNotifier:
    """The process's notifier of the database ``key`` in ``loop``.

    It is dropped when its last datastore detaches, so a later datastore on
    the same database starts with a fresh one.
    """
    notifiers = _notifiers.setdefault(loop, {})
    notifier = notifiers.get(key)
    if notifier is None:

        def drop() -> None:
            if notifiers.get(key) is notifier:
                del notifiers[key]

        notifier = SQLiteNotifier(repr(key), on_empty=drop)
        notifiers[key] = notifier
    return notifier
