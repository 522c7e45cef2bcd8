"""The Telegram channel (aiogram): see :mod:`adapters.telegram.adapter`."""

from adapters.telegram.adapter import TelegramAdapter

__all__ = ["TelegramAdapter"]
