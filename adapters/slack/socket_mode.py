"""Socket Mode inbound: bolt's handler behind a gate that acknowledges malformed envelopes.

Slack delivers every event, interaction and slash command as an envelope that must be acknowledged
(``{"envelope_id": ...}``) within three seconds, or it is delivered again (api.slack.com/apis/
socket-mode). slack_sdk leaves an envelope it cannot use unacknowledged: text that is not JSON
raises inside its reader (a traceback in the log), an envelope without ``payload`` is skipped in
silence, and one bolt cannot route is answered with nothing. Slack then redelivers the same bad
envelope, and the log fills with it.

:class:`CheckedSocketModeClient` looks at each message before slack_sdk does. A malformed envelope
is acknowledged when it carries an ``envelope_id`` (even in text that is not JSON, if the id can
be read) and logged in one line; the connection goes on serving the next envelope. Well-formed
envelopes go to bolt unchanged, whose acknowledgement still waits for the event to be recorded
(see :mod:`adapters.slack.adapter`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import dataclass
from typing import Any

from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler
from slack_bolt.app.async_app import AsyncApp
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.response import SocketModeResponse

log = logging.getLogger("chatgate.slack")

CONTROL_TYPES = frozenset({"hello", "disconnect"})
"""Socket Mode messages that are not envelopes (no envelope_id, nothing to acknowledge)."""
ENVELOPE_TYPES = frozenset({"events_api", "interactive", "slash_commands"})
"""api.slack.com/apis/socket-mode: the envelope types Slack sends."""
EVENTS_API_PAYLOAD_TYPES = frozenset({"event_callback", "app_rate_limited"})
"""api.slack.com/apis/events-api: the payload types of an Events API delivery."""
BOLT_PING_INTERVAL = 10.0
"""Seconds between pings, as bolt's own AsyncSocketModeHandler sets them."""
SHOWN_CHARACTERS = 80
"""How much of a malformed message the log line quotes."""

_ENVELOPE_ID = re.compile(r'"envelope_id"\s*:\s*"([^"\\]{1,200})"')


@dataclass(frozen=True)
class Verdict:
    """What a raw Socket Mode message is: usable (``problem`` is ``None``) or not, and why."""

    message: dict[str, Any]
    problem: str | None = None
    envelope_id: str | None = None


def check_envelope(raw: str) -> Verdict:
    """Whether slack_sdk and bolt can use ``raw``; the envelope id to acknowledge if not."""
    try:
        message = json.loads(raw)
    except ValueError:
        found = _ENVELOPE_ID.search(raw)
        return Verdict({}, "not JSON", found.group(1) if found else None)
    if not isinstance(message, dict):
        return Verdict({}, f"a JSON {type(message).__name__}, not an envelope object")
    kind = message.get("type")
    kind = kind if isinstance(kind, str) else repr(kind)  # a list or an object is not a type (nor hashable)
    envelope_id = message.get("envelope_id")
    envelope_id = envelope_id if isinstance(envelope_id, str) and envelope_id else None
    if kind in CONTROL_TYPES:
        return Verdict(message)
    if kind not in ENVELOPE_TYPES:
        return Verdict(message, f"an envelope of unknown type {kind!r}", envelope_id)
    if envelope_id is None:
        return Verdict(message, f"a {kind} envelope without envelope_id")
    payload = message.get("payload")
    if not isinstance(payload, dict):
        what = "without payload" if payload is None else f"whose payload is a {type(payload).__name__}"
        return Verdict(message, f"a {kind} envelope {what}", envelope_id)
    problem = _payload_problem(kind, payload)
    return Verdict(message, problem and f"a {kind} envelope {problem}", envelope_id)


def _payload_problem(kind: str, payload: dict[str, Any]) -> str | None:
    if kind == "events_api":
        payload_type = payload.get("type")
        if not isinstance(payload_type, str) or payload_type not in EVENTS_API_PAYLOAD_TYPES:
            return f"whose payload is not an event (type {payload_type!r})"
        event = payload.get("event")
        if payload_type == "event_callback" and not (isinstance(event, dict) and isinstance(event.get("type"), str)):
            return "whose event_callback carries no event"
        return None
    if kind == "interactive" and not isinstance(payload.get("type"), str):
        return "whose payload has no interaction type"
    if kind == "slash_commands" and not isinstance(payload.get("command"), str):
        return "whose payload has no command"
    return None


def _quote(raw: str) -> str:
    text = raw if len(raw) <= SHOWN_CHARACTERS else raw[:SHOWN_CHARACTERS] + "…"
    return repr(text)


class CheckedSocketModeClient(SocketModeClient):
    """slack_sdk's aiohttp Socket Mode client, with malformed envelopes acknowledged and logged."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._listening: set[asyncio.Future[None]] = set()
        super().__init__(*args, **kwargs)

    async def process_message(self) -> None:  # replaces slack_sdk's: the same, with the gate
        raw = await self.message_queue.get()
        if raw is None:
            return
        verdict = check_envelope(raw)
        if verdict.problem is not None:
            await self._refuse(raw, verdict)
            return
        running = asyncio.ensure_future(self.run_message_listeners(verdict.message, raw))
        self._listening.add(running)
        running.add_done_callback(self._listening.discard)

    async def _refuse(self, raw: str, verdict: Verdict) -> None:
        acked = "no envelope_id to acknowledge"
        if verdict.envelope_id is not None:
            try:
                await self.send_socket_mode_response(SocketModeResponse(envelope_id=verdict.envelope_id))
                acked = f"acknowledged envelope {verdict.envelope_id}"
            except Exception as exc:  # the connection is going: Slack redelivers, the gate catches it again
                acked = f"could not acknowledge envelope {verdict.envelope_id} ({exc})"
        log.warning("slack socket mode: dropped %s: %s; %s", verdict.problem, _quote(raw), acked)


class CheckedSocketModeHandler(AsyncSocketModeHandler):
    """bolt's AsyncSocketModeHandler on a :class:`CheckedSocketModeClient`."""

    def __init__(self, app: AsyncApp, app_token: str) -> None:  # bolt's __init__, with our client
        self.app = app
        self.app_token = app_token
        self.client = CheckedSocketModeClient(
            app_token=app_token, logger=app.logger, web_client=app.client, ping_interval=BOLT_PING_INTERVAL
        )
        self.client.socket_mode_request_listeners.append(self.handle)  # type: ignore[arg-type]
