"""Which handlers wait in ``prompt_approval`` now, for the approval API (PromptRails'
``executions.approve/deny``) and any adapter that lists or answers approvals."""

from __future__ import annotations

from gateway.dispatch import Dispatcher


class ApprovalDesk:
    def __init__(self, dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher

    def awaited(self, session_id: str) -> tuple[str, str] | None:
        """``(inbox id, block id)`` while the session's running handler waits in
        ``prompt_approval``: the event it runs for, and the approval block a ``button`` press
        (value ``"approve"`` / ``"reject"``) must name to answer it."""
        inbound_id = self._dispatcher.running_inbound(session_id)
        prompts = self._dispatcher.prompts.waiting(session_id, "approval")
        if inbound_id is None or not prompts:
            return None
        return inbound_id, prompts[0].block_id

    def waiting_sessions(self) -> list[str]:
        """The sessions whose running handler waits in ``prompt_approval``."""
        return self._dispatcher.prompts.sessions_waiting("approval")
