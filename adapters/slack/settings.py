"""Slack's settings: the ``[slack]`` section of ``chatgate.toml`` (see config.example.toml)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from gateway.config import Section, absolute_http_url, route_path


class SlackSettings(Section):
    """The ``[slack]`` section (``CHATGATE_SLACK__<KEY>``; ``SLACK_BOT_TOKEN``, ``SLACK_SIGNING_SECRET``
    and ``SLACK_APP_TOKEN`` too)."""

    bot_token: str | None = None
    signing_secret: str | None = None
    app_token: str | None = None
    mode: Literal["events", "socket"] = "events"
    api_url: str = "https://slack.com/api/"
    events_path: str = "/slack/events"
    slash_command: str = "/chatgate"
    dm_sessions: Literal["per_dm", "per_thread"] = "per_thread"
    update_interval: float = Field(1.0, ge=0.1)

    @field_validator("api_url")
    @classmethod
    def _api_url(cls, url: str) -> str:
        return absolute_http_url(url)

    @field_validator("events_path")
    @classmethod
    def _events_path(cls, path: str) -> str:
        return route_path(path)

    @field_validator("slash_command")
    @classmethod
    def _slash_command(cls, command: str) -> str:
        if not command.startswith("/") or len(command) < 2 or any(c.isspace() for c in command):
            raise ValueError("a slash command is '/' and a name, e.g. /chatgate")
        return command
