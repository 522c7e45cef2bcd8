"""What the query modules of ``gateway/store/`` need from the ``Store``: short ORM sessions.

Declared here, below ``gateway.store``, so a module of queries (tasks, documents) depends on
this protocol rather than importing the Store that imports it.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Protocol

from sqlmodel.ext.asyncio.session import AsyncSession


class Transactions(Protocol):
    def session(self) -> AbstractAsyncContextManager[AsyncSession]:
        """A session for reads (and writes the caller commits)."""
        ...

    def write(self) -> AbstractAsyncContextManager[AsyncSession]:
        """A write transaction, committed on exit (serialised on SQLite)."""
        ...
