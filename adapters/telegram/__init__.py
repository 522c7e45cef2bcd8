"""The Telegram channel (aiogram): see :mod:`adapters.telegram.adapter`.

This module is the adapter's ``chatgate.adapters`` entry point (:data:`spec`) and stays light:
aiogram is imported only when ``TelegramAdapter`` is first used, which happens only when a bot
token is set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from adapters.base import AdapterSpec
from adapters.telegram.settings import TelegramSettings

if TYPE_CHECKING:
    from adapters.telegram.adapter import TelegramAdapter

spec = AdapterSpec(
    name="telegram",
    adapter="adapters.telegram.adapter:TelegramAdapter",
    settings=TelegramSettings,
    environment={"TELEGRAM_BOT_TOKEN": "bot_token"},
    enabled=lambda settings: bool(settings.telegram.bot_token),
    off_hint="set TELEGRAM_BOT_TOKEN to enable",
    quiet_loggers=("aiogram.event",),
)


def __getattr__(name: str) -> Any:
    if name == "TelegramAdapter":
        return spec.load()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["TelegramAdapter", "TelegramSettings", "spec"]
