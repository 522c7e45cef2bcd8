"""Which handlers wait in ``prompt_approval`` now, for the approval API (PromptRails'
``executions.approve/deny``) and any adapter that lists or answers approvals.

In ``chatgate run`` (and a worker) the dispatcher's prompt registry knows. A ``chatgate web``
process runs no handler, so its desk reads what the workers stored (``gateway.store.approvals``):
an approval answered through any web process reaches the worker whose handler waits on it.
"""

from __future__ import annotations

from gateway.dispatch import Dispatcher
from gateway.store.approvals import StoredApprovals


class ApprovalDesk:
    def __init__(self, dispatcher: Dispatcher, stored: StoredApprovals | None = None) -> None:
        self._dispatcher = dispatcher
        self._stored = stored

    async def awaited(self, session_id: str) -> tuple[str, str] | None:
        """``(inbox id, block id)`` while the session's running handler waits in
        ``prompt_approval``: the event it runs for, and the approval block a ``button`` press
        (value ``"approve"`` / ``"reject"``) must name to answer it."""
        if self._stored is not None:
            return await self._stored.awaited(session_id)
        inbound_id = self._dispatcher.running_inbound(session_id)
        prompts = self._dispatcher.prompts.waiting(session_id, "approval")
        if inbound_id is None or not prompts:
            return None
        return inbound_id, prompts[0].block_id

    async def waiting_sessions(self) -> list[str]:
        """The sessions whose running handler waits in ``prompt_approval``."""
        if self._stored is not None:
            return await self._stored.waiting_sessions()
        return self._dispatcher.prompts.sessions_waiting("approval")
