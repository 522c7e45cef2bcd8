"""Leases and leader election over the store's ``leases`` table.

A :class:`Lease` is a named row that one holder owns until it expires. Holding it means renewing
it well before it expires (every ``ttl / 3`` by default). Whoever holds ``scheduler-leader`` runs
the scheduler; the Telegram poller and scale-out workers use the same class with other names.

Safety: ``held`` is True only while this process's last successful renewal is younger than
``ttl`` (measured on the local monotonic clock from *before* the renewal was sent), so a holder
that cannot reach the database steps down on its own before anyone else can take over. Work
that must never run twice even across a stale leader (a scheduler tick) still needs its own
fence in the database; the lease only makes overlap rare and short.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from gateway.store import Store

log = logging.getLogger("chatgate.leases")

Callback = Callable[[], Awaitable[Any]]


class LeaseStore(Protocol):
    """Where leases are kept (the ``Store``'s ``leases`` table, ``store.leases``): what an adapter
    that must run in one process at a time (the Telegram poller) is given."""

    async def acquire(self, name: str, holder: str, ttl: float) -> bool:
        """Take or renew ``name`` for ``holder`` for ``ttl`` seconds; False while another holds it."""
        ...

    async def release(self, name: str, holder: str) -> None: ...


def process_holder_id() -> str:
    """A holder name that is unique per process and says where it runs (for operators)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``event``; True if it is set.

    Not ``asyncio.wait_for``: on Python 3.11 it can swallow a cancellation that arrives as the
    event fires, which leaves a ``while`` loop running after its task was cancelled.
    """
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return event.is_set()
    return True


class Lease:
    """One named lease, campaigned for and renewed by a background loop.

    ``await lease.try_acquire()`` takes (or renews) it once. ``lease.start()`` runs the loop:
    it retries every ``retry_every`` seconds while someone else holds the lease, renews every
    ``renew_every`` seconds while this process holds it, and calls ``on_acquired``/``on_lost``
    on each change. ``await lease.stop()`` ends the loop and releases the lease, so a standby
    process can take over at its next attempt instead of waiting for the expiry.
    """

    def __init__(
        self,
        store: Store,
        name: str,
        *,
        holder: str | None = None,
        ttl: float = 15.0,
        renew_every: float | None = None,
        retry_every: float | None = None,
        on_acquired: Callback | None = None,
        on_lost: Callback | None = None,
    ) -> None:
        if ttl <= 0:
            raise ValueError("a lease ttl must be positive")
        self.store = store
        self.name = name
        self.holder = holder or process_holder_id()
        self.ttl = ttl
        self.renew_every = renew_every if renew_every is not None else ttl / 3
        self.retry_every = retry_every if retry_every is not None else ttl / 3
        if self.renew_every >= ttl:
            raise ValueError("renew_every must be shorter than the ttl, or the lease lapses between renewals")
        self.on_acquired = on_acquired
        self.on_lost = on_lost
        self._valid_until = 0.0
        self._was_held = False
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._changed = asyncio.Event()

    def __repr__(self) -> str:
        return f"<Lease {self.name} holder={self.holder} held={self.held}>"

    @property
    def held(self) -> bool:
        return time.monotonic() < self._valid_until

    async def try_acquire(self) -> bool:
        """Take or renew the lease once. A database error counts as "not renewed" but does not
        end a lease still valid locally (a short outage should not depose a leader)."""
        sent_at = time.monotonic()
        try:
            got = await self.store.leases.acquire(self.name, self.holder, self.ttl)
        except Exception:
            log.warning("renewing lease %s failed", self.name, exc_info=True)
            return self.held
        if got:
            self._valid_until = sent_at + self.ttl
        else:
            self._valid_until = 0.0
        return got

    async def release(self) -> None:
        was_held = self.held or self._was_held
        self._valid_until = 0.0
        if was_held:
            await self.store.leases.release(self.name, self.holder)

    async def abdicate(self) -> None:
        """Give the lease up without stopping the campaign (the work it guards failed to
        start): another process may take it, and this one runs ``on_acquired`` again if it
        wins the lease back."""
        self._was_held = False
        self._valid_until = 0.0
        await self.store.leases.release(self.name, self.holder)

    # -- the campaign loop ---------------------------------------------------------------

    def start(self) -> None:
        if self._loop_task is not None and not self._loop_task.done():
            return
        self._stopping.clear()
        self._loop_task = asyncio.create_task(self._campaign(), name=f"chatgate-lease-{self.name}")

    async def stop(self) -> None:
        """Stop campaigning, call ``on_lost`` if the lease was held, and release it."""
        self._stopping.set()
        if self._loop_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        if self._was_held:
            self._was_held = False
            await self._call(self.on_lost, "on_lost")
        await self.store.leases.release(self.name, self.holder)
        self._valid_until = 0.0

    async def wait_held(self, timeout: float | None = None) -> bool:
        """Wait until this process holds the lease; False on timeout."""
        try:
            async with asyncio.timeout(timeout):
                while not self.held:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            return False
        return True

    async def campaign_once(self) -> bool:
        """One round of the loop: take or renew the lease and call ``on_acquired``/``on_lost``
        if that changed who holds it. True while held."""
        got = await self.try_acquire()
        if got and not self._was_held:
            self._was_held = True
            log.debug("lease %s acquired by %s", self.name, self.holder)  # holders log what it means
            await self._call(self.on_acquired, "on_acquired")
        elif not got and self._was_held and not self.held:
            self._was_held = False
            log.warning("lease %s lost by %s", self.name, self.holder)
            await self._call(self.on_lost, "on_lost")
        self._changed.set()
        return self.held

    async def _campaign(self) -> None:
        while not self._stopping.is_set():
            await self.campaign_once()
            delay = self.renew_every if self.held else self.retry_every
            if self._was_held and self.held:
                # never sleep past the local validity: renew in time or notice the loss in time
                delay = min(delay, max(0.0, self._valid_until - time.monotonic()))
            await wait_event(self._stopping, delay)

    async def _call(self, callback: Callback | None, what: str) -> None:
        if callback is None:
            return
        try:
            await callback()
        except Exception:
            log.exception("lease %s %s callback failed", self.name, what)
