"""Capsule's deploy-time declarations: ``Image`` and the channel classes (``Chat``, ``API``,
``Telegram``, ``Slack``, ``WhatsApp``, ``Channel``/``ChannelRef``), with Capsule's constructors.

chatgate runs in your own environment and takes its channels from its own config, so these are
accepted and kept (``to_dict`` gives what was declared) but change nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.types import Secret

PRICING_ONE_TIME = "one_time"  # Capsule's App(pricing_type=...) values: accepted, ignored
PRICING_MONTHLY = "monthly"

CredentialValue = str | Secret | None


def _listed(value: Sequence[str] | str | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


class Image:
    """Capsule's container image spec: accepted, ignored (there is no image to build)."""

    def __init__(
        self,
        *,
        python_packages: list[str] | str | None = None,
        apt_packages: list[str] | None = None,
        commands: list[str] | None = None,
    ) -> None:
        self.python_packages = _listed(python_packages)
        self.apt_packages = _listed(apt_packages)
        self.commands = _listed(commands)

    def add_python_packages(self, packages: Sequence[str] | str) -> Image:
        self.python_packages.extend(_listed(packages))
        return self

    def add_apt_packages(self, packages: Sequence[str]) -> Image:
        self.apt_packages.extend(_listed(packages))
        return self

    def add_commands(self, commands: Sequence[str]) -> Image:
        self.commands.extend(_listed(commands))
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"python_packages": list(self.python_packages), "apt_packages": list(self.apt_packages),
                "commands": list(self.commands)}


def _credential(value: CredentialValue) -> Any:
    return value.to_dict() if isinstance(value, Secret) else value


@dataclass
class Chat:
    type: str = "chat"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type}


@dataclass
class API:
    type: str = "api"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type}


@dataclass
class Telegram:
    """Deprecated in Capsule (use ``Channel(name)``); chatgate's Telegram bot is in its config."""

    type: str = "telegram"
    bot_token: CredentialValue = None

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "bot_token": _credential(self.bot_token)}


@dataclass
class Slack:
    type: str = "slack"
    bot_token: CredentialValue = None
    signing_secret: CredentialValue = None

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "bot_token": _credential(self.bot_token),
                "signing_secret": _credential(self.signing_secret)}


@dataclass
class WhatsApp:
    type: str = "whatsapp"
    access_token: CredentialValue = None
    phone_number_id: CredentialValue = None
    verify_token: CredentialValue = None

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "access_token": _credential(self.access_token),
                "phone_number_id": _credential(self.phone_number_id), "verify_token": _credential(self.verify_token)}


@dataclass
class Channel:
    """A named channel resource on Capsule's platform."""

    name: str
    type: str = field(default="_resource", init=False)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "name": self.name}


ChannelRef = Channel

__all__ = ["API", "PRICING_MONTHLY", "PRICING_ONE_TIME", "Channel", "ChannelRef", "Chat", "Image", "Slack",
           "Telegram", "WhatsApp"]
