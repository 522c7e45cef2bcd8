"""A test client: talk to an app in-process as a user of a chosen channel.

```python
from gateway.testing import TestClient

async def test_echo(tmp_path):
    async with TestClient(app, tmp_path) as client:
        turn = await client.send("hi")
        assert turn.text == "echo: hi"
```

It runs the real Gateway (store on a SQLite file under ``tmp_path``, dispatcher, sessions) with a
recording adapter in place of a platform, so what a handler sends is captured exactly as an
adapter would receive it: texts, stream frames, blocks, notifications. ``send`` returns when the
turn ends, or earlier when the handler waits on a prompt, which the test can then answer:
``approve``/``reject``, ``upload``, ``press``/``click``, and for ``prompt_integration`` /
``require_integration`` ``connect_integration`` or ``decline_integration``, which go through the
integrations service as the connect pages do (credentials stored for the user, the waiting prompt
answered by a ``signal``). ``TestClient.connect_integration`` connects one before a conversation.
Integrations need a provider (``app.add_integration`` or ``integrations={"providers": {...}}``)
and ``integrations={"encryption_key": generate_key()}`` (from ``gateway.integrations.crypto``).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from gateway.app import App
from gateway.config import Settings, load_settings
from gateway.inbound import ButtonPress, Inbound, PlatformUser
from gateway.outbound import Capabilities, Limits, MessageRef
from gateway.runtime import Gateway
from gateway.types import Attachment, Event, Message, SessionChannel, integration_name

if TYPE_CHECKING:
    from gateway.integrations.providers import ProviderSpec
    from gateway.integrations.service import IntegrationService
    from gateway.integrations.state import ConnectState

TEST_CHANNELS = ("chat", "api", "telegram", "slack", "whatsapp")


@dataclass
class Sent:
    """One thing the app sent: ``kind`` is ``text``, ``stream``, ``block`` or ``notify``."""

    kind: str
    message_id: str = ""
    text: str = ""
    block: dict[str, Any] | None = None
    frames: list[str] = field(default_factory=list)
    stopped: bool = False
    detail: str = ""


@dataclass
class Turn:
    """What the app sent in answer to one event."""

    sent: list[Sent] = field(default_factory=list)
    error: str | None = None
    ended: bool = False

    @property
    def replies(self) -> list[str]:
        """Texts of plain replies and finished streams, in order."""
        return [s.text for s in self.sent if s.kind in ("text", "stream")]

    @property
    def text(self) -> str:
        return "\n".join(self.replies)

    @property
    def blocks(self) -> list[dict[str, Any]]:
        return [s.block for s in self.sent if s.kind == "block" and s.block is not None]

    @property
    def notifications(self) -> list[str]:
        return [s.text for s in self.sent if s.kind == "notify"]

    @property
    def streams(self) -> list[Sent]:
        return [s for s in self.sent if s.kind == "stream"]

    def block(self, block_type: str) -> dict[str, Any]:
        """The last block of ``block_type`` in this turn (raises if there is none)."""
        for block in reversed(self.blocks):
            if block["type"] == block_type:
                return block
        raise AssertionError(f"no {block_type!r} block in this turn; got {[b['type'] for b in self.blocks]}")


class _RecordingSink:
    def __init__(self, conversation: Conversation, record: Sent, min_interval: float) -> None:
        self.conversation = conversation
        self.record = record
        self.min_interval = min_interval

    async def frame(self, text: str) -> None:
        self.record.frames.append(text)

    async def close(self, text: str, *, stopped: bool) -> list[MessageRef]:
        self.record.text = text
        self.record.stopped = stopped
        return [self.record.message_id]


class _RecordingOutbox:
    def __init__(self, conversation: Conversation) -> None:
        self.conversation = conversation

    async def send_text(self, message_id: str, text: str) -> list[MessageRef]:
        self.conversation._record(Sent("text", message_id, text))
        return [message_id]

    def open_stream(self, message_id: str) -> _RecordingSink:
        record = Sent("stream", message_id)
        self.conversation._record(record)
        return _RecordingSink(self.conversation, record, self.conversation.client.stream_interval)

    async def show_block(
        self, message_id: str, envelope: dict[str, Any], previous: list[MessageRef] | None
    ) -> list[MessageRef]:
        self.conversation._record(Sent("block", message_id, block=envelope))
        return [message_id]

    async def notify(self, text: str, detail: str) -> None:
        self.conversation._record(Sent("notify", text=text, detail=detail))

    async def end_turn(self, inbound_id: str | None, error: str | None) -> None:
        self.conversation._end(inbound_id, error)


class RecordingAdapter:
    """The adapter behind the test client: records what the app sends, per session."""

    limits = Limits(max_text=1_000_000)
    capabilities = Capabilities()

    def __init__(self, client: TestClient, channel_types: tuple[str, ...] = TEST_CHANNELS) -> None:
        self.client = client
        self.channel_types = channel_types

    def mount(self, web_app: Any) -> None:
        return None

    async def start(self, gateway: Any) -> None:
        return None

    async def stop(self) -> None:
        return None

    def outbox(self, channel: SessionChannel, session_id: str, turn: str | None = None) -> _RecordingOutbox:
        return _RecordingOutbox(self.client._conversation_for(session_id))

    def resolve_attachment(self, attachment: Attachment) -> Attachment:
        if attachment.url.startswith("test-file:") and attachment.fetch is None:
            data = self.client._files.get(attachment.url, b"")

            async def fetch() -> bytes:
                return data

            attachment.fetch = fetch
        return attachment

    def describe(self) -> str:
        return "test recorder"


class Conversation:
    """One user's conversation with the app on one channel."""

    def __init__(self, client: TestClient, session_id: str, channel: SessionChannel, user: PlatformUser) -> None:
        self.client = client
        self.session_id = session_id
        self.channel = channel
        self.user = user
        self.sent: list[Sent] = []
        self._turns: dict[str, Turn] = {}
        self._current: Turn | None = None
        self._changed = asyncio.Condition()

    def _record(self, item: Sent) -> None:
        self.sent.append(item)
        if self._current is not None:
            self._current.sent.append(item)
        self._poke()

    def _end(self, inbound_id: str | None, error: str | None) -> None:
        turn = self._turns.get(inbound_id or "")
        if turn is not None:
            turn.ended = True
            turn.error = error
        self._poke()

    def _poke(self) -> None:
        async def notify() -> None:
            async with self._changed:
                self._changed.notify_all()

        asyncio.get_running_loop().create_task(notify())

    @property
    def waiting_prompt(self) -> dict[str, Any] | None:
        """The blocking prompt the app waits on, if any."""
        latest: dict[str, dict[str, Any]] = {}
        for item in self.sent:
            if item.kind == "block" and item.block is not None:
                latest[item.block["id"]] = item.block
        waiting = [b for b in latest.values() if b["payload"].get("blocking")]
        return waiting[-1] if waiting else None

    async def _submit(self, inbound: Inbound, *, timeout: float) -> Turn:
        turn = Turn()
        self._current = turn
        accepted = await self.client.gateway.submit(inbound)
        self._turns[accepted.inbound_id] = turn
        if accepted.duplicate:
            turn.ended = True
            return turn
        await self._wait(turn, timeout)
        return turn

    async def _wait(self, turn: Turn, timeout: float) -> None:
        def settled() -> bool:
            return turn.ended or self.waiting_prompt is not None

        await self._until(settled, timeout, turn, "the turn to end or a prompt")

    async def _until(self, settled: Any, timeout: float, turn: Turn, what: str) -> None:
        """Wait for ``settled()``; on timeout, fail saying what the app had sent by then."""
        try:
            async with self._changed:
                await asyncio.wait_for(self._changed.wait_for(settled), timeout)
        except TimeoutError:
            sent = [(s.kind, s.text or (s.block or {}).get("type", "")) for s in turn.sent]
            raise AssertionError(f"waited {timeout:g} s for {what}; the app sent {sent or 'nothing'} "
                                 "(raise timeout= if the handler is slow)") from None

    def _inbound(self, kind: str, **fields: Any) -> Inbound:
        return Inbound(
            kind=kind,  # type: ignore[arg-type]
            dedup_key=fields.pop("dedup_key", None) or f"test:{secrets.token_hex(8)}",
            channel=self.channel,
            user=self.user,
            session_id=self.session_id,
            **fields,
        )

    async def send(
        self,
        text: str = "",
        *,
        files: dict[str, bytes] | None = None,
        dedup_key: str | None = None,
        chat_name: str | None = None,
        timeout: float = 10.0,
    ) -> Turn:
        """Send a message (with optional files ``{name: bytes}``) and wait for the turn."""
        attachments = [self.client._attachment(name, data) for name, data in (files or {}).items()] or None
        message = Message(text, "user", self.channel.type, attachments=attachments)
        inbound = self._inbound("message", message=message, dedup_key=dedup_key, chat_name=chat_name)
        return await self._submit(inbound, timeout=timeout)

    async def action(self, name: str, payload: dict[str, Any] | None = None, *, timeout: float = 10.0) -> Turn:
        return await self._submit(self._inbound("action", action=Event(name, payload or {})), timeout=timeout)

    async def press(self, block_id: str, value: str, *, timeout: float = 10.0) -> Turn:
        inbound = self._inbound("button", button=ButtonPress(block_id, value))
        return await self._answer(inbound, timeout)

    async def click(self, label: str, *, timeout: float = 10.0) -> Turn:
        """Press the suggestion button labelled ``label`` (the latest one shown)."""
        for item in reversed(self.sent):
            if item.block and item.block["type"] == "suggestions":
                for index, suggestion in enumerate(item.block["payload"]["suggestions"]):
                    if suggestion["label"] == label:
                        return await self.press(item.block["id"], str(index), timeout=timeout)
        raise AssertionError(f"no suggestion button labelled {label!r} was shown")

    async def approve(self, *, timeout: float = 10.0) -> Turn:
        return await self.press(self._prompt("approval_prompt")["id"], "approve", timeout=timeout)

    async def reject(self, *, timeout: float = 10.0) -> Turn:
        return await self.press(self._prompt("approval_prompt")["id"], "reject", timeout=timeout)

    async def upload(self, name: str, data: bytes, *, content_type: str | None = None, timeout: float = 10.0) -> Turn:
        """Answer the waiting ``prompt_file`` with a file."""
        prompt = self._prompt("file_upload")
        attachment = self.client._attachment(name, data, content_type)
        message = Message("", "user", self.channel.type, attachments=[attachment])
        inbound = self._inbound("upload", message=message, prompt_id=prompt["id"])
        return await self._answer(inbound, timeout)

    async def connect_integration(
        self,
        integration: Any = None,
        *,
        access_token: str = "",
        fields: dict[str, str] | None = None,
        refresh_token: str = "",
        token_type: str = "Bearer",
        scopes: list[str] | None = None,
        expires_at: int = 0,
        timeout: float = 10.0,
    ) -> Turn:
        """Answer the waiting ``prompt_integration``/``require_integration`` as the user connecting
        the account: ``access_token`` (optionally ``refresh_token``, ``scopes``, default the
        provider's, and ``expires_at``) for an OAuth provider, ``fields`` for a secret one (checked as
        its form checks them). The credentials are stored for the user (or their org, for an
        owner-scoped provider) by the integrations service, as the connect pages store them, so the
        handler gets them and later turns find them with ``get_integration``. ``integration`` (a
        name or Capsule object), when given, must be the one asked for. Leave ``expires_at`` 0 (never
        expires): a token near expiry is refreshed at the provider, as in production."""
        service, provider, state = self._integration_state(integration)
        payload, expiry = _credential_payload(provider, access_token, fields, refresh_token, token_type,
                                              scopes, expires_at)

        async def deliver() -> None:
            await service.complete_with(provider, state, payload, expires_at=expiry)

        return await self._answer_by(deliver, timeout)

    async def decline_integration(self, integration: Any = None, *, timeout: float = 10.0) -> Turn:
        """Answer the waiting integration prompt as the user pressing "Don't connect": the handler's
        ``prompt_integration``/``require_integration`` raises ``IntegrationDeclined``. (Left
        unanswered, a prompt raises ``IntegrationTimeout`` after its ``timeout``.)"""
        service, _, state = self._integration_state(integration)

        async def deliver() -> None:
            await service.decline(state, from_provider=False)

        return await self._answer_by(deliver, timeout)

    def _integration_state(self, integration: Any) -> tuple[IntegrationService, ProviderSpec, ConnectState]:
        """The service, provider and connect state of the waiting integration prompt, read from
        its connect link as the connect page reads it."""
        payload = self._prompt("integration_prompt")["payload"]
        kind = payload["type"]
        if integration is not None and integration_name(integration) != kind:
            raise AssertionError(f"the app waits on {kind!r}, not {integration_name(integration)!r}")
        service = self.client._integrations()
        token = parse_qs(urlsplit(payload["connect_url"]).query).get("state", [""])[0]
        provider, state = service.verify(kind, token)
        return service, provider, state

    async def stop(self) -> None:
        await self.client.gateway.submit(self._inbound("stop"))

    async def finish(self, *, timeout: float = 10.0) -> Turn:
        """Wait until the current turn ends (past any prompt); returns it."""
        turn = self._current
        if turn is None:
            raise AssertionError("nothing was sent yet")
        await self._until(lambda: turn.ended, timeout, turn, "the turn to end")
        return turn

    def _prompt(self, block_type: str) -> dict[str, Any]:
        prompt = self.waiting_prompt
        if prompt is None or prompt["type"] != block_type:
            raise AssertionError(f"the app is not waiting on a {block_type}")
        return prompt

    async def _answer(self, inbound: Inbound, timeout: float) -> Turn:
        """Answer a prompt (or press a button). The returned Turn holds what the app sent from
        now until the turn ends or the app waits on another prompt."""

        async def deliver() -> str:
            return (await self.client.gateway.submit(inbound)).inbound_id

        return await self._answer_by(deliver, timeout)

    async def _answer_by(self, deliver: Callable[[], Awaitable[str | None]], timeout: float) -> Turn:
        """``_answer`` with the answer delivered by ``deliver`` (which returns the inbox id of an
        event it submitted, or None when something else, the integrations service, submits it)."""
        before = self.waiting_prompt
        turn, previous = Turn(), self._current
        self._current = turn
        if previous is not None and not previous.ended:  # the waiting turn continues here
            for waiting_id, waiting in list(self._turns.items()):
                if waiting is previous:
                    self._turns[waiting_id] = turn
        inbound_id = await deliver()
        if inbound_id is not None:
            self._turns.setdefault(inbound_id, turn)

        def settled() -> bool:
            prompt = self.waiting_prompt
            return turn.ended or (prompt is not None and prompt["id"] != (before or {}).get("id"))

        await self._until(settled, timeout, turn, "the answer's turn to end or another prompt")
        return turn


def _credential_payload(
    provider: ProviderSpec, access_token: str, fields: dict[str, str] | None, refresh_token: str,
    token_type: str, scopes: list[str] | None, expires_at: int,
) -> tuple[dict[str, Any], int]:
    """What the service stores for these credentials: ``({"fields": ...}, 0)`` for a secret
    provider (validated as its form validates), a ``TokenSet`` payload for an OAuth one."""
    if provider.mode == "secret":
        from gateway.integrations.secrets_form import validate_secret_form

        if access_token or fields is None:
            raise ValueError(f"{provider.name} is a secret provider: pass fields= "
                             f"({', '.join(f.name for f in provider.fields)}), not an access token")
        values, errors = validate_secret_form(provider, fields)
        if errors:
            raise ValueError(f"the {provider.title} form refuses these fields: {errors}")
        return {"fields": values}, 0
    from gateway.integrations.oauth import TokenSet

    if not access_token or fields is not None:
        raise ValueError(f"{provider.name} is an OAuth provider: pass access_token=, not fields")
    tokens = TokenSet(access_token, token_type, refresh_token,
                      list(provider.scopes) if scopes is None else list(scopes), int(expires_at))
    return tokens.to_payload(), tokens.expires_at


def test_settings(root: str | os.PathLike[str], **overrides: Any) -> Settings:
    """Settings for a gateway living in ``root``: a SQLite file and uploads there, a loopback
    port picked at start, the web channel and the scheduler off. ``overrides`` are sections
    (``telegram={"bot_token": ...}``), merged key by key into these defaults."""
    root = Path(root)
    base: dict[str, Any] = {
        "data_dir": str(root),
        "secret_key": "test-secret-of-at-least-32-bytes-0123",
        "server": {"host": "127.0.0.1", "port": 0},
        "database": {"url": f"sqlite+aiosqlite:///{root / 'chatgate.db'}"},
        "files": {"dir": str(root / "files")},
        "web": {"enabled": False},
        "scheduler": {"enabled": False},
    }
    for section, values in overrides.items():
        if isinstance(values, dict) and isinstance(base.get(section), dict):
            base[section] = {**base[section], **values}
        else:
            base[section] = values
    return load_settings(None, **base)


test_settings.__test__ = False  # type: ignore[attr-defined]  # a helper, not a pytest test


class TestClient:
    """Run an app in-process for tests. ``tmp_path`` holds its SQLite file and uploads."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        app: App,
        tmp_path: str | os.PathLike[str] | None = None,
        *,
        settings: Settings | None = None,
        database_url: str | None = None,
        stream_interval: float = 0.0,
        **overrides: Any,
    ) -> None:
        self.app = app
        root = Path(tmp_path) if tmp_path is not None else Path(".chatgate-test")
        if settings is None:
            if database_url is not None:
                overrides["database"] = {**overrides.get("database", {}), "url": database_url}
            settings = test_settings(root, **overrides)
        self.settings = settings
        self.stream_interval = stream_interval
        self.gateway = Gateway(app, settings, adapters=[RecordingAdapter(self)])
        self._conversations: dict[str, Conversation] = {}
        self._files: dict[str, bytes] = {}
        self._counter = itertools.count(1)
        self._default: Conversation | None = None

    async def __aenter__(self) -> TestClient:
        await self.gateway.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.gateway.stop()

    async def conversation(self, user: str = "user-1", *, channel: str = "chat", email: str | None = None,
                           org_id: str | None = None) -> Conversation:
        """A new conversation of ``user`` on ``channel`` (``chat``, ``telegram``, ``slack``...)."""
        platform_user = PlatformUser("test", user, email=email, org_id=org_id)
        info = await self.gateway.store.users.resolve(platform_user)
        address = SessionChannel(channel) if channel in ("chat", "api") else SessionChannel(
            channel, chat_id=f"{user}-{next(self._counter)}"
        )
        record = await self.gateway.store.sessions.create(address, info)
        conversation = Conversation(self, record.id, address, platform_user)
        self._conversations[record.id] = conversation
        return conversation

    async def connect_integration(
        self,
        integration: Any,
        user: str = "user-1",
        *,
        email: str | None = None,
        org_id: str | None = None,
        access_token: str = "",
        fields: dict[str, str] | None = None,
        refresh_token: str = "",
        token_type: str = "Bearer",
        scopes: list[str] | None = None,
        expires_at: int = 0,
    ) -> None:
        """Connect ``integration`` for ``user`` (as ``conversation()`` names them; ``org_id`` for
        an owner-scoped provider) without a prompt, as if they had connected it before: their
        turns find it in ``session.integrations``. Credentials as ``Conversation.connect_integration``
        takes them; stored by the integrations service the same way."""
        service = self._integrations()
        kind = integration_name(integration)
        provider = service.provider(kind)
        if provider is None:
            raise AssertionError(f"no integration named {kind!r} is configured (configured: "
                                 f"{', '.join(sorted(service.providers))})")
        payload, expiry = _credential_payload(provider, access_token, fields, refresh_token, token_type,
                                              scopes, expires_at)
        info = await self.gateway.store.users.resolve(PlatformUser("test", user, email=email, org_id=org_id))
        state, _ = service.signer.issue(  # a connect link with no prompt to answer
            provider=provider.name, user_id=info.id, scope_key=service.scope_key(provider, info),
            session_id="", prompt_id=None, ttl=service.settings.state_ttl_seconds,
        )
        await service.complete_with(provider, state, payload, expires_at=expiry)

    def _integrations(self) -> IntegrationService:
        service = self.gateway.integrations
        if service is None:
            raise AssertionError("no integrations are configured: declare one with app.add_integration or "
                                 "integrations={'providers': {...}} (and set integrations={'encryption_key': ...})")
        return service

    def _conversation_for(self, session_id: str) -> Conversation:
        found = self._conversations.get(session_id)
        if found is None:  # a session made by the app itself (jobs, broadcasts)
            found = Conversation(self, session_id, SessionChannel("chat"), PlatformUser("test", "?"))
            self._conversations[session_id] = found
        return found

    def _attachment(self, name: str, data: bytes, content_type: str | None = None) -> Attachment:
        import mimetypes

        url = f"test-file:{secrets.token_hex(8)}"
        self._files[url] = data
        ctype = content_type or mimetypes.guess_type(name)[0] or "application/octet-stream"
        return Attachment(name, ctype, url, len(data))

    async def send(self, text: str = "", **kwargs: Any) -> Turn:
        """Send as the default user in one default conversation."""
        if self._default is None:
            self._default = await self.conversation()
        return await self._default.send(text, **kwargs)

    @property
    def default(self) -> Conversation:
        if self._default is None:
            raise RuntimeError("no message sent yet")
        return self._default


__all__ = ["Conversation", "RecordingAdapter", "Sent", "TestClient", "Turn", "test_settings"]
