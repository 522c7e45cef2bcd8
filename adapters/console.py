"""A terminal chat for local development (``chatgate chat APP``).

In a terminal, replies are rendered Markdown (``rich``: bold, lists, code blocks, tables) and a
streamed reply is updated in place as it grows. Plain mode (``--plain``, and whenever stdout is
not a terminal: a pipe, a file) prints the Markdown as the handler wrote it, a streamed reply
token by token, so scripts and tests read exactly what was sent.

Replies stream live, blocks are printed as readable text, a file prompt is answered by typing a
path, an approval by typing ``approve`` or ``reject``, a suggestion by its number (``/1``).
Ctrl-C while a reply streams stops it; Ctrl-C (or Ctrl-D) at the prompt quits. The conversation
is stored like any other, so running ``chatgate chat`` again continues it.
"""

from __future__ import annotations

import asyncio
import mimetypes
import os
import secrets
import signal
import sys
from typing import Any, ClassVar, Protocol, TextIO

from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.live import Live
from rich.markdown import Markdown
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

from adapters.base import Accepted, Adapter, ButtonPress, Capabilities, Inbound, Limits, MessageRef, PlatformUser
from gateway.config import Settings
from gateway.markdown import heal_partial
from gateway.types import Attachment, Message, SessionChannel

HELP = """commands:
  /1, /2 ...   press suggestion button 1, 2 ... of the last suggestions shown
  /stop        stop the reply being streamed (or press Ctrl-C while it streams)
  /quit        leave (Ctrl-D works too)
  a file path  answers a file prompt when one is waiting"""


class ConsoleSink:
    """Plain mode: ``bot> `` and the text as it grows, appended token by token."""

    min_interval = 0.0

    def __init__(self, console: ConsoleAdapter) -> None:
        self.console = console
        self.printed = 0

    async def frame(self, text: str) -> None:
        if self.printed == 0:
            self.console.write("bot> ")
        self.console.write(text[self.printed :])
        self.printed = len(text)

    async def close(self, text: str, *, stopped: bool) -> list[MessageRef]:
        await self.frame(text)
        self.console.write(" [stopped]\n" if stopped else "\n")
        return ["console"]


RICH_FRAME_INTERVAL = 0.05
"""Seconds between two renderings of a growing reply: 20 a second looks live and keeps the
re-rendering of long replies off the event loop's back."""


class _Tail:
    """The last lines of a renderable that fit the terminal. ``rich.live`` can redraw only what is
    on the screen (a taller render leaves copies in the scrollback), and it crops from the bottom;
    a growing reply should show its newest text, so while it streams it shows its tail."""

    def __init__(self, renderable: Any) -> None:
        self.renderable = renderable

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        lines = console.render_lines(self.renderable, options, pad=False)
        room = max(1, console.size.height - 1)  # one line for the cursor under the reply
        for line in lines[-room:]:
            yield from line
            yield Segment.line()


class RichConsoleSink:
    """Terminal mode: the reply rendered as Markdown, redrawn in place as it grows (``rich.live``);
    its newest lines while it streams, all of it once it is complete."""

    min_interval = RICH_FRAME_INTERVAL

    def __init__(self, console: ConsoleAdapter) -> None:
        self.console = console
        self.live: Live | None = None

    async def frame(self, text: str) -> None:
        shown = _Tail(self.console.reply_view(heal_partial(text)))
        if self.live is None:
            self.live = Live(shown, console=self.console.rich, auto_refresh=False)
            self.live.start()
        self.live.update(shown, refresh=True)

    async def close(self, text: str, *, stopped: bool) -> list[MessageRef]:
        shown = self.console.reply_view(text, stopped=stopped)
        if self.live is None:
            self.console.rich.print(shown)
        else:
            self.live.update(shown)
            self.live.stop()  # draws the whole reply once, however tall (rich renders it "visible" at stop)
        return ["console"]


class ConsoleOutbox:
    def __init__(self, console: ConsoleAdapter) -> None:
        self.console = console

    async def send_text(self, message_id: str, text: str) -> list[MessageRef]:
        if self.console.plain:
            self.console.write(f"bot> {text}\n")
        else:
            self.console.rich.print(self.console.reply_view(text))
        return ["console"]

    def open_stream(self, message_id: str) -> ConsoleSink | RichConsoleSink:
        return ConsoleSink(self.console) if self.console.plain else RichConsoleSink(self.console)

    async def show_block(
        self, message_id: str, envelope: dict[str, Any], previous: list[MessageRef] | None
    ) -> list[MessageRef]:
        self.console.show_block(envelope)
        return ["console"]

    async def notify(self, text: str, detail: str) -> None:
        self.console.write(f"  … {text}{' — ' + detail if detail else ''}\n")

    async def end_turn(self, inbound_id: str | None, error: str | None) -> None:
        self.console.turn_over.set()


class ConsoleAdapter(Adapter):
    """Owns the ``chat`` channel type while ``chatgate chat`` runs (the web adapter is off then)."""

    channel_types: ClassVar[tuple[str, ...]] = ("chat",)
    limits: ClassVar[Limits] = Limits(max_text=1_000_000)
    capabilities: ClassVar[Capabilities] = Capabilities(edits=False)

    def __init__(self, settings: Settings, out: TextIO | None = None, *, plain: bool | None = None) -> None:
        """``plain``: ``None`` decides by ``out``: rendered in a terminal, plain anywhere else."""
        self.settings = settings
        self.out = out or sys.stdout
        self.plain = plain if plain is not None else not _is_terminal(self.out)
        self.rich = Console(file=self.out, highlight=False, soft_wrap=False)
        self.turn_over = asyncio.Event()
        self.suggestions: tuple[str, list[dict[str, Any]]] | None = None
        self.prompt: dict[str, Any] | None = None

    async def start(self, gateway: Any) -> None:
        return None

    async def stop(self) -> None:
        return None

    def outbox(self, channel: SessionChannel, session_id: str, turn: str | None = None) -> ConsoleOutbox:
        return ConsoleOutbox(self)

    def resolve_attachment(self, attachment: Attachment) -> Attachment:
        if attachment.url.startswith("file://") and attachment.fetch is None:
            path = attachment.url[len("file://") :]

            async def fetch() -> bytes:
                return await asyncio.to_thread(_read, path)

            attachment.fetch = fetch
        return attachment

    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def reply_view(self, markdown: str, *, stopped: bool = False) -> Table:
        """A reply as the terminal shows it: ``bot>`` beside the rendered Markdown."""
        body: Any = Markdown(markdown)
        if stopped:
            body = Group(body, Text("[stopped]", style="dim"))
        view = Table.grid(padding=(0, 1))
        view.add_column(no_wrap=True)
        view.add_column()
        view.add_row(Text("bot>", style="bold cyan"), body)
        return view

    def show_block(self, envelope: dict[str, Any]) -> None:
        kind, payload = envelope["type"], envelope.get("payload") or {}
        waiting = payload.get("blocking")
        if kind == "suggestions":
            self.suggestions = (envelope["id"], payload.get("suggestions", []))
            title = payload.get("title")
            if title:
                self.write(f"  {title}\n")
            for index, item in enumerate(payload.get("suggestions", []), 1):
                self.write(f"  [/{index}] {item.get('label')}\n")
        elif kind == "file_upload":
            if payload.get("completed"):
                self.write(f"  ✓ received {payload.get('filename')}\n")
            elif payload.get("timed_out"):
                self.write("  (the file prompt timed out)\n")
            elif waiting:
                accept = f" ({payload['accept']})" if payload.get("accept") else ""
                self.write(f"  📎 {payload.get('message', 'Please upload a file')}{accept} — type a file path\n")
        elif kind == "approval_prompt":
            if payload.get("timed_out"):
                self.write("  (the approval timed out)\n")
            elif payload.get("completed"):
                self.write("  ✓ approved\n" if payload.get("approved") else "  ✗ not approved\n")
            elif waiting:
                self.write(f"  ? {payload.get('message')} — type approve or reject\n")
        elif kind == "image":
            self.write(f"  [image] {payload.get('alt') or ''} {payload.get('url')}\n")
        elif kind == "task_card":
            status = payload.get("status", "started")
            self.write(f"  [task {payload.get('task_id')}] {status} {payload.get('message', '')}\n")
        elif kind == "integration_prompt":
            name = payload.get("type")
            if payload.get("completed"):
                self.write(f"  ✓ {name} connected\n")
            elif payload.get("declined"):
                self.write(f"  ✗ {name} not connected\n")
            elif payload.get("timed_out"):
                self.write(f"  (the {name} connect prompt timed out)\n")
            else:
                reason = f" — {payload['reason']}" if payload.get("reason") else ""
                self.write(f"  🔗 connect {name}{reason}: {payload.get('connect_url', '(open the web app)')}\n")
        elif kind == "session_title":
            self.write(f"  — {payload.get('title')} —\n")
        elif kind in ("step_status", "activity"):
            status = f" ({payload['status']})" if payload.get("status") else ""
            detail = f" — {payload['detail']}" if payload.get("detail") else ""
            self.write(f"  • {payload.get('label')}{status}{detail}\n")
            for link in payload.get("links") or []:
                self.write(f"    {link.get('label')}: {link.get('url')}\n")
        elif kind == "session_event":
            pass  # a transient event for a UI that listens; nothing to read in a terminal
        else:
            self.write(f"  [{kind}] {payload}\n")
        if waiting:
            self.prompt = envelope
        elif self.prompt is not None and self.prompt["id"] == envelope["id"]:
            self.prompt = None
        if waiting:
            self.turn_over.set()  # give the keyboard back so the user can answer


def _is_terminal(out: TextIO) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream
        return False


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class ConsoleGateway(Protocol):
    """The gateway ``chatgate chat`` built around a :class:`ConsoleAdapter` (``gateway.cli`` makes
    it: an adapter never builds the core)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def submit(self, inbound: Inbound) -> Accepted: ...

    def spawn(self, coro: Any, *, name: str) -> Any: ...


async def run_console(
    gateway: ConsoleGateway, console: ConsoleAdapter, *, app_name: str, user: str, conversation: str
) -> int:
    """Chat with the app in the terminal until Ctrl-D or ``/quit``: lines in, replies out."""
    await gateway.start()
    channel = SessionChannel("chat", chat_id=f"console:{conversation}")
    platform_user = PlatformUser("console", user)
    console.write(f"chatting with {app_name!r} as {user} — /help for commands, Ctrl-D to quit\n")
    loop = asyncio.get_running_loop()
    try:
        while True:
            try:
                line = await asyncio.to_thread(_input, "you> ")
            except EOFError:
                console.write("\n")
                return 0
            line = line.strip()
            if not line:
                continue
            if line in ("/quit", "/exit"):
                return 0
            if line == "/help":
                console.write(HELP + "\n")
                continue
            inbound = _inbound_for(line, console, channel, platform_user)
            if inbound is None:
                continue
            console.turn_over.clear()
            await gateway.submit(inbound)

            def request_stop() -> None:
                gateway.spawn(gateway.submit(_event("stop", channel, platform_user)), name="console-stop")

            loop.add_signal_handler(signal.SIGINT, request_stop)
            try:
                await console.turn_over.wait()
            finally:
                loop.remove_signal_handler(signal.SIGINT)
    except KeyboardInterrupt:
        return 0
    finally:
        await gateway.stop()


def _input(prompt: str) -> str:
    return input(prompt)


def _event(kind: str, channel: SessionChannel, user: PlatformUser, **fields: Any) -> Inbound:
    return Inbound(kind=kind, dedup_key=f"console:{secrets.token_hex(8)}", channel=channel, user=user, **fields)  # type: ignore[arg-type]


def _inbound_for(line: str, console: ConsoleAdapter, channel: SessionChannel, user: PlatformUser) -> Inbound | None:
    prompt = console.prompt
    if line == "/stop":
        return _event("stop", channel, user)
    if prompt is not None and prompt["type"] == "approval_prompt" and line.lower() in ("approve", "reject", "a", "r"):
        value = "approve" if line.lower() in ("approve", "a") else "reject"
        return _event("button", channel, user, button=ButtonPress(prompt["id"], value))
    if prompt is not None and prompt["type"] == "file_upload":
        path = os.path.expanduser(line.strip("'\""))
        if not os.path.isfile(path):
            console.write(f"  no such file: {path}\n")
            return None
        content_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
        attachment = Attachment(os.path.basename(path), content_type, f"file://{os.path.abspath(path)}",
                                os.path.getsize(path))
        message = Message("", "user", "chat", attachments=[attachment])
        return _event("upload", channel, user, message=message, prompt_id=prompt["id"])
    if line.startswith("/") and line[1:].isdigit():
        if console.suggestions is None:
            console.write("  no suggestions were shown\n")
            return None
        block_id, items = console.suggestions
        index = int(line[1:]) - 1
        if not 0 <= index < len(items):
            console.write(f"  pick a number from 1 to {len(items)}\n")
            return None
        return _event("button", channel, user, button=ButtonPress(block_id, str(index)))
    return _event("message", channel, user, message=Message(line, "user", "chat"))
