"""The Slack channel (slack-bolt + slack_sdk): see ``adapters.slack.adapter``."""

from __future__ import annotations

from adapters.slack.adapter import SlackAdapter

__all__ = ["SlackAdapter"]
