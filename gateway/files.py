"""The file store: uploads and images, on local disk, served back only at signed URLs.

A URL is signed for one file and one session with an expiry (``files.url_ttl_seconds``), so a
file is readable by whoever the session shows it to, and by nobody who guesses an id.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path
from urllib.parse import urlencode

from gateway.config import Settings
from gateway.store import Store
from gateway.store.records import FileRecord


class FileRejected(ValueError):
    """An upload broke a limit. ``code`` is ``too_large`` or ``unsupported_type``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class FileStore:
    def __init__(self, settings: Settings, store: Store, public_url: str) -> None:
        self.root = Path(settings.files.dir)
        self.limits = settings.files
        self.store = store
        self.public_url = public_url.rstrip("/")
        self._key = settings.resolved_secret_key().encode()

    def check(self, name: str, content_type: str, size: int) -> None:
        """Raise :class:`FileRejected` when an upload breaks the configured limits."""
        if size > self.limits.max_upload_bytes:
            mib = self.limits.max_upload_bytes / (1024 * 1024)
            raise FileRejected("too_large", f"{name!r} is larger than the {mib:g} MiB upload limit")
        ctype = (content_type or "application/octet-stream").lower()
        if not any(fnmatch.fnmatch(ctype, pattern.lower()) for pattern in self.limits.accepted_types):
            raise FileRejected("unsupported_type", f"files of type {ctype} are not accepted here")

    async def save(self, data: bytes, *, name: str, content_type: str, session_id: str | None) -> FileRecord:
        record = await self.store.files.add(name=name, content_type=content_type, size=len(data), session_id=session_id)
        await asyncio.to_thread(self._write, record.id, data)
        return record

    def staging_path(self) -> Path:
        """A new file to stream an upload into, beside the stored files (so keeping it is a
        rename, never a copy); :meth:`adopt` keeps it, the caller deletes it otherwise."""
        self.root.mkdir(parents=True, exist_ok=True)
        return self.root / f".upload-{secrets.token_hex(12)}.part"

    async def adopt(
        self, staged: Path, *, name: str, content_type: str, size: int, session_id: str | None
    ) -> FileRecord:
        """Store a file already written to ``staged`` (see :meth:`staging_path`)."""
        record = await self.store.files.add(name=name, content_type=content_type, size=size, session_id=session_id)
        await asyncio.to_thread(os.replace, staged, self.root / record.id)
        return record

    def _write(self, file_id: str, data: bytes) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{file_id}.part"
        tmp.write_bytes(data)
        tmp.replace(self.root / file_id)

    async def record(self, file_id: str) -> FileRecord | None:
        """What is known of a stored file (name, type, size, session), ``None`` for an unknown id."""
        return await self.store.files.get(file_id)

    def path(self, file_id: str) -> Path:
        if not file_id.isalnum():
            raise ValueError("bad file id")
        return self.root / file_id

    async def read(self, file_id: str) -> bytes:
        return await asyncio.to_thread(self.path(file_id).read_bytes)

    def _signature(self, file_id: str, session_id: str, expires: int) -> str:
        message = f"{file_id}:{session_id}:{expires}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()[:32]

    def signed_url(self, file_id: str, session_id: str | None, *, ttl: int | None = None) -> str:
        expires = int(time.time()) + (ttl or self.limits.url_ttl_seconds)
        signature = self._signature(file_id, session_id or "", expires)
        query = urlencode({"s": session_id or "", "exp": expires, "sig": signature})
        return f"{self.public_url}/files/{file_id}?{query}"

    def verify(self, file_id: str, session_id: str, expires: str, signature: str) -> bool:
        try:
            exp = int(expires)
        except ValueError:
            return False
        if exp < time.time():
            return False
        # compare_digest raises TypeError on non-ASCII str; such a signature is simply wrong.
        return signature.isascii() and hmac.compare_digest(self._signature(file_id, session_id, exp), signature)
