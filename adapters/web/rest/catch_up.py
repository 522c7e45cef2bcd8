"""A turn's outcome read from the store, for a REST or SSE reader the bus cut off.

The bus drops a subscriber that falls ``SUBSCRIBER_BUFFER`` frames behind (a burst of frames
while the reader was busy): the turn goes on and its reply is stored, but its ``turn_end`` may
never reach this reader. So the reader asks the inbox row instead, which the core marks finished
*before* it announces the end (``gateway/turns.py``), and answers from the stored messages.
"""

from __future__ import annotations

import asyncio
import time

from adapters.base import SessionDirectory

from .. import errors

STORE_POLL_SECONDS = 0.1
"""How often the inbox row of a turn is read until the turn has finished."""
INBOX_ERRORS = {"session deleted": errors.SESSION_DELETED}
"""Inbox ``error`` values that the core's ``turn_end`` spells differently."""
TURN_ERRORS = (errors.HANDLER_ERROR, errors.TIMEOUT, errors.SESSION_DELETED)


async def turn_outcome(sessions: SessionDirectory, inbound_id: str, timeout: float) -> tuple[bool, str | None]:
    """``(ended, error)`` of a turn, read from its inbox row: ``error`` is what its ``turn_end``
    carries. ``ended`` is False when the turn did not finish within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        inbound = await sessions.inbound(inbound_id)
        if inbound is None:  # purged with its session
            return True, errors.SESSION_DELETED
        if inbound.status not in ("pending", "running"):
            error = INBOX_ERRORS.get(inbound.error or "", inbound.error or None)
            if inbound.status == "failed" and error not in TURN_ERRORS:
                error = errors.HANDLER_ERROR  # "user missing", "interrupted 3 times": it failed
            return True, error
        if time.monotonic() >= deadline:
            return False, None
        await asyncio.sleep(STORE_POLL_SECONDS)
