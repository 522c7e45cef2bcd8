"""Long polling that never drops an update and never runs in two processes at once.

**Nothing is dropped.** ``getUpdates`` confirms updates only when it is next called with an
``offset`` above them, and the offset advances past an update only after ``gw.submit`` has
recorded it durably. A crash in between means Telegram sends it again; the inbox drops the repeat
by its dedup key (``tg:<bot id>:<update_id>``). Start-up never passes ``drop_pending_updates``.
The one exception: an update this aiogram cannot read at all is logged with its content and
stepped over, since it would otherwise block every update behind it forever.

**One poller.** Telegram itself allows one ``getUpdates`` at a time per bot (a second one ends the
first with ``409 Conflict``), which would make two processes steal updates from each other. So a
process polls only while it holds the store's lease ``telegram-poll:<bot id>``
(``store.leases.acquire``: a row in the shared database, SQLite or PostgreSQL), renewed before
every long poll and released at shutdown; the lease outlives a poll by a margin, so a process that
dies mid-poll is replaced once its lease expires. The others wait as hot standbys. A ``409`` that
still happens (a poller outside chatgate, a webhook set by hand) is logged and waited out.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable

from aiogram.exceptions import ClientDecodeError, TelegramAPIError, TelegramConflictError
from aiogram.methods import GetUpdates
from aiogram.types import Update
from pydantic import ValidationError

from adapters.base import LeaseStore
from adapters.telegram.client import TelegramClient
from adapters.telegram.inbound import ALLOWED_UPDATES

log = logging.getLogger("chatgate.telegram")

LEASE_MARGIN = 20.0  # seconds a lease outlives one long poll
BACKOFF_MAX = 30.0
STANDBY_CHECK_MAX = 5.0  # seconds a standby waits between tries for the lease


class Poller:
    def __init__(
        self,
        client: TelegramClient,
        handle: Callable[[Update], Awaitable[None]],
        *,
        bot_id: int,
        leases: LeaseStore | None,
        poll_timeout: int,
        backoff: float = 0.5,
    ) -> None:
        self.client = client
        self.handle = handle
        self.leases = leases
        """Where the poll lease is kept; ``None`` runs unfenced (a single process, in tests)."""
        self.poll_timeout = poll_timeout
        self.backoff = backoff
        self.lease_name = f"telegram-poll:{bot_id}"
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.lease_ttl = poll_timeout + LEASE_MARGIN
        self.offset: int | None = None
        self.polling = asyncio.Event()
        """Set while this process holds the lease and polls (tests wait on it)."""

    async def _hold_lease(self) -> bool:
        if self.leases is None:
            return True
        return await self.leases.acquire(self.lease_name, self.holder, self.lease_ttl)

    async def release(self) -> None:
        if self.leases is not None:
            await self.leases.release(self.lease_name, self.holder)

    def _one_by_one(self, exc: ClientDecodeError) -> list[tuple[int, Update | None]]:
        """aiogram reads a batch as one list, so a single update it cannot read (a newer Bot API
        than this aiogram knows) fails them all, again at every poll: read the batch update by
        update, and step past the unreadable ones (logged with their content) instead of
        blocking every update behind them."""
        data = exc.data
        raw_updates = data.get("result") if isinstance(data, dict) and data.get("ok") else None
        if not isinstance(raw_updates, list):
            raise exc
        batch: list[tuple[int, Update | None]] = []
        for raw in raw_updates:
            update_id = raw.get("update_id") if isinstance(raw, dict) else None
            if not isinstance(update_id, int):
                raise exc  # no id to step past: keep the offset and retry
            try:
                batch.append((update_id, Update.model_validate(raw, context={"bot": self.client.bot})))
            except ValidationError as error:
                log.error("telegram update %s cannot be read (%s); skipping it: %.2000r", update_id, error, raw)
                batch.append((update_id, None))
        return batch

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                if not await self._hold_lease():
                    self.polling.clear()
                    await asyncio.sleep(min(STANDBY_CHECK_MAX, max(0.5, float(self.poll_timeout))))
                    continue
                self.polling.set()
                try:
                    updates = await self.client.call(
                        GetUpdates(offset=self.offset, timeout=self.poll_timeout, allowed_updates=ALLOWED_UPDATES),
                        idempotent=True,
                        timeout=self.poll_timeout + 10,
                    )
                    batch: list[tuple[int, Update | None]] = [(u.update_id, u) for u in updates]
                except ClientDecodeError as exc:
                    batch = self._one_by_one(exc)
                for update_id, update in batch:
                    if update is not None:
                        await self.handle(update)  # raises if it could not be recorded: offset stays
                    self.offset = update_id + 1
                failures = 0
            except asyncio.CancelledError:
                raise
            except TelegramConflictError as exc:
                failures += 1
                log.warning("telegram: another getUpdates or a webhook is active (%s); waiting", exc.message)
                await asyncio.sleep(min(BACKOFF_MAX, self.backoff * 2**failures))
            except Exception as exc:  # the loop must survive anything: a store or network outage
                failures += 1
                log.error("telegram polling failed (%s); retrying", exc, exc_info=not isinstance(exc, TelegramAPIError))
                await asyncio.sleep(min(BACKOFF_MAX, self.backoff * 2**failures))
