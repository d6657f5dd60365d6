"""The closing protocol of everything that holds connections or tasks.

Factories, datastores and applications are anyio
:class:`~anyio.abc.AsyncResource` objects: ``async with`` gives the object
itself and closes it on the way out, and :meth:`Resource.aclose` closes it
as anyio, :func:`contextlib.aclosing` and Starlette's lifespans expect.
Our own name for closing stays :meth:`Resource.close`, as in asyncpg
(``pool.close()``) and eventsourcing (``application.close()``).
"""

from __future__ import annotations

from abc import abstractmethod

from anyio.abc import AsyncResource

__all__ = ["Resource"]


class Resource(AsyncResource):
    """An object that holds connections or tasks until it is closed.

    Subclasses implement :meth:`close`, which must be idempotent: it may be
    called by its owner and again by ``async with``.
    """

    __slots__ = ()

    @abstractmethod
    async def close(self) -> None:
        """Release what the object holds; idempotent."""

    async def aclose(self) -> None:
        """The same as :meth:`close`."""
        await self.close()
