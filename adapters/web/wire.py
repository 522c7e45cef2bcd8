"""Stored records as the web channel's two clients see them: widget frames and PromptRails JSON."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from adapters.base import MessageRecord, SessionRecord, id_instant

FILE_REF_PREFIX = "web-file:"
"""How an uploaded file is named in an inbound attachment's ``url``: resolvable after a restart,
unlike a signed URL that expires (``WebAdapter.resolve_attachment`` turns it into one)."""

SignFile = Callable[[str, str], str]
"""``(file_id, session_id) -> signed URL``"""

WIDGET_ROLES = frozenset({"user", "assistant", "system"})


class JSONRefused(ValueError):
    """Input ``json.loads`` would take but this channel must not (see :func:`strict_json`)."""


def _refuse_constant(name: str) -> Any:
    raise JSONRefused(f"{name} is not a JSON number")


_STRICT_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)
"""Made once: ``json.loads`` with a keyword builds a decoder per call (1.3 of its 2.1 us a frame)."""


def strict_json(raw: str | bytes) -> Any:
    """``json.loads`` without what Python accepts and the rest of the system cannot keep:
    ``NaN``/``Infinity`` (not JSON: echoed back, no other parser reads them), a lone UTF-16
    surrogate such as ``"\\ud800"`` (not Unicode: the store cannot encode it), a NUL character
    ``"\\u0000"`` (PostgreSQL's text columns refuse it), and nesting so deep it exhausts the
    parser. Bytes must be UTF-8. Raises ``ValueError`` (``JSONRefused`` for those,
    ``UnicodeDecodeError`` for bytes that are not UTF-8)."""
    # Strictly: json.loads would decode bytes with "surrogatepass" and let encoded surrogates in.
    text = raw.decode("utf-8-sig") if isinstance(raw, bytes) else raw
    if text.startswith("\ufeff"):  # as json.loads refuses a str that begins with one
        raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
    try:
        value = _STRICT_DECODER.decode(text)
    except RecursionError:
        raise JSONRefused("the JSON is nested too deeply") from None
    if "\\u" in text:  # only an escape can make a surrogate: strictly decoded UTF-8 holds none
        try:
            json.dumps(value, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            raise JSONRefused("the JSON holds a lone UTF-16 surrogate, which is not valid Unicode") from None
        except RecursionError:
            raise JSONRefused("the JSON is nested too deeply") from None
        if "\\u0000" in text and _holds_nul(value):
            raise JSONRefused("the JSON holds a NUL character (\\u0000), which text here cannot carry")
    return value


def _holds_nul(value: Any) -> bool:
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if "\0" in item:
                return True
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


def rfc3339(moment: datetime | None) -> str:
    """``2026-01-02T03:04:05.123Z``. The store keeps naive UTC datetimes."""
    if moment is None:
        return ""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    # isoformat (0.7 us) rather than strftime (1.8 us): two or three a turn. It also writes a
    # year before 1000 with four digits, as RFC 3339 asks, where glibc's %Y writes "1".
    return moment.isoformat(timespec="milliseconds") + "Z"


def now_rfc3339() -> str:
    return rfc3339(datetime.now(UTC))


def id_rfc3339(record_id: str) -> str:
    """The ``created_at`` the store keeps for the row ``record_id`` keys (its id's instant,
    ``gateway.ids``), without reading it; now for an id that is not one of ours."""
    moment = id_instant(record_id)
    return now_rfc3339() if moment is None else rfc3339(moment)


def file_ref(file_id: str, session_id: str) -> str:
    """``web-file:<file id>@<session id>``: enough to sign a fresh URL after a restart."""
    return f"{FILE_REF_PREFIX}{file_id}@{session_id}"


SIGNED_FILE_URL = re.compile(r"/files/([A-Za-z0-9]+)\?")
"""A signed URL of the core's file store (``gateway/files.py``): re-signed when replayed, since
the stored one expires after ``files.url_ttl_seconds``."""


def file_id_of(url: str) -> str | None:
    """The file-store id behind an attachment URL this channel made, if it is one."""
    if url.startswith(FILE_REF_PREFIX):
        return url[len(FILE_REF_PREFIX) :].partition("@")[0] or None
    match = SIGNED_FILE_URL.search(url)
    return match.group(1) if match else None


def public_attachments(attachments: list[dict[str, Any]], session_id: str, sign: SignFile | None) -> list[dict]:
    """Attachments with a URL the browser can open (a signed one for uploaded files)."""
    out = []
    for attachment in attachments:
        url = str(attachment.get("url") or "")
        file_id = file_id_of(url)
        if file_id and sign is not None:
            url = sign(file_id, session_id)
        out.append(
            {
                "name": attachment.get("name", ""),
                "content_type": attachment.get("content_type", ""),
                "url": url,
                "size": attachment.get("size", 0),
            }
        )
    return out


# -- the widget ---------------------------------------------------------------------------


def widget_message(record: MessageRecord, sign: SignFile | None) -> dict[str, Any]:
    return {
        "id": record.id,
        "role": record.role if record.role in WIDGET_ROLES else "system",
        "text": record.text,
        "status": record.status,
        "attachments": public_attachments(record.attachments, record.session_id, sign),
        "inbound_id": record.inbound_id,
        "created_at": rfc3339(record.created_at),
    }


def widget_frame(record: MessageRecord, sign: SignFile | None) -> dict[str, Any]:
    """The frame that replays one stored record: ``block`` for a block, else ``message``."""
    if record.role == "block" and record.block is not None:
        return {"type": "block", "message_id": record.id, "block": record.block}
    return {"type": "message", "message": widget_message(record, sign)}


# -- PromptRails ----------------------------------------------------------------------------

WORKSPACE_ID = "local"
"""PromptRails' workspace is the API key's; there is only one here."""


def chat_session(record: SessionRecord, agent_id: str) -> dict[str, Any]:
    return {
        "id": record.id,
        "workspace_id": WORKSPACE_ID,
        "agent_id": agent_id,
        "user_id": record.user_id or "",
        "title": record.title or "",
        "metadata": record.metadata or {},
        "created_at": rfc3339(record.created_at),
        "updated_at": rfc3339(record.updated_at),
    }


def chat_message(record: MessageRecord) -> dict[str, Any]:
    """A stored record as a ChatMessage. Blocks become ``system`` messages with readable text,
    so a page of messages is exactly a page of the store."""
    metadata: dict[str, Any] = {}
    role = record.role
    content = record.text
    if role == "block":
        role = "system"
        content = block_text(record.block or {})
        metadata["block"] = record.block
    elif role not in ("user", "assistant", "system", "tool"):
        role = "system"
    if record.attachments:
        metadata["attachments"] = public_attachments(record.attachments, record.session_id, None)
    if record.status != "complete":
        metadata["status"] = record.status
    return {
        "id": record.id,
        "session_id": record.session_id,
        "role": role,
        "content": content,
        "metadata": metadata,
        "created_at": rfc3339(record.created_at),
    }


def block_text(envelope: dict[str, Any]) -> str:
    """A block as one readable line or list, for clients that only show text."""
    kind = envelope.get("type", "")
    payload = envelope.get("payload") or {}
    if kind == "suggestions":
        lines = [str(payload["title"])] if payload.get("title") else []
        lines += [f"- {s.get('label', '')}" for s in payload.get("suggestions") or []]
        return "\n".join(lines)
    if kind in ("approval_prompt", "file_upload"):
        return str(payload.get("message", ""))
    if kind == "image":
        return str(payload.get("alt") or payload.get("url") or "image")
    if kind == "task_card":
        head = f"{payload.get('name') or 'Task'}: {payload.get('status') or 'pending'}"
        return f"{head}\n{payload['message']}" if payload.get("message") else head
    if kind == "integration_prompt":
        return str(payload.get("reason") or f"Connect {payload.get('type', '')}")
    if kind == "session_title":
        return str(payload.get("title", ""))
    if kind == "notification":
        return str(payload.get("text", ""))
    if kind in ("step_status", "activity"):
        label = str(payload.get("label") or ("Step" if kind == "step_status" else "Activity"))
        return f"{label}: {payload['detail']}" if payload.get("detail") else label
    return str(payload.get("title") or json.dumps(payload, ensure_ascii=False, default=str))


def page_meta(total: int, page: int, limit: int) -> dict[str, int]:
    """Both ``pages`` (Python and Go SDKs) and ``total_pages`` (JS SDK)."""
    pages = math.ceil(total / limit) if limit else 0
    return {"total": total, "page": page, "limit": limit, "pages": pages, "total_pages": pages}
