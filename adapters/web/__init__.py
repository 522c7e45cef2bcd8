"""The web channel: the chat widget's WebSocket, uploads and pages, and the PromptRails-compatible
REST + SSE API. The protocol is documented in docs/web-protocol.md.

This module is the adapter's ``chatgate.adapters`` entry point (:data:`spec`). Its settings, the
``[web]`` section, are still ``gateway.config.WebSettings``, so the spec declares no model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from adapters.base import AdapterSpec

if TYPE_CHECKING:
    from .adapter import WebAdapter

spec = AdapterSpec(
    name="web",
    adapter="adapters.web.adapter:WebAdapter",
    enabled=lambda settings: settings.web.enabled,
    off_hint="[web] enabled = false",
)


def __getattr__(name: str) -> Any:
    if name == "WebAdapter":
        return spec.load()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["WebAdapter", "spec"]
