"""``app.broadcast``: one message to many sessions, each a real standalone Session.

Every delivery goes through the session (stored in its history, rendered and split by its
adapter, paced by the adapter's per-chat and per-bot budgets), so a broadcast can never be
faster than a channel allows. On top of that, at most ``[scheduler] broadcast_concurrency``
sessions are in flight at once, so a broadcast to a million sessions neither opens a million
sessions at once nor starves interactive replies of the pacers' slots.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.config import Settings
from gateway.dispatch import UnknownSession
from gateway.session import Session
from gateway.sessions import SessionDirectory
from gateway.store import Store
from gateway.types import Block

log = logging.getLogger("chatgate.broadcast")

Content = str | Block | Callable[[Session], Any]


class BroadcastHost(Protocol):
    """What a broadcast needs from the running gateway."""

    store: Store
    settings: Settings
    sessions: SessionDirectory


@dataclass
class BroadcastResult:
    """Which sessions got the message, which were skipped (the callable returned None) and
    which failed, with a short reason each."""

    sent: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return len(self.sent) + len(self.skipped) + len(self.failed)


async def broadcast(
    runtime: BroadcastHost,
    content: Content,
    *,
    session_ids: Iterable[str] | None = None,
    channel: str | None = None,
    concurrency: int | None = None,
) -> BroadcastResult:
    """Send ``content`` to every session in ``session_ids``, or to every session of channel
    type ``channel`` (``"telegram"``, ``"slack"``, ``"chat"``..., ``"*"`` for all).

    ``content`` is Markdown text, a ``Block``, or ``f(session)`` returning either (or None to
    skip that session; it may be async), for messages made per recipient.
    """
    if (session_ids is None) == (channel is None):
        raise ValueError("broadcast needs exactly one of session_ids= or channel=")
    if not (isinstance(content, str | Block) or callable(content)):
        raise TypeError("broadcast content is text, a Block or a function of the session")
    if session_ids is not None:
        if isinstance(session_ids, str):
            raise TypeError("session_ids= takes a list of ids, not one string")
        audience = list(dict.fromkeys(session_ids))
    else:
        audience = await runtime.store.tasks.session_ids(None if channel == "*" else channel)
    limit = concurrency or runtime.settings.scheduler.broadcast_concurrency
    if limit < 1:
        raise ValueError("broadcast concurrency must be at least 1")

    result = BroadcastResult()
    queue: asyncio.Queue[str] = asyncio.Queue()
    for session_id in audience:
        queue.put_nowait(session_id)

    async def worker() -> None:
        while True:
            try:
                session_id = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            await _deliver(runtime, session_id, content, result)

    await asyncio.gather(*(worker() for _ in range(min(limit, len(audience)))))
    log.info("broadcast to %d session(s): %d sent, %d skipped, %d failed",
             result.total, len(result.sent), len(result.skipped), len(result.failed))
    return result


async def _deliver(runtime: BroadcastHost, session_id: str, content: Content, result: BroadcastResult) -> None:
    try:
        session = await runtime.sessions.open(session_id)
    except UnknownSession:
        result.failed[session_id] = "no such session"
        return
    except Exception as exc:  # one session that cannot be opened must not end the broadcast
        log.exception("broadcast: opening session %r failed", session_id)
        result.failed[session_id] = type(exc).__name__
        return
    try:
        what = content(session) if callable(content) and not isinstance(content, Block) else content
        if inspect.isawaitable(what):
            what = await what
        if what is None:
            result.skipped.append(session_id)
            return
        if isinstance(what, Block):
            await session.show(what)
            result.sent.append(session_id)
            return
        await session.reply(str(what))
    except Exception as exc:
        log.exception("broadcast to session %s failed", session_id)
        result.failed[session_id] = type(exc).__name__
        return
    # Session.reply logs a platform failure and marks the stored message failed
    message_id = session.last_message_id
    record = await runtime.store.messages.get(message_id) if message_id else None
    if record is None or record.status == "failed":
        result.failed[session_id] = "not delivered"
    else:
        result.sent.append(session_id)
