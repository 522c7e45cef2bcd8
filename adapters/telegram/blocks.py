"""Blocks → what a Telegram message shows: Markdown text plus an inline keyboard (or a photo).

Suggestions and approvals become ``callback_data`` buttons (``"<block_id>|<value>"``, which the
core maps back to the block); an integration card becomes a URL button to the gateway's connect
page; a file prompt asks for the file (the next document or photo in the chat answers it); a task
card is one message edited as the task progresses. A finished prompt is edited to say how it
ended, without buttons. Unknown block types show their title or JSON rather than vanish.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from aiogram.types import InlineKeyboardButton, InlineKeyboardMarkup

from adapters.telegram.inbound import CALLBACK_SEPARATOR

log = logging.getLogger("chatgate.telegram")

CALLBACK_DATA_MAX_BYTES = 64  # Bot API InlineKeyboardButton.callback_data: 1-64 bytes
BUTTON_ROW_CHARS = 28
STATUS_ICONS = {
    "completed": "✅",
    "complete": "✅",
    "succeeded": "✅",
    "success": "✅",
    "done": "✅",
    "failed": "❌",
    "error": "❌",
    "cancelled": "⏹",
    "canceled": "⏹",
}  # labels short enough to share a row on a phone (two per row)


@dataclass
class BlockView:
    """What to show for a block. ``kind`` ``"skip"`` shows nothing (a session title)."""

    kind: str  # "text" | "image" | "skip"
    markdown: str = ""
    keyboard: InlineKeyboardMarkup | None = None
    image: dict[str, Any] = field(default_factory=dict)
    awaiting_file: bool | None = None
    """For file prompts: True while the prompt waits, False once answered."""


def callback_data(block_id: str, value: str) -> str | None:
    data = f"{block_id}{CALLBACK_SEPARATOR}{value}"
    if len(data.encode()) > CALLBACK_DATA_MAX_BYTES:
        log.error("block id %r is too long for Telegram's 64-byte callback_data; showing labels only", block_id)
        return None
    return data


def _keyboard(buttons: list[InlineKeyboardButton]) -> InlineKeyboardMarkup | None:
    if not buttons:
        return None
    rows: list[list[InlineKeyboardButton]] = []
    for button in buttons:
        if rows and len(rows[-1]) == 1 and len(rows[-1][0].text) + len(button.text) <= BUTTON_ROW_CHARS:
            rows[-1].append(button)
        else:
            rows.append([button])
    return InlineKeyboardMarkup(inline_keyboard=rows)


def _callback_buttons(block_id: str, choices: list[tuple[str, str]]) -> tuple[InlineKeyboardMarkup | None, str]:
    """Buttons for ``(label, value)`` choices; if ids do not fit, a text list instead."""
    buttons: list[InlineKeyboardButton] = []
    for label, value in choices:
        data = callback_data(block_id, value)
        if data is None:
            return None, "\n".join(f"• {label}" for label, _ in choices)
        buttons.append(InlineKeyboardButton(text=label, callback_data=data))
    return _keyboard(buttons), ""


def absolute_url(url: str, public_url: str) -> str:
    return url if url.startswith(("http://", "https://")) else public_url.rstrip("/") + "/" + url.lstrip("/")


def view_block(envelope: dict[str, Any], public_url: str) -> BlockView:
    block_id = str(envelope.get("id") or "")
    kind = str(envelope.get("type") or "")
    payload: dict[str, Any] = envelope.get("payload") or {}

    if kind == "suggestions":
        suggestions = payload.get("suggestions") or []
        choices = [(str(s.get("label") or s.get("value") or "…"), str(i)) for i, s in enumerate(suggestions)]
        keyboard, listing = _callback_buttons(block_id, choices)
        title = str(payload.get("title") or "Suggestions")
        return BlockView("text", "\n\n".join(p for p in (f"**{title}**", listing) if p), keyboard)

    if kind == "approval_prompt":
        message = str(payload.get("message") or "Approve?")
        if payload.get("completed"):
            if payload.get("timed_out"):
                outcome = "⌛ Timed out"
            else:
                outcome = "✅ Approved" if payload.get("approved") else "❌ Rejected"
            return BlockView("text", f"{message}\n\n*{outcome}*")
        choices = [
            (str(payload.get("approve_label") or "Approve"), "approve"),
            (str(payload.get("reject_label") or "Reject"), "reject"),
        ]
        keyboard, listing = _callback_buttons(block_id, choices)
        return BlockView("text", "\n\n".join(p for p in (message, listing) if p), keyboard)

    if kind == "file_upload":
        message = str(payload.get("message") or "Please send a file.")
        if payload.get("completed"):
            name = payload.get("filename") or "the file"
            return BlockView("text", f"{message}\n\n*📎 Received {name}*", awaiting_file=False)
        if payload.get("timed_out") or payload.get("blocking") is False:
            return BlockView("text", f"{message}\n\n*⌛ Timed out*", awaiting_file=False)
        hint = "Send it here as a document or photo."
        accept = payload.get("accept")
        if accept:
            accepted = ", ".join(accept) if isinstance(accept, list) else str(accept)
            hint += f" Accepted: {accepted}."
        return BlockView("text", f"{message}\n\n_{hint}_", awaiting_file=True)

    if kind == "image":
        return BlockView("image", str(payload.get("alt") or ""), image=payload)

    if kind == "task_card":
        name = str(payload.get("name") or "Task")
        status = str(payload.get("status") or "running")
        icon = {
            "completed": "✅",
            "succeeded": "✅",
            "done": "✅",
            "failed": "❌",
            "error": "❌",
            "cancelled": "⏹",
            "canceled": "⏹",
        }.get(status.lower(), "⏳")
        lines = [f"{icon} **{name}** — {status}"]
        for key in ("message", "result", "error"):
            value = payload.get(key)
            if value not in (None, ""):
                text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
                lines.append(f"{'Error: ' if key == 'error' else ''}{text}")
        return BlockView("text", "\n\n".join(lines))

    if kind == "integration_prompt":
        service = str(payload.get("type") or "the service")
        if payload.get("completed"):
            return BlockView("text", f"*✅ {service} connected*")
        reason = str(payload.get("reason") or f"Please connect {service} to continue.")
        url = payload.get("connect_url")
        keyboard = None
        if url:
            keyboard = InlineKeyboardMarkup(
                inline_keyboard=[
                    [InlineKeyboardButton(text=f"Connect {service}", url=absolute_url(str(url), public_url))]
                ]
            )
        return BlockView("text", reason, keyboard)

    if kind in ("session_title", "session_event"):  # metadata for web clients, nothing to show
        return BlockView("skip")

    if kind == "notification":
        detail = payload.get("detail")
        text = f"🔔 **{payload.get('text') or ''}**" + (f"\n\n{detail}" if detail else "")
        return BlockView("text", text)

    title = payload.get("title") or payload.get("text")
    if title:
        return BlockView("text", str(title))
    return BlockView(
        "text", f"`{kind or 'block'}`\n\n```json\n{json.dumps(payload, indent=2, ensure_ascii=False)}\n```"
    )
