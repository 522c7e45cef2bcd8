"""Which adapters run, decided from settings alone.

The core asks this module for its adapters by name (``gateway.runtime`` imports it with
``importlib``), so ``gateway/`` never imports a platform library. An adapter whose module is not
written yet, or whose tokens are not configured, is simply not started.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from adapters.base import Adapter
    from gateway.config import Settings

# (module:class, predicate on settings) — the order is the start-up order.
ADAPTERS: tuple[tuple[str, str], ...] = (
    ("adapters.web:WebAdapter", "web"),
    ("adapters.telegram:TelegramAdapter", "telegram"),
    ("adapters.slack:SlackAdapter", "slack"),
)


def _enabled(settings: Settings, name: str) -> bool:
    if name == "web":
        return settings.web.enabled
    if name == "telegram":
        return bool(settings.telegram.bot_token)
    if name == "slack":
        return bool(settings.slack.bot_token and (settings.slack.signing_secret or settings.slack.app_token))
    return False


def load(target: str) -> type[Adapter]:
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def configured_adapters(settings: Settings) -> list[Adapter]:
    """Instantiate every adapter whose settings enable it."""
    return [load(target)(settings) for target, name in ADAPTERS if _enabled(settings, name)]
