"""The web channel: the chat widget's WebSocket, uploads and pages, and the PromptRails-compatible
REST + SSE API. The protocol is documented in docs/web-protocol.md."""

from __future__ import annotations

from .adapter import WebAdapter

__all__ = ["WebAdapter"]
