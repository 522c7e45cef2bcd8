"""Who a Slack user is: users.info, cached, and bounded in time so it never delays an ack."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import aiohttp
from cachetools import LRUCache
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from adapters.base import PlatformUser
from adapters.slack.pacer import SlackPacer

log = logging.getLogger(__name__)

USER_CACHE_SECONDS = 3600.0
"""How long a users.info answer is reused (profiles change rarely; emails almost never)."""
LOOKUP_TIMEOUT = 1.0
REMEMBERED_USERS = 50_000
"""Profiles kept in memory; an older one is asked of users.info again."""
"""Seconds a users.info lookup may take before the event goes on without the email."""


@dataclass
class KnownUser:
    email: str | None
    name: str | None
    fetched_at: float


class SlackDirectory:
    def __init__(self, client: AsyncWebClient, pacer: SlackPacer) -> None:
        self.client = client
        self.pacer = pacer
        self._known: LRUCache[tuple[str, str], KnownUser] = LRUCache(REMEMBERED_USERS)

    async def platform_user(self, team: str, user: str, *, timeout: float = LOOKUP_TIMEOUT) -> PlatformUser:
        """``PlatformUser("slack", "<team>:<user>")`` with the email when the
        ``users:read.email`` scope lets users.info return it."""
        known = self._known.get((team, user))
        if known is None or time.monotonic() - known.fetched_at > USER_CACHE_SECONDS:
            known = await self._lookup(team, user, timeout) or known
        return PlatformUser(
            "slack",
            f"{team}:{user}",
            email=known.email if known else None,
            name=known.name if known else None,
            org_id=None,
        )

    async def _lookup(self, team: str, user: str, timeout: float) -> KnownUser | None:
        try:
            async with asyncio.timeout(max(0.05, timeout)):
                response = await self.pacer.call(
                    "users.info", team, None, lambda: self.client.users_info(user=user), idempotent=True
                )
        except (TimeoutError, SlackApiError, aiohttp.ClientError) as exc:
            log.info("users.info for %s:%s failed (%s); going on without the profile", team, user, exc)
            return None
        data = (response or {}).get("user") or {}
        profile = data.get("profile") or {}
        known = KnownUser(
            email=profile.get("email") or None,
            name=profile.get("real_name") or data.get("real_name") or data.get("name") or None,
            fetched_at=time.monotonic(),
        )
        self._known[(team, user)] = known
        return known
