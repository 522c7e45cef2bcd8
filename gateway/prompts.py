"""Prompts waiting for an answer (``prompt_file``, ``prompt_approval``, ``prompt_integration``).

A handler that prompts keeps its session's lane (later messages queue behind it, as in
Capsule), so the answer cannot wait in the lane: the dispatcher offers every new event to the
session's waiting prompts first, and an event that fits resolves the prompt instead of queueing.
"""

from __future__ import annotations

import asyncio
import fnmatch
from dataclasses import dataclass, field
from typing import Any

from gateway.inbound import Inbound


@dataclass
class WaitingPrompt:
    kind: str
    """``file``, ``approval`` or ``integration``."""
    block_id: str
    future: asyncio.Future[Any]
    options: dict[str, Any] = field(default_factory=dict)

    def answer(self, inbound: Inbound) -> tuple[bool, Any]:
        """``(fits, result)``: whether ``inbound`` answers this prompt, and with what."""
        if self.kind == "file":
            return self._file_answer(inbound)
        if self.kind == "approval":
            if inbound.kind == "button" and inbound.button and inbound.button.block_id == self.block_id:
                return True, inbound.button.value
            return False, None
        if self.kind == "integration":
            if inbound.kind == "signal" and inbound.prompt_id == self.block_id:
                return True, inbound.payload
            return False, None
        return False, None

    def _file_answer(self, inbound: Inbound) -> tuple[bool, Any]:
        if inbound.kind == "upload" and inbound.prompt_id not in (None, self.block_id):
            return False, None
        if inbound.kind not in ("upload", "message") or inbound.message is None:
            return False, None
        for attachment in inbound.message.attachments or []:
            if _accepts(self.options.get("accept") or "", attachment.name, attachment.content_type):
                return True, attachment
        return False, None


def _accepts(accept: str, name: str, content_type: str) -> bool:
    """HTML ``accept`` semantics: ``image/*``, ``.pdf``, ``text/plain``; empty accepts all."""
    patterns = [p.strip().lower() for p in accept.split(",") if p.strip()]
    if not patterns:
        return True
    for pattern in patterns:
        if pattern.startswith("."):
            if name.lower().endswith(pattern):
                return True
        elif fnmatch.fnmatch((content_type or "").lower(), pattern):
            return True
    return False


class PromptRegistry:
    def __init__(self) -> None:
        self._waiting: dict[str, dict[str, WaitingPrompt]] = {}

    def register(self, session_id: str, kind: str, block_id: str, **options: Any) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(session_id, {})[block_id] = WaitingPrompt(kind, block_id, future, options)
        return future

    def unregister(self, session_id: str, block_id: str) -> None:
        prompts = self._waiting.get(session_id)
        if prompts is not None:
            prompts.pop(block_id, None)
            if not prompts:
                del self._waiting[session_id]

    def offer(self, session_id: str, inbound: Inbound) -> bool:
        """Resolve the first waiting prompt ``inbound`` answers; True if one took it."""
        for prompt in list(self._waiting.get(session_id, {}).values()):
            if prompt.future.done():
                continue
            fits, result = prompt.answer(inbound)
            if fits:
                prompt.future.set_result(result)
                return True
        return False

    def waiting(self, session_id: str, kind: str | None = None) -> list[WaitingPrompt]:
        """The unanswered prompts of a session (of one ``kind``), oldest first."""
        return [
            p for p in self._waiting.get(session_id, {}).values()
            if not p.future.done() and (kind is None or p.kind == kind)
        ]

    def sessions_waiting(self, kind: str) -> list[str]:
        """The sessions with an unanswered prompt of ``kind``."""
        return [session_id for session_id in self._waiting if self.waiting(session_id, kind)]
