"""The Slack channel (slack-bolt + slack_sdk): see :mod:`adapters.slack.adapter`.

This module is the adapter's ``chatgate.adapters`` entry point (:data:`spec`) and stays light:
slack-bolt is imported only when ``SlackAdapter`` is first used, which happens only when Slack is
configured.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from adapters.base import AdapterSpec
from adapters.slack.settings import SlackSettings

if TYPE_CHECKING:
    from adapters.slack.adapter import SlackAdapter

spec = AdapterSpec(
    name="slack",
    adapter="adapters.slack.adapter:SlackAdapter",
    settings=SlackSettings,
    environment={
        "SLACK_BOT_TOKEN": "bot_token",
        "SLACK_SIGNING_SECRET": "signing_secret",
        "SLACK_APP_TOKEN": "app_token",
    },
    # Events API mode needs the signing secret, socket mode the app-level token.
    enabled=lambda settings: bool(
        settings.slack.bot_token and (settings.slack.signing_secret or settings.slack.app_token)
    ),
    off_hint="set SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET or SLACK_APP_TOKEN",
    quiet_loggers=("slack_bolt",),
)


def __getattr__(name: str) -> Any:
    if name == "SlackAdapter":
        return spec.load()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["SlackAdapter", "SlackSettings", "spec"]
