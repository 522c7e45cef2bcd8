"""What an adapter hands the dispatcher: one normalised inbound event.

Adapters turn platform traffic (a Telegram update, a Slack event, a WebSocket frame, a REST call)
into an :class:`Inbound` and pass it to ``GatewayContext.submit``. The core never sees platform
payloads; everything it needs to route, deduplicate and answer is here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.types import Attachment, Event, Message, SessionChannel

InboundKind = Literal["message", "action", "button", "upload", "stop", "signal"]


@dataclass
class PlatformUser:
    """A user as the platform knows them. The store maps it to a stable chatgate ``UserInfo``.

    ``platform`` + ``id`` is the identity (``telegram``/``12345``, ``slack``/``T1:U1``,
    ``web``/``visitor-id``). ``email`` and ``org_id`` are kept when the platform vouches for them.
    """

    platform: str
    id: str
    email: str | None = None
    name: str | None = None
    org_id: str | None = None


@dataclass
class ButtonPress:
    """A press on a button chatgate rendered from a block.

    ``block_id`` is the block the button belongs to; ``value`` says which button: the index of a
    suggestion (``"0"``, ``"1"``...) or ``"approve"`` / ``"reject"`` for an approval. The core
    looks the block up and decides what the press means, so adapters need no per-block logic.
    """

    block_id: str
    value: str


@dataclass
class Inbound:
    """One inbound event.

    kind:
      - ``message``: ``message`` is set (text and/or attachments).
      - ``action``: ``action`` is set; runs the ``@app.action`` handler of that name.
      - ``button``: ``button`` is set; a press on a rendered suggestion or approval button.
      - ``upload``: ``message.attachments`` holds the file, ``prompt_id`` the ``file_upload``
        block it answers (web widget); a message with attachments also answers a file prompt.
      - ``stop``: cancel the session's running handler; never queued.
      - ``signal``: an internal answer to a waiting prompt (an integration connected),
        ``prompt_id`` names the prompt and ``payload`` carries the result.

    ``dedup_key`` must be unique per platform event (``tg:<bot>:<update_id>``,
    ``slack:<event_id>``, ``web:<client message id>``); a repeated key is dropped.
    ``session_id`` is set when the adapter already knows the session (web, REST); otherwise the
    session is found, or made, from ``channel`` (its type plus address).
    """

    kind: InboundKind
    dedup_key: str
    channel: SessionChannel
    user: PlatformUser
    message: Message | None = None
    action: Event | None = None
    button: ButtonPress | None = None
    prompt_id: str | None = None
    payload: dict[str, Any] = field(default_factory=dict)
    session_id: str | None = None
    chat_name: str | None = None
    """Selects a named ``@app.message(name)`` handler; sticks to the session once set."""
    platform_ref: str | None = None
    """The platform's id of the inbound message (Telegram message id, Slack ts)."""
    repeat_key: str | None = None
    """Events with the same ``repeat_key`` within ``repeat_window`` seconds of the first are that
    event: they record nothing and are answered with its id, in any process and after a restart
    (REST re-POSTs of the same content; the dedup key only catches the same platform event)."""
    repeat_window: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe form for the inbox; ``Inbound.from_json`` reverses it."""
        message = None
        if self.message is not None:
            message = self.message.to_dict()
        return {
            "kind": self.kind,
            "dedup_key": self.dedup_key,
            "channel": {
                "type": self.channel.type,
                "chat_id": self.channel.chat_id,
                "thread_id": self.channel.thread_id,
                "team_id": self.channel.team_id,
            },
            "user": self.user.__dict__,
            "message": message,
            "action": None
            if self.action is None
            else {"name": self.action.name, "payload": self.action.payload, "source": self.action.source},
            "button": None if self.button is None else self.button.__dict__,
            "prompt_id": self.prompt_id,
            "payload": self.payload,
            "session_id": self.session_id,
            "chat_name": self.chat_name,
            "platform_ref": self.platform_ref,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Inbound:
        message = None
        if data.get("message"):
            m = data["message"]
            attachments = [Attachment(**a) for a in m.get("attachments") or []] or None
            message = Message(
                text=m["text"],
                sender=m.get("sender", "user"),
                channel_type=m.get("channel_type", data["channel"]["type"]),
                timestamp=m.get("timestamp", 0.0),
                attachments=attachments,
            )
        action = Event(**data["action"]) if data.get("action") else None
        button = ButtonPress(**data["button"]) if data.get("button") else None
        return cls(
            kind=data["kind"],
            dedup_key=data["dedup_key"],
            channel=SessionChannel(**data["channel"]),
            user=PlatformUser(**data["user"]),
            message=message,
            action=action,
            button=button,
            prompt_id=data.get("prompt_id"),
            payload=data.get("payload") or {},
            session_id=data.get("session_id"),
            chat_name=data.get("chat_name"),
            platform_ref=data.get("platform_ref"),
        )


@dataclass
class Accepted:
    """``submit``'s answer: the event is durably recorded (or was a duplicate)."""

    inbound_id: str
    session_id: str
    duplicate: bool = False
