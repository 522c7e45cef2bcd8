"""``POST /upload``: a file from the widget into the file store, then into a message or a prompt.

The body is read part by part and counted as it arrives, so an oversized upload is refused after
``max_upload_bytes`` + one chunk, not after it has all been buffered.
"""

from __future__ import annotations

import fnmatch
import mimetypes
import re
from typing import Any

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from gateway.files import FileRejected
from gateway.types import Attachment

from .. import errors
from ..context import WebContext
from ..cors import cors_headers
from ..errors import WebError, bad_request
from ..wire import file_ref

CHUNK_BYTES = 64 * 1024
MULTIPART_OVERHEAD_BYTES = 16 * 1024
"""Room for the multipart boundaries and the session_id field on top of the file itself."""
MAX_FIELD_CHARS = 256
DEFAULT_CONTENT_TYPE = "application/octet-stream"
MAX_NAME_CHARS = 255
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
MEDIA_TYPE = re.compile(r"^[A-Za-z0-9][\w!#$&^.+-]*/[A-Za-z0-9][\w!#$&^.+-]*[ \t]*(;[^\x00-\x1f\x7f]*)?\Z")
"""``type/subtype`` with optional parameters (RFC 6838 names), nothing else."""


def type_accepted(content_type: str, accepted: list[str]) -> bool:
    base = content_type.split(";", 1)[0].strip().lower()
    return any(fnmatch.fnmatchcase(base, pattern.strip().lower()) for pattern in accepted)


async def attachment_for(ctx: WebContext, file_id: str, session_id: str) -> Attachment:
    """An uploaded file of ``session_id`` as an attachment; files of other sessions are unknown."""
    record = await ctx.core.store.get_file(file_id)
    if record is None or record.session_id != session_id:
        raise errors.not_found("file not found")
    return Attachment(record.name, record.content_type, file_ref(record.id, session_id), record.size)


async def upload_handler(ctx: WebContext, request: web.Request) -> web.StreamResponse:
    headers = cors_headers(request, ctx.settings.web.allowed_origins)
    try:
        return await _upload(ctx, request, headers)
    except WebError as exc:
        return exc.response(headers)


async def _upload(ctx: WebContext, request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
    identity = ctx.identify(request, mint=False)
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
    upload: tuple[str, str, bytes] | None = None
    try:
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise bad_request("nested multipart bodies are not accepted")
            if part.name == "session_id":
                session_id = (await part.read(decode=True)).decode(errors="replace")[:MAX_FIELD_CHARS]
            elif part.name == "file" and upload is None:
                upload = await _read_file(ctx, part, limit)
            else:
                await part.release()
    except (ValueError, AssertionError, HttpProcessingError) as exc:  # e.g. a control character in a part header
        raise bad_request(f"malformed multipart body: {exc}") from None
    if upload is None or not session_id:
        raise bad_request("the fields session_id and file are required")
    user = await ctx.user_of(identity)
    await ctx.own_widget_session(session_id, user)
    name, content_type, data = upload
    _check_with_core(ctx, name, content_type, len(data))
    record = await ctx.core.files.save(data, name=name, content_type=content_type, session_id=session_id)
    body: dict[str, Any] = {
        "file_id": record.id,
        "name": record.name,
        "content_type": record.content_type,
        "size": record.size,
        "url": ctx.sign_file(record.id, session_id),
    }
    response = web.json_response(body, status=201, headers=headers)
    ctx.identities.remember(response, identity)
    return response


def clean_filename(raw: str | None) -> str:
    """The name as sent, without control characters (a NUL would not even fit PostgreSQL's
    text), trimmed to ``MAX_NAME_CHARS``; "file" when nothing is left."""
    name = CONTROL_CHARS.sub("", raw or "").strip()[:MAX_NAME_CHARS]
    return name or "file"


async def _read_file(ctx: WebContext, part: BodyPartReader, limit: int) -> tuple[str, str, bytes]:
    name = clean_filename(part.filename)
    content_type = part.headers.get("Content-Type") or DEFAULT_CONTENT_TYPE
    if not MEDIA_TYPE.match(content_type):
        content_type = DEFAULT_CONTENT_TYPE  # not a media type at all: judge by the name
    if content_type == DEFAULT_CONTENT_TYPE:
        # What browsers (and most clients) send when they do not know: the name may tell more.
        content_type = mimetypes.guess_type(name)[0] or DEFAULT_CONTENT_TYPE
    if not type_accepted(content_type, ctx.settings.files.accepted_types):
        raise WebError(415, errors.UNSUPPORTED_TYPE, f"files of type {content_type} are not accepted")
    chunks: list[bytes] = []
    size = 0
    while chunk := await part.read_chunk(CHUNK_BYTES):
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return name, content_type, b"".join(chunks)


def _check_with_core(ctx: WebContext, name: str, content_type: str, size: int) -> None:
    """The file store has the last word (it may know rules this adapter does not)."""
    try:
        ctx.core.files.check(name, content_type, size)
    except FileRejected as exc:
        status = 413 if exc.code == errors.TOO_LARGE else 415
        raise WebError(status, exc.code, str(exc)) from None


def _too_large(limit: int) -> WebError:
    return WebError(413, errors.TOO_LARGE, f"files are limited to {limit} bytes")
