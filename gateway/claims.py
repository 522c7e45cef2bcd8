"""``SessionClaims``: how a ``chatgate worker`` finds work and keeps one session in one worker.

The queue is the inbox table itself (``gateway.store.queue``). A web process records an event and
``NOTIFY chatgate_inbox, '<session id>'`` in the same transaction; every worker ``LISTEN``s on a
dedicated asyncpg connection (reconnected when lost). On a notification the worker tries to claim
the session's lease (one statement; a held lease is left alone). Holding it, it reads the
session's unfinished events in id order and hands each, with the lease's :class:`Fence`, to the
dispatcher, whose existing routing applies: a stop cancels the running handler, an answer
resolves the prompt a handler waits on here, anything else queues in the session's lane. When the
lane runs dry and nothing is left in the inbox, the lease is released at once.

Nothing sleeps to notice work: a worker claims at start, on every notification, and every lease
ttl it sweeps for sessions with unfinished events whose lease expired or was never taken (a
worker died, or a notification was missed while the listener reconnected): failure recovery.

Every ttl/3 one statement renews the leases this worker holds (named: a session it gave up
locally is not kept from the others). A lease missing from the answer
was taken over, and one not renewed within its ttl (the worker was paused, or cut off) may have
been: either way the fence is marked lost, the session's running turn is cancelled and its queued
events dropped here (the new holder runs them), and the turn writes nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

import asyncpg

from gateway.dispatch import Dispatcher, WorkItem
from gateway.inbound import Inbound
from gateway.leases import process_holder_id, wait_event
from gateway.store.fence import Fence
from gateway.store.queue import INBOX_CHANNEL, QueuedEvent, SessionQueue
from gateway.store.records import TurnContext

log = logging.getLogger("chatgate.claims")

LISTEN_RETRY = 1.0  # seconds between attempts to reconnect the LISTEN connection
LISTENER_NAME = "chatgate-listen"
"""``application_name`` of the LISTEN connection (``pg_stat_activity`` shows which it is)."""


@dataclass
class Held:
    fence: Fence
    routed: set[str] = field(default_factory=set)
    """Inbox ids handed to the dispatcher under this claim (each is routed once)."""


class SessionClaims:
    def __init__(
        self,
        queue: SessionQueue,
        dispatcher: Dispatcher,
        *,
        dsn: str,
        ttl: float = 15.0,
        holder: str | None = None,
    ) -> None:
        if ttl <= 0:
            raise ValueError("dispatch.lease_ttl must be positive")
        self.queue = queue
        self.dispatcher = dispatcher
        self.dsn = dsn
        self.ttl = ttl
        self.holder = holder or process_holder_id()
        self.held: dict[str, Held] = {}
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}
        """Per session: the lock that serialises claiming, feeding and releasing, and how many
        tasks use it (dropped when none does)."""
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._closing = False
        self._stopped = asyncio.Event()
        self._listening = asyncio.Event()
        self.listening = False
        """Whether the LISTEN connection is up now (the worker's ``/readyz`` ``queue`` check)."""
        dispatcher.on_idle = self._lane_ran_dry

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen, claim what is waiting, and keep renewing and sweeping in the background."""
        self._loops = [
            asyncio.create_task(self._listen_forever(), name="chatgate-claims-listen"),
            asyncio.create_task(self._renew_forever(), name="chatgate-claims-renew"),
            asyncio.create_task(self._sweep_forever(), name="chatgate-claims-sweep"),
        ]
        # Claim only once the listener is up: an event recorded meanwhile is seen by the sweep.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._listening.wait(), self.ttl)
        await self.sweep()

    async def stop(self, grace: float) -> None:
        """Stop claiming; let running handlers finish within ``grace`` seconds (the rest are
        cancelled and left unfinished); then release every lease so another worker claims the
        sessions at once instead of after the ttl."""
        self._closing = True
        await self.dispatcher.close(grace)
        self._stopped.set()
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, *self._tasks, return_exceptions=True)
        for session_id, held in list(self.held.items()):
            held.fence.lost = True  # a straggler writes nothing after the release
            with contextlib.suppress(Exception):
                interrupted = session_id in self.dispatcher.interrupted
                await self.queue.release(session_id, held.fence.token, wake=True, interrupted=interrupted)
        self.held.clear()

    # -- noticing work -----------------------------------------------------------------------

    def poke(self, session_id: str) -> None:
        """Something changed in this session's inbox: claim it, or feed it if held."""
        if self._closing:
            return
        task = asyncio.create_task(self._poke(session_id), name=f"chatgate-claim-{session_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_crash)

    async def sweep(self) -> int:
        """Claim every session with unfinished events that no live worker holds; returns how
        many sessions were poked."""
        sessions = [s for s in await self.queue.unheld_sessions() if s not in self.held]
        for session_id in sessions:
            self.poke(session_id)
        return len(sessions)

    async def _listen_forever(self) -> None:
        while not self._stopped.is_set():
            connection: asyncpg.Connection | None = None
            lost = asyncio.Event()
            try:
                connection = await asyncpg.connect(self.dsn, server_settings={"application_name": LISTENER_NAME})
                connection.add_termination_listener(lambda _conn, lost=lost: lost.set())
                await connection.add_listener(INBOX_CHANNEL, self._notified)
                if self._listening.is_set():  # reconnected: what was said meanwhile is unheard
                    await self.sweep()
                self._listening.set()
                self.listening = True
                while not lost.is_set() and not self._stopped.is_set():
                    # A dead TCP peer is noticed only by using the connection: ping once a ttl.
                    if not await wait_event(lost, self.ttl):
                        await asyncio.wait_for(connection.fetchval("SELECT 1"), self.ttl)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("the LISTEN connection for %s failed (%s); reconnecting", INBOX_CHANNEL, exc)
            finally:
                self.listening = False
                if connection is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(connection.close(), 1.0)
            if not self._stopped.is_set():
                await wait_event(self._stopped, LISTEN_RETRY)

    def _notified(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        self.poke(payload)

    async def _sweep_forever(self) -> None:
        while not await wait_event(self._stopped, self.ttl):
            try:
                await self.sweep()
            except Exception:
                log.warning("sweeping for unclaimed sessions failed; will retry", exc_info=True)

    # -- one session ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _session_lock(self, session_id: str) -> AsyncIterator[None]:
        lock, users = self._locks.setdefault(session_id, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._locks[session_id]

    async def _poke(self, session_id: str) -> None:
        async with self._session_lock(session_id):
            held = self.held.get(session_id)
            context = None
            if held is None:
                claimed = await self._claim(session_id)
                if claimed is None:
                    return
                held, events, context = claimed
            else:
                events, context = await self.queue.events_and_context(
                    session_id, self.dispatcher.context_to_read(session_id)
                )
            await self._feed(session_id, held, events, recovered=False, context=context)
            await self._settle(session_id, held)

    async def _claim(self, session_id: str) -> tuple[Held, list[QueuedEvent], TurnContext | None] | None:
        """The session's lease, its unfinished events and, when its first event starts at once,
        that turn's context (one round trip), or None while another worker holds it."""
        if self._closing:
            return None
        sent_at = time.monotonic()
        claimed = await self.queue.claim_with_events(
            session_id, self.holder, self.ttl, context=self.dispatcher.context_to_read(session_id)
        )
        if claimed is None:
            return None  # another worker holds it and runs what was just recorded
        claim, events, context = claimed
        held = self.held[session_id] = Held(Fence(session_id, claim.token, sent_at + self.ttl))
        log.debug("claimed session %s (token %d)", session_id, claim.token)
        if claim.taken_over:
            log.info("took session %s over from worker %s, which left it unfinished (token %d)",
                     session_id, claim.previous_holder, claim.token)
            await self._feed(session_id, held, events, recovered=True)
            context = None  # the events ran before: their turns read afresh
        return held, events, context

    async def _feed(self, session_id: str, held: Held, events: list[QueuedEvent], *, recovered: bool,
                    context: TurnContext | None = None) -> None:
        """Hand the session's unfinished ``events`` not yet routed under this claim to the
        dispatcher; ``context``, read with the claim, goes with the first of them if it is a
        message (as a message's context read as it was recorded: ``Dispatcher.submit``)."""
        for event in events:
            if event.id in held.routed or held.fence.lost or self._closing:
                continue
            held.routed.add(event.id)
            item = _work_item(event, held.fence)
            if context is not None and event.kind == "message":
                item.context = context
            context = None
            if recovered:
                await self.dispatcher.recover_item(item)
            else:
                self.dispatcher.route(item)

    async def _settle(self, session_id: str, held: Held) -> None:
        """Release the lease when the session has nothing running here and nothing unfinished."""
        if self.held.get(session_id) is not held or self.dispatcher.busy(session_id):
            return
        await self.dispatcher.settled()  # a stop or an answer marked done is not run again elsewhere
        if self.held.get(session_id) is not held or self.dispatcher.busy(session_id):
            return
        if held.fence.lost:
            del self.held[session_id]
            log.warning("lost the lease of session %s (token %d): its events run on another worker",
                        session_id, held.fence.token)
            return
        # Given back in the statement that looks for events recorded meanwhile and not routed
        # here; one committed after it is notified after, and that notification claims it again.
        # Out of ``held`` first, as released: a renewal meanwhile judges it so (``renew``).
        del self.held[session_id]
        pending = await self.queue.release_unless_pending(session_id, held.fence.token, held.routed)
        if not pending:
            log.debug("released session %s (token %d)", session_id, held.fence.token)
            return
        self.held[session_id] = held  # kept: they run under it
        await self._feed(session_id, held, pending, recovered=False)
        if self.dispatcher.busy(session_id) or self.held.get(session_id) is not held:
            return
        # None of them runs here (the worker is closing, or the lease was lost meanwhile): the
        # lease goes back anyway, and the workers are told, as a stopping worker tells them of
        # what it held (``stop``): the one that claims it next runs them now, not at its sweep.
        del self.held[session_id]
        if not held.fence.lost:
            await self.queue.release(session_id, held.fence.token, wake=True)

    def _lane_ran_dry(self, session_id: str) -> None:
        if session_id in self.held and not self._closing:
            task = asyncio.create_task(self._settle_locked(session_id), name=f"chatgate-settle-{session_id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            task.add_done_callback(_log_crash)

    async def _settle_locked(self, session_id: str) -> None:
        async with self._session_lock(session_id):
            held = self.held.get(session_id)
            if held is not None:
                await self._settle(session_id, held)

    # -- keeping the leases --------------------------------------------------------------------

    async def _renew_forever(self) -> None:
        while not await wait_event(self._stopped, self.ttl / 3):
            await self.renew()

    async def renew(self) -> None:
        """Extend every lease held here; a lease no longer ours (or not renewed within its ttl)
        is given up: its turn is cancelled and writes nothing more."""
        if not self.held:
            return
        # Judged against what was held when the statement was sent: a session claimed or
        # released meanwhile is not in the answer, and was not lost.
        sent = dict(self.held)
        sent_at = time.monotonic()
        try:
            still = await self.queue.renew(self.holder, list(sent), self.ttl)
        except Exception:
            log.warning("renewing the session leases failed; will retry", exc_info=True)
            still = None
        for session_id, held in sent.items():
            if self.held.get(session_id) is not held:
                continue
            fence = held.fence
            if still is not None and still.get(session_id) == fence.token:
                fence.valid_until = sent_at + self.ttl
            elif still is not None or time.monotonic() >= fence.valid_until:
                self._lose(session_id, held)

    def _lose(self, session_id: str, held: Held) -> None:
        log.warning("lost the lease of session %s (token %d): taken over by another worker, or the "
                    "session was deleted", session_id, held.fence.token)
        held.fence.lost = True
        if self.held.get(session_id) is held:
            del self.held[session_id]
        self.dispatcher.abandon(session_id)

    def held_count(self) -> int:
        return len(self.held)


def _work_item(event: QueuedEvent, fence: Fence) -> WorkItem:
    created = event.created_at if event.created_at.tzinfo is not None else event.created_at.replace(tzinfo=UTC)
    return WorkItem(
        event.id, event.session_id, Inbound.from_json(event.payload), event.message_id,
        received_at=created.timestamp(), fence=fence,
    )


def _log_crash(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("%s crashed", task.get_name(), exc_info=task.exception())
