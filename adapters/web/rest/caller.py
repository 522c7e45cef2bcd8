"""Who calls the REST API: a client holding one of ``web.api_keys``, scoped by a digest of it."""

from __future__ import annotations

from adapters.base import PlatformUser

API_PLATFORM = "api"


class Caller:
    """An authenticated API client: its sessions are the ones with its ``owner_key``."""

    def __init__(self, owner_key: str) -> None:
        self.owner_key = owner_key
        self.user = PlatformUser(API_PLATFORM, owner_key)
