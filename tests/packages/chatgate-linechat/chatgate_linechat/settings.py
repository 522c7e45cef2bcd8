"""The ``[linechat]`` section of ``chatgate.toml`` (``CHATGATE_LINECHAT__<KEY>``, ``LINECHAT_PORT``)."""

from __future__ import annotations

from pydantic import Field

from gateway.config import Section


class LineChatSettings(Section):
    host: str = "127.0.0.1"
    port: int | None = Field(None, ge=0, le=65535)
    """The TCP port to listen on; unset: linechat is off. 0 picks a free port."""
    max_line_bytes: int = Field(64 * 1024, ge=1024)
    """The longest line a client may send; a longer one gets an error and the connection closes."""
