"""chatgate block envelopes -> Block Kit messages.

Buttons carry what the core needs to resolve a press: the Slack ``block_id`` of the actions
block is the envelope id (with ``~<n>`` appended when the buttons need more than one actions
block), and each button's ``value`` is the suggestion index or ``approve`` / ``reject``. Link
buttons (an integration's connect URL) use the ``chatgate-link`` action id and are only acked.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from adapters.slack.limits import (
    MAX_ACTIONS_ELEMENTS,
    MAX_BUTTON_TEXT,
    MAX_CONTEXT_TEXT,
    MAX_SECTION_TEXT,
)

BUTTON_ACTION_PREFIX = "chatgate"
LINK_ACTION_ID = "chatgate-link"
BLOCK_ID_PART_SEPARATOR = "~"
TASK_STATUS_ICONS = {
    "pending": ":hourglass_flowing_sand:",
    "queued": ":hourglass_flowing_sand:",
    "running": ":arrows_counterclockwise:",
    "in_progress": ":arrows_counterclockwise:",
    "completed": ":white_check_mark:",
    "complete": ":white_check_mark:",
    "succeeded": ":white_check_mark:",
    "failed": ":x:",
    "error": ":x:",
    "cancelled": ":no_entry_sign:",
}


@dataclass
class BlockMessage:
    text: str
    """Notification fallback text."""
    blocks: list[dict[str, Any]]
    image_file_id: str | None = None
    """A file-store id whose bytes must be uploaded first (``slack_file`` is then filled in)."""


def escape_mrkdwn(text: str) -> str:
    """Slack's three control characters in mrkdwn (docs.slack.dev, "Formatting text")."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def clip(text: str, limit: int) -> str:
    """For labels only (buttons, alt text): message text is split, never clipped."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def sections(text: str, *, mrkdwn: bool = True) -> list[dict[str, Any]]:
    """``text`` as one or more section blocks of at most 3,000 characters each."""
    out = []
    rest = text
    while rest:
        piece = rest[:MAX_SECTION_TEXT]
        if len(rest) > MAX_SECTION_TEXT:
            cut = piece.rfind("\n")
            if cut > 0:
                piece = piece[: cut + 1]
        rest = rest[len(piece) :]
        if piece.strip():
            out.append({"type": "section", "text": {"type": "mrkdwn" if mrkdwn else "plain_text", "text": piece}})
    return out


def context(text: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": clip(text, MAX_CONTEXT_TEXT)}]}


def button(label: str, value: str, action_id: str, *, style: str | None = None) -> dict[str, Any]:
    element: dict[str, Any] = {
        "type": "button",
        "text": {"type": "plain_text", "text": clip(label or value or "…", MAX_BUTTON_TEXT), "emoji": True},
        "value": value,
        "action_id": action_id,
    }
    if style:
        element["style"] = style
    return element


def actions(block_id: str, elements: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One actions block per 25 buttons; later ones get ``block_id~<n>``."""
    out = []
    for n, start in enumerate(range(0, len(elements), MAX_ACTIONS_ELEMENTS)):
        part_id = block_id if n == 0 else f"{block_id}{BLOCK_ID_PART_SEPARATOR}{n}"
        out.append({"type": "actions", "block_id": part_id, "elements": elements[start : start + MAX_ACTIONS_ELEMENTS]})
    return out


def envelope_block_id(slack_block_id: str) -> str:
    """The chatgate block id a pressed button belongs to."""
    return slack_block_id.split(BLOCK_ID_PART_SEPARATOR, 1)[0]


def _suggestions(block_id: str, payload: dict[str, Any]) -> BlockMessage:
    items = payload.get("suggestions") or []
    title = payload.get("title") or ""
    blocks = sections(escape_mrkdwn(title)) if title else []
    elements = [
        button(str(item.get("label") or item.get("value") or ""), str(i), f"{BUTTON_ACTION_PREFIX}-{i}")
        for i, item in enumerate(items)
    ]
    if elements:
        blocks += actions(block_id, elements)
    labels = ", ".join(str(item.get("label") or "") for item in items)
    return BlockMessage(text=title or f"Suggestions: {labels}", blocks=blocks or [context("(no suggestions)")])


def _approval(block_id: str, payload: dict[str, Any]) -> BlockMessage:
    message = str(payload.get("message") or "Approve?")
    blocks = sections(escape_mrkdwn(message))
    if payload.get("completed") or payload.get("timed_out"):
        if payload.get("timed_out"):
            outcome = ":hourglass: Timed out"
        elif payload.get("approved"):
            outcome = f":white_check_mark: {escape_mrkdwn(str(payload.get('approve_label') or 'Approved'))}"
        else:
            outcome = f":x: {escape_mrkdwn(str(payload.get('reject_label') or 'Rejected'))}"
        blocks.append(context(outcome))
    else:
        blocks += actions(
            block_id,
            [
                button(
                    str(payload.get("approve_label") or "Approve"),
                    "approve",
                    f"{BUTTON_ACTION_PREFIX}-approve",
                    style="primary",
                ),
                button(
                    str(payload.get("reject_label") or "Reject"),
                    "reject",
                    f"{BUTTON_ACTION_PREFIX}-reject",
                    style="danger",
                ),
            ],
        )
    return BlockMessage(text=message, blocks=blocks)


def _file_upload(payload: dict[str, Any]) -> BlockMessage:
    message = str(payload.get("message") or "Please upload a file.")
    blocks = sections(escape_mrkdwn(message))
    if payload.get("completed"):
        detail = payload.get("filename") or "the file"
        blocks.append(context(f":paperclip: Received {escape_mrkdwn(str(detail))}"))
    else:
        accept = payload.get("accept")
        accepted = (
            f" ({escape_mrkdwn(', '.join(accept) if isinstance(accept, list) else str(accept))})" if accept else ""
        )
        blocks.append(context(f":paperclip: Reply in this thread with a file{accepted}."))
    return BlockMessage(text=message, blocks=blocks)


def _image(payload: dict[str, Any]) -> BlockMessage:
    alt = clip(str(payload.get("alt") or "image"), 2000)
    block: dict[str, Any] = {"type": "image", "alt_text": alt}
    file_id = payload.get("file_id")
    if not file_id:
        block["image_url"] = str(payload.get("url") or "")
    return BlockMessage(text=alt, blocks=[block], image_file_id=str(file_id) if file_id else None)


def _task_card(payload: dict[str, Any]) -> BlockMessage:
    name = str(payload.get("name") or payload.get("task_id") or "Task")
    status = str(payload.get("status") or "pending")
    icon = TASK_STATUS_ICONS.get(status.lower(), ":large_blue_circle:")
    lines = [f"{icon} *{escape_mrkdwn(name)}* — {escape_mrkdwn(status)}"]
    if payload.get("message"):
        lines.append(escape_mrkdwn(str(payload["message"])))
    if payload.get("result") is not None:
        result = payload["result"]
        lines.append(escape_mrkdwn(result if isinstance(result, str) else json.dumps(result)))
    if payload.get("error"):
        lines.append(f":warning: {escape_mrkdwn(str(payload['error']))}")
    return BlockMessage(text=f"{name}: {status}", blocks=sections("\n".join(lines)))


def _integration(block_id: str, payload: dict[str, Any]) -> BlockMessage:
    kind = str(payload.get("type") or "an integration")
    reason = str(payload.get("reason") or f"Connect {kind} to continue.")
    blocks = sections(escape_mrkdwn(reason))
    if payload.get("completed"):
        blocks.append(context(f":white_check_mark: {escape_mrkdwn(kind)} connected"))
    elif payload.get("connect_url"):
        link = button(f"Connect {kind}", "connect", LINK_ACTION_ID, style="primary")
        link["url"] = str(payload["connect_url"])
        blocks += actions(block_id, [link])
    return BlockMessage(text=reason, blocks=blocks)


def _fallback(envelope: dict[str, Any]) -> BlockMessage | None:
    payload = envelope.get("payload") or {}
    title = payload.get("title") or payload.get("text")
    if title:
        return BlockMessage(text=str(title), blocks=sections(escape_mrkdwn(str(title))))
    dumped = json.dumps(payload, indent=2, default=str)
    if not payload:
        return None
    return BlockMessage(text=str(envelope.get("type")), blocks=sections(f"```{escape_mrkdwn(dumped)}```"))


def render_block(envelope: dict[str, Any]) -> BlockMessage | None:
    """The Block Kit message for an envelope, or None for blocks Slack does not show."""
    kind = envelope.get("type")
    block_id = str(envelope.get("id") or "chatgate")
    payload = envelope.get("payload") or {}
    if kind == "suggestions":
        return _suggestions(block_id, payload)
    if kind == "approval_prompt":
        return _approval(block_id, payload)
    if kind == "file_upload":
        return _file_upload(payload)
    if kind == "image":
        return _image(payload)
    if kind == "task_card":
        return _task_card(payload)
    if kind == "integration_prompt":
        return _integration(block_id, payload)
    if kind == "session_title":
        return None  # a web-widget concept; Slack threads have no title we may set
    if kind == "notification":
        text = str(payload.get("text") or "")
        detail = payload.get("detail")
        shown = f"{text} — {detail}" if detail else text
        return BlockMessage(text=shown, blocks=[context(escape_mrkdwn(shown))]) if shown else None
    return _fallback(envelope)
