"""The fence of a session lease: a write of a turn commits only while its worker holds the lease.

A worker runs a session's events while it holds the session's row in ``session_leases`` (see
``gateway.store.queue``). Each claim of that row increments its ``token``. A turn carries the
:class:`Fence` of the claim it runs under, and every write it makes checks the fence inside the
write's own transaction::

    UPDATE session_leases SET expires_at = expires_at WHERE session_id = :s AND token = :t

touches one row while the claim stands, none once another worker took the session over (which
incremented the token) or the session was deleted (through any web process): the write then
raises :class:`LeaseLost` and its transaction rolls back.
The ``UPDATE`` also locks the lease row until the write commits, so a takeover waits for a write
already under way instead of racing it.

A fence is first checked against the local clock (no round trip): a worker whose last renewal is
older than the lease's ttl (it was paused, or cut off from the database) knows it may have lost
the lease and stops writing before anyone else can have taken over. ``chatgate run`` has no fence:
its writes carry ``None`` and run no extra statement.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncConnection

if TYPE_CHECKING:
    import asyncpg

__all__ = ["FENCE_CHECK", "Fence", "LeaseLost"]

FENCE_CHECK = text(
    "UPDATE session_leases SET expires_at = expires_at WHERE session_id = :session_id AND token = :token"
    " AND EXISTS (SELECT 1 FROM sessions WHERE id = :session_id)"
)
FENCE_CHECK_POSTGRES = (
    "UPDATE session_leases SET expires_at = expires_at WHERE session_id = $1 AND token = $2"
    " AND EXISTS (SELECT 1 FROM sessions WHERE id = $1)"
)
"""``FENCE_CHECK`` for the asyncpg driver (``gateway.store.postgres_turns``)."""


class LeaseLost(Exception):
    """This worker no longer holds the session's lease (another one runs its events now), or
    the session was deleted."""


@dataclass(eq=False)
class Fence:
    """One claim of one session's lease: its ``token`` and how long the last renewal keeps it
    valid here (``valid_until``, on the monotonic clock, measured from before the renewal was sent)."""

    session_id: str
    token: int
    valid_until: float
    lost: bool = False

    def check_local(self) -> None:
        """Raise ``LeaseLost`` when the lease is known lost or its last renewal is too old."""
        if not self.lost and time.monotonic() >= self.valid_until:
            self.lost = True
        if self.lost:
            raise LeaseLost(f"the lease of session {self.session_id} (token {self.token}) was lost")

    def _parameters(self) -> dict[str, object]:
        return {"session_id": self.session_id, "token": self.token}

    def taken_over(self) -> LeaseLost:
        """Mark the lease lost (its check found another token, or no session) and return the error
        to raise."""
        self.lost = True
        return LeaseLost(f"session {self.session_id} was taken over (token {self.token} is stale)")

    def verify(self, conn: Connection) -> None:
        """Check the fence inside ``conn``'s transaction (raises ``LeaseLost``: roll back)."""
        self.check_local()
        if conn.execute(FENCE_CHECK, self._parameters()).rowcount != 1:
            raise self.taken_over()

    async def verify_async(self, conn: AsyncConnection) -> None:
        self.check_local()
        if (await conn.execute(FENCE_CHECK, self._parameters())).rowcount != 1:
            raise self.taken_over()

    async def verify_postgres(self, conn: asyncpg.Connection) -> None:
        """``verify`` on an asyncpg connection, inside its transaction."""
        self.check_local()
        if await conn.execute(FENCE_CHECK_POSTGRES, self.session_id, self.token) != "UPDATE 1":
            raise self.taken_over()
