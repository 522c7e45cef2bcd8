"""Encryption at rest for stored credentials: Fernet (AES-128-CBC + HMAC-SHA256) from
``cryptography``, keyed by ``[integrations] encryption_key``.

Several comma-separated keys rotate: the first encrypts, any of them decrypts, so a new key can
be put in front and old rows stay readable until they are next written.
"""

from __future__ import annotations

import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from gateway.config import ConfigError

KEY_HELP = (
    'generate one with `chatgate integrations key` (or python -c "from cryptography.fernet import Fernet; '
    'print(Fernet.generate_key().decode())") and set [integrations] encryption_key or '
    "CHATGATE_INTEGRATIONS__ENCRYPTION_KEY"
)


class UnreadableCredentials(Exception):
    """A stored value cannot be decrypted with the configured key(s)."""


def generate_key() -> str:
    return Fernet.generate_key().decode("ascii")


class CredentialCipher:
    def __init__(self, keys: str) -> None:
        parts = [part.strip() for part in keys.split(",") if part.strip()]
        if not parts:
            raise ConfigError(f"config error: integrations.encryption_key is empty; {KEY_HELP}")
        fernets = []
        for index, part in enumerate(parts):
            try:
                fernets.append(Fernet(part.encode("ascii")))
            except (ValueError, UnicodeEncodeError):
                raise ConfigError(
                    f"config error: integrations.encryption_key: key #{index + 1} is not a Fernet key "
                    f"(32 url-safe base64-encoded bytes); {KEY_HELP}"
                ) from None
        self._fernet = MultiFernet(fernets)

    def encrypt(self, value: dict[str, Any]) -> str:
        return self._fernet.encrypt(json.dumps(value, separators=(",", ":")).encode()).decode("ascii")

    def decrypt(self, token: str) -> dict[str, Any]:
        try:
            plain = self._fernet.decrypt(token.encode("ascii"))
        except (InvalidToken, UnicodeEncodeError):
            raise UnreadableCredentials("stored credentials do not decrypt with the configured key") from None
        value = json.loads(plain)
        if not isinstance(value, dict):
            raise UnreadableCredentials("stored credentials are not an object")
        return value
