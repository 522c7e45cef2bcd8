"""Slack payloads -> ``Inbound`` events: which events matter, and where each conversation lives.

Sessions: one per thread. A top-level message in a channel (a mention) opens a thread on that
message, so its session is addressed by the message's ``ts``. Top-level DM messages follow
``slack.dm_sessions``: ``per_thread`` (default) makes each top-level DM its own thread and
session, as Slack's assistant UI does; ``per_dm`` keeps one session for the whole DM, replied to
at top level (thread replies inside the DM still get their own session).
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from typing import Any, Literal

from adapters.base import ButtonPress, Inbound, PlatformUser
from adapters.slack.blocks import LINK_ACTION_ID, envelope_block_id
from gateway.types import Attachment, Message, SessionChannel

CHANNEL_TYPE = "slack"
RELEVANT_SUBTYPES = frozenset({None, "file_share", "thread_broadcast"})
"""Message subtypes that are a person saying something; every other subtype (edits, deletions,
joins, bot_message, ...) is ignored (docs.slack.dev, message event subtypes)."""
SKIPPED_FILE_MODES = frozenset({"tombstone", "hidden_by_limit", "external"})
"""Shared files without downloadable bytes."""

MessageRoute = Literal["ignore", "dm", "mention", "thread"]

EVENTS_API_TYPES = frozenset({"url_verification", "event_callback"})
"""Top-level ``type`` values of Events API requests that bolt routes (docs.slack.dev, Events API)."""
INTERACTIVE_TYPES = frozenset(
    {
        "block_actions",
        "block_suggestion",
        "view_submission",
        "view_closed",
        "shortcut",
        "message_action",
        "interactive_message",
        "dialog_submission",
        "dialog_cancellation",
        "dialog_suggestion",
    }
)
"""Interactivity payload types (docs.slack.dev, interactivity payloads): we act on ``block_actions``
and acknowledge the rest."""
RATE_LIMITED_TYPE = "app_rate_limited"
"""Slack's notice that it is withholding events from the app (more than 30,000 an hour per
workspace); it expects a 200 and nothing else (docs.slack.dev, Events API rate limits)."""


class MalformedPayload(Exception):
    """A signed request whose payload lacks what its type needs: refused (400), nothing recorded."""


def payload_problem(payload: Any) -> str | None:
    """Why a decoded request body cannot be routed (None when it can). Bolt assumes objects with
    the fields of their type and fails deep inside (a 500, which Slack retries) when they are not."""
    if not isinstance(payload, dict) or not payload:
        return "invalid_payload"
    if "command" in payload:
        return None
    kind = payload.get("type")
    if kind == "event_callback":
        event = payload.get("event")
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            return "invalid_payload"
        return None
    if kind == "block_actions":
        actions = payload.get("actions")
        if not isinstance(payload.get("user"), dict) or not isinstance(actions, list):
            return "invalid_payload"
        if not all(isinstance(a, dict) for a in actions):
            return "invalid_payload"
        return None
    if kind in EVENTS_API_TYPES or kind in INTERACTIVE_TYPES:
        return None
    return "unsupported_payload_type"


def check_message_event(event: dict[str, Any]) -> None:
    """A message or app_mention we are about to record names its channel, user and ``ts``."""
    for name in ("channel", "user", "ts"):
        if not isinstance(event.get(name), str) or not event[name]:
            raise MalformedPayload(f"a {event.get('type')} event without {name}")
    thread_ts = event.get("thread_ts")
    for ts in (event["ts"], thread_ts):
        if ts is not None and not _is_ts(ts):
            raise MalformedPayload(f"a {event.get('type')} event with a malformed ts {ts!r}")


def check_command(fields: dict[str, Any]) -> None:
    """A slash command names its workspace, channel and user (Slack always sends them)."""
    for name in ("team_id", "channel_id", "user_id"):
        if not isinstance(fields.get(name), str) or not fields[name]:
            raise MalformedPayload(f"a slash command without {name}")


def _is_ts(value: Any) -> bool:
    """Slack message timestamps are strings like ``1700000000.000100``."""
    head, dot, tail = value.partition(".") if isinstance(value, str) else ("", "", "")
    return head.isdigit() and (not dot or tail.isdigit())


@dataclass(frozen=True)
class BotIdentity:
    user_id: str
    bot_id: str | None = None


def route_message(event: dict[str, Any], bot: BotIdentity) -> MessageRoute:
    """What a ``message`` event is to us, before knowing whether we take part in its thread.

    ``thread``: a reply in a channel thread (relevant only when the bot takes part in it: the
    thread is under one of its messages, or it has a session there).
    Mentions in channels are left to the ``app_mention`` event Slack also sends, so one message
    is never handled twice.
    """
    if event.get("subtype") not in RELEVANT_SUBTYPES:
        return "ignore"
    if event.get("bot_id") or event.get("bot_profile") or not event.get("user") or event.get("user") == bot.user_id:
        return "ignore"
    if event.get("channel_type") == "im" or str(event.get("channel", "")).startswith("D"):
        return "dm"
    if f"<@{bot.user_id}>" in str(event.get("text") or ""):
        return "ignore"
    if event.get("thread_ts") and event.get("thread_ts") != event.get("ts"):
        return "thread"
    return "ignore"


def session_channel(
    *,
    team: str,
    channel: str,
    ts: str,
    thread_ts: str | None,
    is_dm: bool,
    dm_sessions: str,
) -> SessionChannel:
    if thread_ts:
        thread: str | None = thread_ts
    elif is_dm and dm_sessions == "per_dm":
        thread = None
    else:
        thread = ts
    return SessionChannel(CHANNEL_TYPE, chat_id=channel, thread_id=thread, team_id=team)


_MENTION = re.compile(r"<@([A-Z0-9]+)(?:\|[^>]*)?>")
_LINK = re.compile(r"<((?:https?|mailto):[^|>]+)\|([^>]+)>|<((?:https?|mailto):[^>]+)>")


def clean_text(text: str, bot_user_id: str) -> str:
    """Slack's wire text -> what the user typed: our own mention dropped, labelled links as
    ``label (url)``, ``&amp; &lt; &gt;`` unescaped (docs.slack.dev, "Formatting text")."""
    text = _MENTION.sub(lambda m: "" if m.group(1) == bot_user_id else m.group(0), text)
    text = _LINK.sub(lambda m: f"{m.group(2)} ({m.group(1)})" if m.group(1) else m.group(3), text)
    return html.unescape(text).strip()


def attachments_from(event: dict[str, Any]) -> list[Attachment]:
    out = []
    for f in event.get("files") or []:
        if not isinstance(f, dict) or f.get("mode") in SKIPPED_FILE_MODES:
            continue
        url = f.get("url_private_download") or f.get("url_private")
        if not url:
            continue
        out.append(
            Attachment(
                name=str(f.get("name") or f.get("title") or f.get("id") or "file"),
                content_type=str(f.get("mimetype") or "application/octet-stream"),
                url=str(url),
                size=int(f.get("size") or 0),
            )
        )
    return out


def message_inbound(
    *,
    event_id: str,
    team: str,
    event: dict[str, Any],
    user: PlatformUser,
    bot: BotIdentity,
    dm_sessions: str,
) -> Inbound:
    channel = str(event["channel"])
    ts = str(event["ts"])
    thread_ts = event.get("thread_ts")
    is_dm = event.get("channel_type") == "im" or channel.startswith("D")
    address = session_channel(
        team=team, channel=channel, ts=ts, thread_ts=thread_ts, is_dm=is_dm, dm_sessions=dm_sessions
    )
    attachments = attachments_from(event)
    return Inbound(
        kind="message",
        dedup_key=f"slack:{event_id}",
        channel=address,
        user=user,
        message=Message(
            text=clean_text(str(event.get("text") or ""), bot.user_id),
            sender="user",
            channel_type=CHANNEL_TYPE,
            timestamp=float(ts),
            attachments=attachments or None,
        ),
        platform_ref=ts,
    )


def interaction_dedup_key(payload: dict[str, Any], action: dict[str, Any]) -> str:
    """Slack does not retry interactions, but Socket Mode may redeliver an envelope: key on the
    trigger id (one per click), else the action's timestamp."""
    trigger = payload.get("trigger_id") or action.get("action_ts") or ""
    return f"slack:action:{trigger}:{action.get('action_id', '')}"


def interaction_team(payload: dict[str, Any]) -> str:
    team = payload.get("team") or {}
    user = payload.get("user") or {}
    return str(team.get("id") or user.get("team_id") or "")


def button_inbound(payload: dict[str, Any], user: PlatformUser) -> Inbound | None:
    """A press on one of our buttons, or None (link buttons, foreign actions, no message)."""
    actions = payload.get("actions") or []
    if not actions:
        return None
    action = actions[0]
    if action.get("action_id") == LINK_ACTION_ID or action.get("type") != "button" or "value" not in action:
        return None
    channel = (payload.get("channel") or {}).get("id") or (payload.get("container") or {}).get("channel_id")
    message = payload.get("message") or {}
    if not channel or not action.get("block_id"):
        return None
    thread_ts = message.get("thread_ts") or (payload.get("container") or {}).get("thread_ts")
    return Inbound(
        kind="button",
        dedup_key=interaction_dedup_key(payload, action),
        channel=SessionChannel(
            CHANNEL_TYPE, chat_id=str(channel), thread_id=thread_ts, team_id=interaction_team(payload)
        ),
        user=user,
        button=ButtonPress(block_id=envelope_block_id(str(action["block_id"])), value=str(action["value"])),
        platform_ref=message.get("ts"),
    )


def command_inbound(fields: dict[str, Any], user: PlatformUser, bot: BotIdentity) -> Inbound:
    """``/chatgate <text>`` -> a message in the channel the command was typed in (top level:
    commands cannot be used in threads)."""
    text = clean_text(str(fields.get("text") or ""), bot.user_id)
    return Inbound(
        kind="message",
        dedup_key=f"slack:command:{fields.get('trigger_id') or fields.get('command')}",
        channel=SessionChannel(
            CHANNEL_TYPE, chat_id=str(fields.get("channel_id")), thread_id=None, team_id=str(fields.get("team_id"))
        ),
        user=user,
        message=Message(text=text, sender="user", channel_type=CHANNEL_TYPE),
    )
