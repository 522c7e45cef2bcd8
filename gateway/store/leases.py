"""Named leases: work that one process at a time may do (the scheduler, a poller)."""

from __future__ import annotations

import time
from contextlib import suppress
from datetime import timedelta

from sqlalchemy import delete, or_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col

from gateway.store.database import Database
from gateway.store.tables import (
    LeaseRow,
    utcnow,
)


class LeaseQueries:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._held: dict[tuple[str, str], float] = {}
        """(lease, holder) -> when this process's hold lapses (monotonic): ``held_count``."""

    async def acquire(self, name: str, holder: str, ttl: float) -> bool:
        """Take or renew the lease ``name`` for ``ttl`` seconds; False while another holds it."""
        now = utcnow()
        expires = now + timedelta(seconds=ttl)
        lapses = time.monotonic() + ttl
        async with self._db.write() as db:
            result = await db.exec(
                update(LeaseRow)
                .where(col(LeaseRow.name) == name)
                .where(or_(col(LeaseRow.holder) == holder, col(LeaseRow.expires_at) < now))
                .values(holder=holder, expires_at=expires)
            )
            if result.rowcount:
                self._held[(name, holder)] = lapses
                return True
        try:
            async with self._db.write() as db:
                db.add(LeaseRow(name=name, holder=holder, expires_at=expires))
            self._held[(name, holder)] = lapses
            return True
        except IntegrityError:
            self._held.pop((name, holder), None)
            return False

    async def release(self, name: str, holder: str) -> None:
        self._held.pop((name, holder), None)
        with suppress(Exception):
            async with self._db.write() as db:
                await db.exec(
                    delete(LeaseRow).where(col(LeaseRow.name) == name).where(col(LeaseRow.holder) == holder)
                )

    def held_count(self) -> int:
        """Leases this process took through this store and still holds (renewed within their
        ttl, not released): the ``chatgate_leases_held`` gauge."""
        now = time.monotonic()
        for key in [key for key, lapses in self._held.items() if lapses <= now]:
            del self._held[key]
        return len(self._held)
