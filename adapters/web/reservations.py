"""A new conversation's id before it is stored: widget sessions are stored on their first use.

``hello`` without a session id creates nothing: the socket gets a *reserved* id, a ULID whose
random part is a nonce and an HMAC of the nonce, its time, its owner and its handler. The first message (or action)
on that socket stores the session under that id; so does an upload into it (the widget may
attach a file before it says anything), from any process, because the id itself proves whom
it was reserved for and for which handler. A socket opened and dropped leaves no row behind.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass

from ulid import ULID

RESERVATION_SALT = b"chatgate.web.pending-session"
CLAIM_SECONDS = 24 * 3600
"""How long after ``hello`` a reserved id can still be stored by an upload."""
NONCE_BYTES = 5
MAC_BYTES = 5
"""The 80 random bits of a ULID: 40 random (two hellos in one millisecond differ), 40 of MAC (a
forged id could only ever name an empty session for the owner it was forged for)."""


@dataclass(frozen=True)
class Reservation:
    session_id: str
    handler: str | None


class SessionReservations:
    def __init__(self, secret_key: str) -> None:
        self._key = hmac.new(secret_key.encode(), RESERVATION_SALT, hashlib.sha256).digest()

    def _mac(self, millis: int, nonce: bytes, owner: str, handler: str | None) -> bytes:
        message = f"{millis}\x00{nonce.hex()}\x00{owner}\x00{'' if handler is None else '=' + handler}".encode()
        return hmac.new(self._key, message, hashlib.sha256).digest()[:MAC_BYTES]

    def reserve(self, owner: str, handler: str | None) -> Reservation:
        millis = time.time_ns() // 1_000_000
        nonce = secrets.token_bytes(NONCE_BYTES)
        ulid = ULID.from_bytes(millis.to_bytes(6, "big") + nonce + self._mac(millis, nonce, owner, handler))
        return Reservation(str(ulid), handler)

    def find(self, session_id: str, owner: str, handlers: Iterable[str | None]) -> Reservation | None:
        """The reservation ``session_id`` is, if it was made for ``owner`` within the claim window."""
        try:
            raw = ULID.from_str(session_id).bytes
        except ValueError:
            return None
        millis = int.from_bytes(raw[:6], "big")
        nonce, mac = raw[6 : 6 + NONCE_BYTES], raw[6 + NONCE_BYTES :]
        age = time.time() - millis / 1000
        if not 0 <= age <= CLAIM_SECONDS:
            return None
        for handler in handlers:
            if hmac.compare_digest(mac, self._mac(millis, nonce, owner, handler)):
                return Reservation(session_id, handler)
        return None
