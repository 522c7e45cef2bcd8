"""The Slack channel: slack-bolt for inbound (Events API over HTTP, or Socket Mode), slack_sdk's
AsyncWebClient for the Web API, chatgate's pacer between them.

Acknowledgement: bolt runs with ``process_before_response=True``, so a request is answered only
after its listener returns, and our listeners return only after ``gw.submit`` has recorded the
event durably. If that takes longer than ``ACK_BUDGET`` the listener fails, bolt answers 500 (no
socket ack), and Slack delivers again later; the inbox's dedup key makes the redelivery a no-op
if the first attempt did land. Never lost, never run twice.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qs

from aiohttp import web
from cachetools import LRUCache
from slack_bolt.adapter.aiohttp import to_aiohttp_response
from slack_bolt.app.async_app import AsyncApp
from slack_bolt.authorization import AuthorizeResult
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.response import BoltResponse
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient

from adapters.base import Accepted, Adapter, Capabilities, GatewayContext, Inbound, Limits, Outbox, SharedBudgets
from adapters.slack.conversation import Conversation
from adapters.slack.files import download_private, is_slack_file_url, upload_file
from adapters.slack.inbound import (
    RATE_LIMITED_TYPE,
    BotIdentity,
    MalformedPayload,
    button_inbound,
    check_command,
    check_message_event,
    command_inbound,
    interaction_team,
    message_inbound,
    payload_problem,
    route_message,
)
from adapters.slack.limits import ACK_DEADLINE, MAX_ACTIONS_ELEMENTS, MAX_TEXT
from adapters.slack.outbox import SlackOutbox
from adapters.slack.pacer import SlackPacer, app_namespace
from adapters.slack.response_url import CommandResponse
from adapters.slack.users import LOOKUP_TIMEOUT, SlackDirectory
from gateway.config import ConfigError
from gateway.types import Attachment, SessionChannel

if TYPE_CHECKING:
    from gateway.config import Settings

log = logging.getLogger(__name__)

RECIPIENT_KEY = "slack_recipient"
"""Session metadata key of the Slack user a channel thread's native streams are addressed to."""

REMEMBERED_CONVERSATIONS = 50_000
"""Threads (and their recipients) kept in memory; older ones are looked up in the store again."""
REMEMBERED_COMMANDS = 10_000
"""Conversations whose latest slash command's response URL is kept (in memory only: a capability)."""
REMEMBERED_UPLOADS = 10_000
"""File-store images whose Slack file id is kept; an older one is uploaded again if re-shown."""
ACK_BUDGET = ACK_DEADLINE - 0.5
"""Seconds we allow ourselves before answering Slack; the rest of its 3 s is network slack."""
NATIVE_STREAM_PERMANENT_ERRORS = frozenset(
    {"not_allowed_token_type", "missing_scope", "feature_not_enabled", "method_not_supported_for_channel_type"}
)
"""chat.startStream errors that mean this workspace will never stream natively: stop trying."""


class AckDeadlineMissed(Exception):
    """The inbox did not confirm in time; Slack gets a 500 and delivers the event again."""


def _request_error(status: int, error: str) -> web.Response:
    """An error in the Web API's own shape (``{"ok": false, "error": ...}``)."""
    return web.json_response({"ok": False, "error": error}, status=status)


async def _read_limited(request: web.Request, limit: int) -> bytes | None:
    """The request body, or None when it is larger than ``limit`` bytes (not read further)."""
    if request.content_length is not None and request.content_length > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _is_ssl_check(request: web.Request, text: str) -> bool:
    """Slack's certificate check: a form POST with ``ssl_check=1`` (exactly that value)."""
    if request.content_type != "application/x-www-form-urlencoded":
        return False
    return parse_qs(text).get("ssl_check") == ["1"]


class SlackAdapter(Adapter):
    channel_types: ClassVar[tuple[str, ...]] = ("slack",)
    limits: ClassVar[Limits] = Limits(max_text=MAX_TEXT, max_buttons=MAX_ACTIONS_ELEMENTS)
    """Buttons per actions block; more buttons go into further actions blocks."""
    capabilities: ClassVar[Capabilities] = Capabilities(edits=True, native_stream=True, buttons=True, markdown=True)

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        slack = settings.slack
        if not slack.bot_token:
            raise ConfigError("config error: slack.bot_token is required for the Slack channel (SLACK_BOT_TOKEN)")
        if slack.mode == "events" and not slack.signing_secret:
            raise ConfigError(
                "config error: slack.signing_secret is required in events mode "
                "(SLACK_SIGNING_SECRET), or set slack.mode = 'socket'"
            )
        if slack.mode == "socket" and not slack.app_token:
            raise ConfigError("config error: slack.app_token (xapp-...) is required in socket mode (SLACK_APP_TOKEN)")
        api_url = slack.api_url if slack.api_url.endswith("/") else slack.api_url + "/"
        # No transport-level retries: a chat.postMessage retried after a lost answer is a
        # duplicate message. The pacer handles 429s, and lost connections of idempotent calls.
        self.client = AsyncWebClient(token=slack.bot_token, base_url=api_url, retry_handlers=[])
        self.pacer = SlackPacer(
            shared=SharedBudgets.from_url(settings.redis.url) if settings.redis.url else None,
            # a hash tag: the keys one script touches share a Redis Cluster slot
            namespace=f"{{{settings.redis.key_prefix}:budget:slack:{app_namespace(slack.bot_token)}}}",
        )
        self.directory = SlackDirectory(self.client, self.pacer)
        self.verifier = SignatureVerifier(slack.signing_secret) if slack.signing_secret else None
        self.gw: GatewayContext | None = None
        self.bot = BotIdentity(user_id="")
        self.team_id = ""
        self.statuses_shown: set[tuple[str, str | None]] = set()
        # Memory of threads, recipients and uploads: each is a cache of what the store (or a new
        # upload) can tell again, so it is bounded and forgets the least recently used.
        self._threads: LRUCache[tuple[str, str, str | None], bool] = LRUCache(REMEMBERED_CONVERSATIONS)
        self._recipients: LRUCache[tuple[str, str, str | None], str] = LRUCache(REMEMBERED_CONVERSATIONS)
        self._native_off: dict[str, str] = {}
        self._status_off: dict[str, str] = {}
        self._uploaded: LRUCache[str, str] = LRUCache(REMEMBERED_UPLOADS)
        self._commands: LRUCache[tuple[str, str], CommandResponse] = LRUCache(REMEMBERED_COMMANDS)
        self._pending: set[asyncio.Future[Any]] = set()
        self._socket_handler: Any = None
        self.bolt = self._build_bolt()

    # ---- life cycle ----

    def mount(self, web_app: web.Application) -> None:
        if self.settings.slack.mode == "events":
            web_app.router.add_post(self.settings.slack.events_path, self.handle_events_request)

    async def start(self, gateway: GatewayContext) -> None:
        self.gw = gateway
        await self._sign_in()
        if self.settings.slack.mode == "socket" and gateway.inbound:  # a chatgate worker only sends
            from adapters.slack.socket_mode import CheckedSocketModeHandler

            self._socket_handler = CheckedSocketModeHandler(self.bolt, self.settings.slack.app_token or "")
            await self._socket_handler.connect_async()

    async def stop(self) -> None:
        if self._socket_handler is not None:
            await self._socket_handler.close_async()
            self._socket_handler = None
        for pending in list(self._pending):
            pending.cancel()
        await self.pacer.close()

    def describe(self) -> str:
        slack = self.settings.slack
        where = f"Events API at {slack.events_path}" if slack.mode == "events" else "Socket Mode"
        return f"slack ({where}, Web API {slack.api_url})"

    # ---- outbound ----

    def outbox(self, channel: SessionChannel, session_id: str, turn: str | None = None) -> Outbox:
        team = channel.team_id or ""
        conversation = Conversation(
            client=self.client,
            pacer=self.pacer,
            team=team,
            channel=channel.chat_id or "",
            thread_ts=channel.thread_id,
            recipient_user=self._recipients.get((team, channel.chat_id or "", channel.thread_id)),
            # Slash commands live in the top-level session of their channel.
            command_response=None if channel.thread_id else self._commands.get((team, channel.chat_id or "")),
        )
        return SlackOutbox(self, conversation, session_id)

    def resolve_attachment(self, attachment: Attachment) -> Attachment:
        if is_slack_file_url(attachment.url, self.settings.slack.api_url):
            url, token = attachment.url, self.settings.slack.bot_token or ""
            limit = self.settings.files.max_upload_bytes

            async def fetch() -> bytes:
                return await download_private(url, token, max_bytes=limit)

            attachment.fetch = fetch
        return attachment

    def remember_thread(self, conversation: Conversation) -> None:
        self._threads[(conversation.team, conversation.channel, conversation.thread_ts)] = True

    def native_streaming_allowed(self, team: str) -> bool:
        return team not in self._native_off

    def native_stream_refused(self, team: str, error: str) -> None:
        if error in NATIVE_STREAM_PERMANENT_ERRORS:
            self._native_off[team] = error

    def status_allowed(self, team: str) -> bool:
        return team not in self._status_off

    def status_unavailable(self, team: str, error: str) -> None:
        log.info("slack: no assistant thread status in %s (%s)", team, error)
        self._status_off[team] = error

    async def slack_file_for(self, team: str, file_id: str, alt_text: str) -> str:
        """Upload a file-store image once and reuse its Slack file id (updates re-render blocks)."""
        known = self._uploaded.get(file_id)
        if known is not None:
            return known
        gw = self._require_gateway()
        files: Any = gw.files  # type: ignore[attr-defined]
        data = await files.read(file_id)
        name = files.path(file_id).name or file_id
        slack_file_id = await upload_file(self.client, self.pacer, team, data, name=name, alt_text=alt_text)
        self._uploaded[file_id] = slack_file_id
        return slack_file_id

    # ---- inbound: HTTP ----

    async def handle_events_request(self, request: web.Request) -> web.StreamResponse:
        """The Events API / interactivity / slash command Request URL."""
        if self.verifier is None:  # mounted only in events mode, which requires the secret
            return _request_error(401, "invalid_signature")
        limit = self.settings.server.max_request_bytes
        body = await _read_limited(request, limit)
        if body is None:
            # Refused before the signature check: nothing this large is a Slack payload.
            return _request_error(413, "request_too_large")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return _request_error(400, "invalid_payload")
        if _is_ssl_check(request, text):
            # Slack checks a slash command URL's certificate with an unsigned ssl_check=1 POST
            # and wants a 200; nothing in it is read or dispatched (bolt skips verification for
            # these too, so we answer them here, before the signature check).
            return web.Response(status=200)
        timestamp = request.headers.get("X-Slack-Request-Timestamp", "")
        signature = request.headers.get("X-Slack-Signature", "")
        if not timestamp.lstrip("-").isdigit():
            return _request_error(401, "invalid_timestamp")
        if not self.verifier.is_valid(body=text, timestamp=timestamp, signature=signature):
            return _request_error(401, "invalid_signature")
        try:
            bolt_request = AsyncBoltRequest(body=text, query=request.query_string, headers=dict(request.headers))
        except (ValueError, AttributeError, TypeError):  # not JSON, or a JSON value that is not an object
            return _request_error(400, "invalid_payload")
        payload: Any = bolt_request.body
        if isinstance(payload, dict) and payload.get("type") == RATE_LIMITED_TYPE:
            log.warning("slack: Slack is withholding events from this app (app_rate_limited): %s", text[:200])
            return web.json_response({"ok": True})
        problem = payload_problem(payload)
        if problem is not None:
            kind = payload.get("type") if isinstance(payload, dict) else type(payload).__name__
            log.warning("slack: refused a request to %s (%s, type %r)", request.path, problem, kind)
            return _request_error(400, problem)
        response = await self.bolt.async_dispatch(bolt_request)
        return await to_aiohttp_response(response)

    # ---- inbound: listeners ----

    def _build_bolt(self) -> AsyncApp:
        slack = self.settings.slack
        api_url = slack.api_url if slack.api_url.endswith("/") else slack.api_url + "/"
        bolt = AsyncApp(
            # bolt's own client carries no token: ``authorize`` hands it ours per request.
            client=AsyncWebClient(base_url=api_url, retry_handlers=[]),
            authorize=lambda enterprise_id, team_id: self._authorize(enterprise_id, team_id),
            process_before_response=True,
            # We verify signatures in front of bolt (handle_events_request) so a bad request is
            # refused before bolt parses anything; Socket Mode needs no signature.
            request_verification_enabled=False,
            ssl_check_enabled=True,
            url_verification_enabled=True,
        )
        bolt.event("message")(self._on_message)
        bolt.event("app_mention")(self._on_app_mention)
        bolt.event("assistant_thread_started")(self._on_assistant_thread_started)
        bolt.event(re.compile(".*"))(self._ignore_event)
        bolt.action(re.compile(".*"))(self._on_action)
        bolt.command(self.settings.slack.slash_command)(self._on_command)
        bolt.command(re.compile(".*"))(self._on_unknown_command)
        bolt.view(re.compile(".*"))(self._ack_only)
        bolt.shortcut(re.compile(".*"))(self._ack_only)
        bolt.options(re.compile(".*"))(self._ack_only)
        bolt.error(self._on_listener_error)
        return bolt

    async def _on_listener_error(self, error: Exception) -> BoltResponse | None:
        """A malformed payload is refused with a 400 (Slack shows it in the app's delivery log);
        anything else stays a 500, so Slack delivers the event again."""
        if isinstance(error, MalformedPayload):
            log.warning("slack: refused a malformed payload (%s)", error)
            return BoltResponse(status=400, body={"ok": False, "error": "invalid_payload"})
        if not isinstance(error, AckDeadlineMissed):  # already logged where it happened
            log.error("slack: a listener failed; Slack will deliver the event again", exc_info=error)
        return None

    async def _authorize(self, enterprise_id: str | None, team_id: str | None) -> AuthorizeResult:
        """The identity learned by auth.test at start, so bolt does not call auth.test for every
        request (it would, concurrently, until its own cache fills)."""
        if not self.bot.user_id:
            await self._sign_in()
        return AuthorizeResult(
            enterprise_id=enterprise_id,
            team_id=team_id or self.team_id,
            bot_user_id=self.bot.user_id,
            bot_id=self.bot.bot_id,
            bot_token=self.settings.slack.bot_token,
        )

    async def _sign_in(self) -> None:
        auth = await self.pacer.call("auth.test", "", None, self.client.auth_test)
        assert auth is not None
        self.bot = BotIdentity(user_id=str(auth.get("user_id") or ""), bot_id=auth.get("bot_id"))
        self.team_id = str(auth.get("team_id") or "")
        log.info("slack: signed in as %s (%s) in %s", auth.get("user"), self.bot.user_id, self.team_id)

    def _require_gateway(self) -> GatewayContext:
        if self.gw is None:
            raise RuntimeError("the Slack adapter received traffic before start()")
        return self.gw

    async def _submit(self, inbound: Inbound, deadline: float) -> Accepted:
        """Submit and wait for the durable write, but not past the ack deadline."""
        gw = self._require_gateway()
        loop = asyncio.get_running_loop()
        future = asyncio.ensure_future(gw.submit(inbound))
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)
        try:
            accepted = await asyncio.wait_for(asyncio.shield(future), max(0.05, deadline - loop.time()))
        except TimeoutError:
            log.warning("slack: inbox write for %s is late; letting Slack deliver it again", inbound.dedup_key)
            raise AckDeadlineMissed(inbound.dedup_key) from None
        if accepted.duplicate:
            log.info("slack: %s already received; acknowledged again", inbound.dedup_key)
        return accepted

    async def _user(self, team: str, user: str, deadline: float) -> Any:
        remaining = deadline - asyncio.get_running_loop().time()
        return await self.directory.platform_user(team, user, timeout=min(LOOKUP_TIMEOUT, remaining - 1.0))

    async def _on_message(self, body: dict[str, Any], event: dict[str, Any]) -> None:
        deadline = asyncio.get_running_loop().time() + ACK_BUDGET
        route = route_message(event, self.bot)
        if route == "ignore":
            return
        check_message_event(event)
        team = str(body.get("team_id") or event.get("team") or "")
        if route == "thread" and not await self._takes_part(team, event):
            return
        await self._submit_message(body, event, team, deadline)

    async def _on_app_mention(self, body: dict[str, Any], event: dict[str, Any]) -> None:
        deadline = asyncio.get_running_loop().time() + ACK_BUDGET
        if event.get("bot_id") or not event.get("user") or event.get("user") == self.bot.user_id:
            return
        if str(event.get("channel", "")).startswith("D"):
            return  # DMs arrive as message events
        check_message_event(event)
        team = str(body.get("team_id") or event.get("team") or "")
        await self._submit_message(body, event, team, deadline)

    async def _submit_message(self, body: dict[str, Any], event: dict[str, Any], team: str, deadline: float) -> None:
        user_id = str(event["user"])
        user_team = str(event.get("user_team") or event.get("team") or team)
        user = await self._user(user_team, user_id, deadline)
        inbound = message_inbound(
            event_id=str(body.get("event_id") or f"{event.get('channel')}-{event.get('ts')}"),
            team=team,
            event=event,
            user=user,
            bot=self.bot,
            dm_sessions=self.settings.slack.dm_sessions,
        )
        address = inbound.channel
        key = (team, address.chat_id or "", address.thread_id)
        self._threads[key] = True
        accepted = await self._submit(inbound, deadline)
        if accepted is not None and self._recipients.get(key) != user_id:
            self._recipients[key] = user_id
            self._require_gateway().spawn(self._keep_recipient(accepted.session_id, user_id), name="slack-recipient")

    async def _keep_recipient(self, session_id: str, user_id: str) -> None:
        """Keep the thread's recipient in the session, so native streams survive a restart and
        work for replies from scheduled jobs (the in-memory cache is empty then)."""
        sessions = self._require_gateway().sessions
        record = await sessions.get(session_id)
        if record is not None and record.metadata.get(RECIPIENT_KEY) != user_id:
            await sessions.set_metadata(session_id, {**record.metadata, RECIPIENT_KEY: user_id})

    async def load_recipient(self, conversation: Conversation, session_id: str) -> None:
        """Fill ``conversation.recipient_user`` from the session when the cache has none."""
        if conversation.recipient_user or conversation.is_dm or not conversation.thread_ts or not session_id:
            return
        record = await self._require_gateway().sessions.get(session_id)
        user_id = record.metadata.get(RECIPIENT_KEY) if record is not None else None
        if user_id:
            conversation.recipient_user = str(user_id)
            self._recipients[(conversation.team, conversation.channel, conversation.thread_ts)] = str(user_id)

    async def _takes_part(self, team: str, event: dict[str, Any]) -> bool:
        """Whether the bot is in the channel thread of this reply: the thread's parent is one of
        its own messages (a standalone message: a job's or task's reply, a broadcast; Slack names
        the parent's author in ``parent_user_id``), or it has a session there."""
        channel, thread_ts = str(event["channel"]), str(event["thread_ts"])
        if (team, channel, thread_ts) in self._threads:
            return True
        if self.bot.user_id and event.get("parent_user_id") == self.bot.user_id:
            return True  # the reply opens the thread's session (one per thread, as everywhere)
        address = SessionChannel("slack", chat_id=channel, thread_id=thread_ts, team_id=team)
        found = await self._require_gateway().sessions.find(address)
        if found is not None:
            self._threads[(team, channel, thread_ts)] = True
        return found is not None

    async def _on_assistant_thread_started(self, body: dict[str, Any], event: dict[str, Any]) -> None:
        """Remember who the assistant thread is with (native streams need a recipient). The
        conversation starts with the user's first message, which arrives as a message event."""
        thread = event.get("assistant_thread") or {}
        team = str(body.get("team_id") or "")
        if thread.get("channel_id") and thread.get("thread_ts") and thread.get("user_id"):
            key = (team, str(thread["channel_id"]), str(thread["thread_ts"]))
            self._recipients[key] = str(thread["user_id"])
            self._threads[key] = True

    async def _ignore_event(self) -> None:
        """Events we do not use are still acknowledged, so Slack does not retry them."""

    async def _on_action(self, ack: Any, body: dict[str, Any]) -> None:
        deadline = asyncio.get_running_loop().time() + ACK_BUDGET
        if body.get("type") == "block_actions" and (body.get("user") or {}).get("id"):
            user_id = str(body["user"]["id"])
            team = interaction_team(body)
            inbound = button_inbound(body, await self._user(team, user_id, deadline))
            if inbound is not None:
                await self._submit(inbound, deadline)
        await ack()

    async def _on_command(self, ack: Any, body: dict[str, Any]) -> None:
        deadline = asyncio.get_running_loop().time() + ACK_BUDGET
        check_command(body)
        team = str(body["team_id"])
        user = await self._user(team, str(body["user_id"]), deadline)
        self._keep_response_url(team, body)
        await self._submit(command_inbound(body, user, self.bot), deadline)
        await ack()

    def _keep_response_url(self, team: str, body: dict[str, Any]) -> None:
        """Remember the command's response URL before its turn can run, so a reply in a channel
        the bot is not in still arrives (kept for the latest command of each conversation)."""
        url = body.get("response_url")
        if not isinstance(url, str) or not url:
            return
        key = (team, str(body["channel_id"]))
        known = self._commands.get(key)
        if known is None or known.url != url:  # a redelivery keeps the uses already counted
            self._commands[key] = CommandResponse(url=url, command=str(body.get("command") or "the command"))

    async def _on_unknown_command(self, ack: Any, body: dict[str, Any]) -> None:
        await ack(text=f"This app answers {self.settings.slack.slash_command}, not {body.get('command')}.")

    async def _ack_only(self, ack: Any) -> None:
        await ack()
