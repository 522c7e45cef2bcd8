"""chatgate: one async handler for a web chat widget, Telegram and Slack.

The public API, source-compatible with the Capsule SDK: ``import gateway as cpsl`` runs a
Capsule chat app unchanged.
"""

from gateway.app import App
from gateway.collections import CollectionManager, CollectionRef, Column, DynamicCollection
from gateway.context import current_session
from gateway.session import Session
from gateway.streaming import ReplyStream
from gateway.tasks import TaskDescriptor, TaskHandle
from gateway.types import (
    AWS,
    INTEGRATION_AWS,
    INTEGRATION_GCAL,
    INTEGRATION_GDRIVE,
    INTEGRATION_GITHUB,
    INTEGRATION_GMAIL,
    INTEGRATION_GOOGLE,
    INTEGRATION_LINEAR,
    INTEGRATION_OUTLOOK,
    INTEGRATION_TAILSCALE,
    Attachment,
    Block,
    Event,
    FileUpload,
    FileUploadTimeout,
    GitHub,
    Gmail,
    Google,
    GoogleCalendar,
    GoogleDrive,
    HomeContext,
    Integration,
    IntegrationConfig,
    IntegrationCredentials,
    IntegrationDeclined,
    IntegrationTimeout,
    Linear,
    Message,
    Outlook,
    RequestContext,
    Secret,
    SessionChannel,
    Suggestion,
    Tailscale,
    UserInfo,
)

PRICING_ONE_TIME = "one_time"  # Capsule's App(pricing_type=...) values: accepted, ignored
PRICING_MONTHLY = "monthly"


class Image:
    """Capsule's deploy-time image spec. chatgate runs in your own environment: accepted, ignored."""

    def __init__(self, *, python_packages=None, apt_packages=None, commands=None):
        self.python_packages = python_packages
        self.apt_packages = apt_packages
        self.commands = commands

    def add_python_packages(self, *packages):
        return self

    def add_apt_packages(self, *packages):
        return self

    def add_commands(self, *commands):
        return self


class _ChannelSpec:
    """Capsule's deploy-time channel declarations; chatgate takes channels from its config."""

    type = "chat"

    def __init__(self, *args, **kwargs):
        self.args = args
        self.kwargs = kwargs

    def to_dict(self) -> dict:
        return {"type": self.type, **self.kwargs}


class Chat(_ChannelSpec):
    type = "chat"


class API(_ChannelSpec):
    type = "api"


class Telegram(_ChannelSpec):
    type = "telegram"


class Slack(_ChannelSpec):
    type = "slack"


class WhatsApp(_ChannelSpec):
    type = "whatsapp"


class Channel(_ChannelSpec):
    type = "_resource"


ChannelRef = Channel

__all__ = [
    "API",
    "AWS",
    "INTEGRATION_AWS",
    "INTEGRATION_GCAL",
    "INTEGRATION_GDRIVE",
    "INTEGRATION_GITHUB",
    "INTEGRATION_GMAIL",
    "INTEGRATION_GOOGLE",
    "INTEGRATION_LINEAR",
    "INTEGRATION_OUTLOOK",
    "INTEGRATION_TAILSCALE",
    "PRICING_MONTHLY",
    "PRICING_ONE_TIME",
    "App",
    "Attachment",
    "Block",
    "Channel",
    "ChannelRef",
    "Chat",
    "CollectionManager",
    "CollectionRef",
    "Column",
    "DynamicCollection",
    "Event",
    "FileUpload",
    "FileUploadTimeout",
    "GitHub",
    "Gmail",
    "Google",
    "GoogleCalendar",
    "GoogleDrive",
    "HomeContext",
    "Image",
    "Integration",
    "IntegrationConfig",
    "IntegrationCredentials",
    "IntegrationDeclined",
    "IntegrationTimeout",
    "Linear",
    "Message",
    "Outlook",
    "ReplyStream",
    "RequestContext",
    "Secret",
    "Session",
    "SessionChannel",
    "Slack",
    "Suggestion",
    "Tailscale",
    "TaskDescriptor",
    "TaskHandle",
    "Telegram",
    "UserInfo",
    "WhatsApp",
    "current_session",
]
