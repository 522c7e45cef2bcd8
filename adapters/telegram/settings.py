"""Telegram's settings: the ``[telegram]`` section of ``chatgate.toml`` (see config.example.toml)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from gateway.config import Section, absolute_http_url, route_path


class TelegramSettings(Section):
    """The ``[telegram]`` section (``CHATGATE_TELEGRAM__<KEY>``; ``TELEGRAM_BOT_TOKEN`` too)."""

    bot_token: str | None = None
    mode: Literal["polling", "webhook"] = "polling"
    api_url: str = "https://api.telegram.org"
    webhook_path: str = "/telegram/webhook"
    webhook_secret: str | None = None
    group_trigger: Literal["mention", "all"] = "mention"
    edited_messages: Literal["ignore", "as_new"] = "ignore"
    private_edit_interval: float = Field(1.1, ge=0.1)
    group_edit_interval: float = Field(3.1, ge=0.1)
    draft_interval: float = Field(0.25, ge=0.05)
    global_rate: float = Field(30.0, gt=0)
    use_drafts: bool = True
    rich_messages: bool = True
    """Send replies with ``sendRichMessage`` (Bot API 10.1) where the server has it, else HTML."""
    optional_retry_after: float = Field(600.0, ge=0)
    """Seconds a newer optional method (rich messages, drafts, chat actions) the server failed stays
    off for the bot before it is tried again."""
    chat_interval: float = Field(1.0, gt=0)
    """Seconds between messages (sends and edits) to one chat; Telegram allows about one a second."""
    group_messages_per_minute: int = Field(20, ge=1)
    poll_timeout: int = Field(25, ge=0)
    retry_attempts: int = Field(5, ge=1)
    retry_backoff: float = Field(0.5, gt=0)
    rate_scale: float = Field(1.0, gt=0)
    """Multiplies every pacing interval and ``retry_after`` pause; 1.0 against Telegram (tests shrink it)."""

    @field_validator("api_url")
    @classmethod
    def _api_url(cls, url: str) -> str:
        return absolute_http_url(url)

    @field_validator("webhook_path")
    @classmethod
    def _webhook_path(cls, path: str) -> str:
        return route_path(path)
