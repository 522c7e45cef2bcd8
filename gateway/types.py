"""The value types a handler sees, source-compatible with the Capsule SDK (``cpsl``).

Every class here keeps Capsule's constructor signature and field order, so a Capsule app that
builds or inspects these values runs unchanged. Where chatgate knows more than Capsule does (the
platform address of a conversation, a way to download an attachment that needs a bot token), the
extra is an additional keyword field with a default, never a change to an existing one.
"""

from __future__ import annotations

import asyncio
import enum
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp

ChannelType = str
"""``chat`` (the web widget), ``api`` (REST), ``telegram``, ``slack`` or ``whatsapp``."""

Fetcher = Callable[[], Awaitable[bytes]]
"""Returns a file's bytes. Adapters set one when a plain GET of the URL is not enough."""


async def _download_to(path: str, name: str, url: str, fetch: Fetcher | None) -> str:
    """Write a file to ``path`` (a directory gets ``name`` appended); return the final path."""
    if fetch is not None:
        data = await fetch()
    else:
        async with aiohttp.ClientSession() as http, http.get(url) as response:
            response.raise_for_status()
            data = await response.read()
    return await asyncio.to_thread(_write_file, path, name, data)


def _write_file(path: str, name: str, data: bytes) -> str:
    if os.path.isdir(path):
        path = os.path.join(path, os.path.basename(name) or "file")
    with open(path, "wb") as out:
        out.write(data)
    return path


@dataclass
class Attachment:
    """A file that came with a user's message."""

    name: str
    content_type: str
    url: str
    size: int = 0
    fetch: Fetcher | None = field(default=None, repr=False, compare=False)

    async def download(self, path: str) -> str:
        """Save the file at ``path`` (or inside it, when it is a directory) and return the path."""
        return await _download_to(path, self.name, self.url, self.fetch)

    async def read(self) -> bytes:
        """The file's bytes, without writing them anywhere."""
        if self.fetch is not None:
            return await self.fetch()
        async with aiohttp.ClientSession() as http, http.get(self.url) as response:
            response.raise_for_status()
            return await response.read()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "content_type": self.content_type, "url": self.url, "size": self.size}


Sender = Literal["user", "app", "system", "block"]


@dataclass
class Message:
    """One entry of a conversation: the user's message, or something the app said."""

    text: str
    sender: str = "user"
    channel_type: ChannelType = "chat"
    timestamp: float = field(default_factory=time.time)
    attachments: list[Attachment] | None = None
    id: str = field(default="", compare=False)
    """chatgate's stored id of this message (empty for a message not yet stored)."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "text": self.text,
            "sender": self.sender,
            "channel_type": self.channel_type,
            "timestamp": self.timestamp,
        }
        if self.attachments:
            out["attachments"] = [a.to_dict() for a in self.attachments]
        return out


@dataclass
class Event:
    """A button press or UI action, as an ``@app.action`` handler receives it."""

    name: str
    payload: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] | None = None


def new_block_id(prefix: str = "blk") -> str:
    return f"{prefix}_{secrets.token_hex(6)}"


@dataclass
class Block:
    """Structured content. Showing a block whose id was shown before updates it in place."""

    type: str
    payload: dict[str, Any]
    id: str = ""

    def to_envelope(self) -> dict[str, Any]:
        return {"id": self.id or new_block_id(), "type": self.type, "payload": self.payload}


@dataclass
class FileUpload:
    """The file a user gave in answer to ``session.prompt_file``."""

    name: str
    content_type: str
    url: str
    size: int
    path: str | None = None
    fetch: Fetcher | None = field(default=None, repr=False, compare=False)

    async def download(self, path: str) -> str:
        self.path = await _download_to(path, self.name, self.url, self.fetch)
        return self.path


@dataclass
class UserInfo:
    """Who is talking. ``id`` is chatgate's stable user id, the same across reconnects."""

    id: str
    email: str | None = None
    org_id: str | None = None

    @staticmethod
    def org_id_from_owner_id(owner_id: str | None) -> str | None:
        if owner_id and owner_id.startswith("org:"):
            return owner_id[4:] or None
        return None

    @property
    def is_org_member(self) -> bool:
        return bool(self.org_id)

    @property
    def owner_id(self) -> str:
        """The key for "owner" scoping: ``org:<org_id>`` for an org member, else the user id."""
        return f"org:{self.org_id}" if self.org_id else self.id


@dataclass
class SessionChannel:
    """Where a session lives. ``type`` is Capsule's; the other fields are chatgate's address.

    Telegram: ``chat_id`` and ``thread_id`` (forum topic). Slack: ``team_id``, ``chat_id`` (the
    channel) and ``thread_id`` (the thread ``ts``). Web: none of them.
    """

    type: ChannelType = "chat"
    chat_id: str | None = None
    thread_id: str | None = None
    team_id: str | None = None

    @property
    def address(self) -> dict[str, str]:
        """The platform address as a plain dict, without the empty parts."""
        return {
            k: v
            for k, v in (("chat_id", self.chat_id), ("thread_id", self.thread_id), ("team_id", self.team_id))
            if v is not None
        }


@dataclass
class IntegrationCredentials:
    access_token: str = ""
    token_type: str = "Bearer"
    scopes: list[str] = field(default_factory=list)
    expires_at: int = 0
    fields: dict[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.access_token or self.fields)


class RequestContext:
    """What an ``@app.endpoint`` or ``@app.data`` handler learns about the caller."""

    def __init__(
        self,
        user: UserInfo,
        integrations: dict[str, IntegrationCredentials] | None = None,
        authenticated: bool = False,
        request: Any = None,
        session_stub: Any = None,
        app_id: str = "",
        env: str = "",
    ) -> None:
        self.user = user
        self.integrations = integrations or {}
        self.authenticated = authenticated
        self.request = request
        self.session_stub = session_stub
        self.app_id = app_id
        self.env = env


class HomeContext(RequestContext):
    def __init__(
        self,
        *,
        user: UserInfo,
        integrations: dict[str, IntegrationCredentials] | None = None,
        authenticated: bool = False,
        request: Any = None,
        db: Any = None,
        app: Any = None,
    ) -> None:
        super().__init__(user, integrations, authenticated, request)
        self.db = db
        self.app = app


@dataclass
class Suggestion:
    """A clickable button: ``prompt`` sends text as the user, ``action`` runs an ``@app.action``.

    Capsule's fields, in Capsule's order. ``action`` (and ``prompt``) may also be an object with a
    ``name`` (Capsule accepts a decorated action). chatgate has no workflows or pages, so those
    targets are refused when the button is shown; with no target at all, the label is the prompt.
    """

    label: str
    prompt: str | None = None
    workflow: Any | None = None
    page: str | None = None
    action: Any | None = None
    description: str | None = None
    icon: str | None = None
    image: str | None = None
    accent: str | None = None
    primary: bool = False
    input: dict[str, Any] | None = None
    payload: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        targets = [t for t in (self.prompt, self.workflow, self.page, self.action) if t is not None]
        if len(targets) > 1:
            raise ValueError("Suggestion takes one of prompt=, workflow=, page= or action=")
        if self.input and self.payload:
            raise ValueError("Suggestion accepts input= or payload=, not both")
        if (self.input or self.payload) and self.action is None and self.workflow is None:
            raise ValueError("Suggestion input/payload go with action= (or workflow=)")

    def to_dict(self) -> dict[str, Any]:
        if self.workflow is not None or self.page is not None:
            raise ValueError("chatgate supports prompt and action suggestions, not workflow or page")
        if self.action is not None:
            out: dict[str, Any] = {"label": self.label, "target": "action", "value": _target_name(self.action)}
        else:
            prompt = self.label if self.prompt is None else _target_name(self.prompt)
            out = {"label": self.label, "target": "prompt", "value": prompt}
        for key in ("description", "icon", "image", "accent"):
            value = getattr(self, key)
            if value:
                out[key] = value
        if self.primary:
            out["primary"] = True
        payload = self.input or self.payload
        if payload:
            out["payload"] = dict(payload)
        return out


def _target_name(value: Any) -> str:
    name = getattr(value, "name", None) or getattr(value, "_cpsl_action", None) or value
    if not isinstance(name, str) or not name:
        raise ValueError("a suggestion target is a non-empty string or an object with a .name")
    return name


# -- integration declarations (Capsule's ``cpsl.integration`` helpers) ------------------------

INTEGRATION_GOOGLE = "google"
INTEGRATION_GMAIL = "gmail"
INTEGRATION_GCAL = "gcal"
INTEGRATION_GDRIVE = "gdrive"
INTEGRATION_OUTLOOK = "outlook"
INTEGRATION_GITHUB = "github"
INTEGRATION_LINEAR = "linear"
INTEGRATION_TAILSCALE = "tailscale"
INTEGRATION_AWS = "aws"


class Integration(enum.StrEnum):
    """The built-in integration names (the values are the strings handlers use)."""

    GOOGLE = INTEGRATION_GOOGLE
    GMAIL = INTEGRATION_GMAIL
    GCAL = INTEGRATION_GCAL
    GDRIVE = INTEGRATION_GDRIVE
    OUTLOOK = INTEGRATION_OUTLOOK
    GITHUB = INTEGRATION_GITHUB
    LINEAR = INTEGRATION_LINEAR
    TAILSCALE = INTEGRATION_TAILSCALE
    AWS = INTEGRATION_AWS


_SECRET_PRESETS = (INTEGRATION_TAILSCALE, INTEGRATION_AWS)


@dataclass
class Secret:
    """Capsule's ``Secret.from_name(name).value``: chatgate reads the environment variable."""

    _name: str | None = field(default=None, repr=False)

    @staticmethod
    def from_name(name: str) -> Secret:
        return Secret(_name=name)

    @property
    def name(self) -> str | None:
        return self._name

    def to_dict(self) -> dict[str, Any]:
        return {"_secret_name": self._name}

    @property
    def value(self) -> str:
        if not self._name:
            raise ValueError("Secret has no name")
        value = os.environ.get(self._name)
        if value is None:
            raise ValueError(f"secret {self._name!r} is not set: chatgate reads secrets from the environment "
                             f"(export {self._name}=...)")
        return value


def resolve_secret(value: Any) -> Any:
    """A ``Secret``'s value (``""`` when its variable is not set, so the config can supply it),
    or ``value`` itself."""
    if isinstance(value, Secret):
        return os.environ.get(value.name or "", "")
    return value


@dataclass
class IntegrationConfig:
    """An integration the app asks users to connect, as ``app.add_integration`` takes it.

    OAuth: ``client_id``/``client_secret`` (strings or ``Secret``) and ``scopes``; ``[integrations
    .providers.<type>]`` in the config fills in or overrides them. Secret integrations: ``fields``
    (``tailscale`` and ``aws`` have presets with their fields)."""

    type: str | Integration
    client_id: str | Secret = ""
    client_secret: str | Secret = ""
    scopes: list[str] = field(default_factory=list)
    fields: list[str] | None = None
    mode: str = ""

    def __post_init__(self) -> None:
        self.type = self.type.value if isinstance(self.type, Integration) else str(self.type)
        if not self.mode:
            self.mode = "secret" if self.fields or self.type in _SECRET_PRESETS else "oauth"


def _oauth(kind: Integration, client_id: str | Secret, client_secret: str | Secret,
           scopes: list[str] | None) -> IntegrationConfig:
    return IntegrationConfig(kind, client_id=client_id, client_secret=client_secret, scopes=list(scopes or []),
                             mode="oauth")


def Google(
    *, client_id: str | Secret, client_secret: str | Secret, scopes: list[str] | None = None
) -> IntegrationConfig:
    return _oauth(Integration.GOOGLE, client_id, client_secret, scopes)


def Gmail(
    *, client_id: str | Secret, client_secret: str | Secret, scopes: list[str] | None = None
) -> IntegrationConfig:
    return _oauth(Integration.GMAIL, client_id, client_secret, scopes)


def GoogleCalendar(
    *, client_id: str | Secret, client_secret: str | Secret, scopes: list[str] | None = None
) -> IntegrationConfig:
    return _oauth(Integration.GCAL, client_id, client_secret, scopes)


def GoogleDrive(
    *, client_id: str | Secret, client_secret: str | Secret, scopes: list[str] | None = None
) -> IntegrationConfig:
    return _oauth(Integration.GDRIVE, client_id, client_secret, scopes)


def Outlook(
    *, client_id: str | Secret, client_secret: str | Secret, scopes: list[str] | None = None
) -> IntegrationConfig:
    """Outlook always asks for ``offline_access`` (a refresh token), as in Capsule."""
    scopes = list(scopes or [])
    if "offline_access" not in scopes:
        scopes.append("offline_access")
    return _oauth(Integration.OUTLOOK, client_id, client_secret, scopes)


def GitHub(
    *, client_id: str | Secret, client_secret: str | Secret, scopes: list[str] | None = None
) -> IntegrationConfig:
    return _oauth(Integration.GITHUB, client_id, client_secret, scopes)


def Linear(
    *, client_id: str | Secret, client_secret: str | Secret, scopes: list[str] | None = None
) -> IntegrationConfig:
    return _oauth(Integration.LINEAR, client_id, client_secret, scopes)


def Tailscale(*, advertise_tags: bool = False) -> IntegrationConfig:
    """The ``tailscale`` secret preset (an auth key); ``advertise_tags`` adds that field."""
    return IntegrationConfig(Integration.TAILSCALE, fields=["auth_key", "advertise_tags"] if advertise_tags else None,
                             mode="secret")


def AWS() -> IntegrationConfig:
    """The ``aws`` secret preset (access key id, secret access key, region)."""
    return IntegrationConfig(Integration.AWS, mode="secret")


def integration_name(integration: Any) -> str:
    """The lower-case name of an integration given as a string or a Capsule-style object
    (``GitHub()``, ``IntegrationConfig``: anything with ``type``, ``name`` or ``integration_type``)."""
    if isinstance(integration, enum.Enum) and isinstance(integration.value, str):
        return integration.value.lower()
    if isinstance(integration, str):
        return integration.lower()
    for attr in ("type", "name", "integration_type"):
        value = getattr(integration, attr, None)
        if isinstance(value, str) and value:
            return value.lower()
    raise ValueError(f"not an integration: {integration!r}")


class IntegrationTimeout(TimeoutError):
    """``prompt_integration`` / ``require_integration`` waited longer than its timeout."""


class IntegrationDeclined(RuntimeError):
    """The user did not connect the integration."""


class FileUploadTimeout(TimeoutError):
    """``prompt_file`` waited longer than its timeout."""


class UnknownSession(LookupError):
    """An inbound event or a caller named a session id that does not exist (or no longer does)."""
