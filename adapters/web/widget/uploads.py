"""``POST /upload``: a file from the widget into the file store, then into a message or a prompt.

The body is read part by part and written to a staging file in the file store as it arrives
(never held whole in memory), counted against ``files.max_upload_bytes`` and the upload-byte
rates of ``web.limits`` chunk by chunk, so a refused upload stops after one more chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import mimetypes
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from adapters.base import FileRejected
from gateway.types import Attachment

from .. import errors
from ..context import ID_PATTERN, WebContext, too_many_requests
from ..cors import cors_headers
from ..errors import WebError, bad_request
from ..identity import WebIdentity
from ..jsoncodec import json_response
from ..quotas import RateLimited
from ..wire import file_ref
from .pending import store_reserved

CHUNK_BYTES = 64 * 1024
MULTIPART_OVERHEAD_BYTES = 16 * 1024
"""Room for the multipart boundaries and the session_id field on top of the file itself."""
MAX_FIELD_CHARS = 256
DEFAULT_CONTENT_TYPE = "application/octet-stream"
MAX_NAME_CHARS = 255
INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
"""Controls, format characters (the bidi embeddings, overrides and isolates U+202A-U+202E and
U+2066-U+2069, the marks U+200E/U+200F, zero-width characters), stray surrogates and the line
and paragraph separators U+2028/U+2029: none belongs in a file name, and the bidi ones make
``e\u202egnp.exe`` look like ``eexe.png``."""
MEDIA_TYPE = re.compile(r"^[A-Za-z0-9][\w!#$&^.+-]*/[A-Za-z0-9][\w!#$&^.+-]*[ \t]*(;[^\x00-\x1f\x7f]*)?\Z")
"""``type/subtype`` with optional parameters (RFC 6838 names), nothing else."""


def type_accepted(content_type: str, accepted: list[str]) -> bool:
    base = content_type.split(";", 1)[0].strip().lower()
    return any(fnmatch.fnmatchcase(base, pattern.strip().lower()) for pattern in accepted)


async def attachment_for(ctx: WebContext, file_id: str, session_id: str) -> Attachment:
    """An uploaded file of ``session_id`` as an attachment; files of other sessions are unknown."""
    record = await ctx.core.files.record(file_id)
    if record is None or record.session_id != session_id:
        raise errors.not_found("file not found")
    return Attachment(record.name, record.content_type, file_ref(record.id, session_id), record.size)


@dataclass
class ReceivedFile:
    name: str
    content_type: str
    staged: Path
    size: int


async def upload_handler(ctx: WebContext, request: web.Request) -> web.StreamResponse:
    headers = cors_headers(request, ctx.settings.web.allowed_origins)
    try:
        identity = ctx.identify(request, mint=False)
        ip = ctx.quotas.client_ip(request)
        with ctx.quotas.hold("uploads", ip, identity.key):
            return await _upload(ctx, request, headers, identity, ip)
    except RateLimited as exc:
        return too_many_requests(exc, headers)
    except WebError as exc:
        return exc.response(headers)


async def _upload(
    ctx: WebContext, request: web.Request, headers: dict[str, str], identity: WebIdentity, ip: str
) -> web.StreamResponse:
    limit = ctx.settings.files.max_upload_bytes
    if request.content_length is not None and request.content_length > limit + MULTIPART_OVERHEAD_BYTES:
        raise _too_large(limit)
    if not request.content_type.startswith("multipart/"):
        raise bad_request("send multipart/form-data with the fields session_id and file")
    try:
        reader = await request.multipart()
    except (ValueError, AssertionError) as exc:
        raise bad_request(f"malformed multipart body: {exc}") from None
    session_id: str | None = request.query.get("session_id")
    upload: ReceivedFile | None = None
    try:
        try:
            while (part := await reader.next()) is not None:
                if not isinstance(part, BodyPartReader):
                    raise bad_request("nested multipart bodies are not accepted")
                if part.name == "session_id":
                    session_id = (await part.read(decode=True)).decode(errors="replace")[:MAX_FIELD_CHARS]
                elif part.name == "file" and upload is None:
                    upload = await _receive_file(ctx, part, limit, ip, identity.key)
                else:
                    await part.release()
        except (ValueError, AssertionError, HttpProcessingError) as exc:  # e.g. a control char in a part header
            raise bad_request(f"malformed multipart body: {exc}") from None
        if upload is None or not session_id:
            raise bad_request("the fields session_id and file are required")
        await _session_for_upload(ctx, identity, session_id, ip)
        _check_with_core(ctx, upload.name, upload.content_type, upload.size)
        record = await ctx.core.files.adopt(
            upload.staged, name=upload.name, content_type=upload.content_type, size=upload.size, session_id=session_id
        )
    finally:
        if upload is not None:  # not adopted (or adopted: the rename left nothing to delete)
            _discard(upload.staged)
    body: dict[str, Any] = {
        "file_id": record.id,
        "name": record.name,
        "content_type": record.content_type,
        "size": record.size,
        "url": ctx.sign_file(record.id, session_id),
    }
    response = json_response(body, status=201, headers=headers)
    ctx.identities.remember(response, identity)
    return response


async def _session_for_upload(ctx: WebContext, identity: WebIdentity, session_id: str, ip: str) -> None:
    """The caller's widget session ``session_id``; a session the caller's socket reserved but
    has not stored yet (a file attached before the first message) is stored now."""
    if not ID_PATTERN.match(session_id):  # not an id: never worth a query (a NUL breaks PostgreSQL's)
        raise errors.not_found()
    sessions = ctx.core.sessions
    user = await ctx.known_user(identity)
    if user is not None and await sessions.get(session_id) is not None:
        await ctx.own_widget_session(session_id, user)
        return
    reservation = ctx.reservations.find(session_id, identity.key, ctx.core.chats.names())
    if reservation is None:
        raise errors.not_found()
    await store_reserved(ctx, reservation, identity, user, ip=ip)


def clean_filename(raw: str | None) -> str:
    """The name as sent without invisible characters (see ``INVISIBLE_CATEGORIES``; a NUL would
    not even fit PostgreSQL's text), trimmed to ``MAX_NAME_CHARS``; "file" when nothing is left."""
    visible = "".join(c for c in raw or "" if unicodedata.category(c) not in INVISIBLE_CATEGORIES)
    name = visible.strip()[:MAX_NAME_CHARS]
    return name or "file"


def _discard(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


async def _receive_file(ctx: WebContext, part: BodyPartReader, limit: int, ip: str, visitor: str) -> ReceivedFile:
    name = clean_filename(part.filename)
    content_type = part.headers.get("Content-Type") or DEFAULT_CONTENT_TYPE
    if not MEDIA_TYPE.match(content_type):
        content_type = DEFAULT_CONTENT_TYPE  # not a media type at all: judge by the name
    if content_type == DEFAULT_CONTENT_TYPE:
        # What browsers (and most clients) send when they do not know: the name may tell more.
        content_type = mimetypes.guess_type(name)[0] or DEFAULT_CONTENT_TYPE
    if not type_accepted(content_type, ctx.settings.files.accepted_types):
        raise WebError(415, errors.UNSUPPORTED_TYPE, f"files of type {content_type} are not accepted")
    staged = ctx.core.files.staging_path()
    size = 0
    try:
        with staged.open("wb") as out:
            while chunk := await part.read_chunk(CHUNK_BYTES):
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                ctx.quotas.spend("upload_bytes", ip, visitor, cost=len(chunk))
                await asyncio.to_thread(out.write, chunk)
    except BaseException:
        _discard(staged)
        raise
    return ReceivedFile(name, content_type, staged, size)


def _check_with_core(ctx: WebContext, name: str, content_type: str, size: int) -> None:
    """The file store has the last word (it may know rules this adapter does not)."""
    try:
        ctx.core.files.check(name, content_type, size)
    except FileRejected as exc:
        status = 413 if exc.code == errors.TOO_LARGE else 415
        raise WebError(status, exc.code, str(exc)) from None


def _too_large(limit: int) -> WebError:
    return WebError(413, errors.TOO_LARGE, f"files are limited to {limit} bytes")
