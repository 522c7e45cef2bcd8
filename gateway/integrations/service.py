"""``IntegrationService``: what the core and the connect pages ask of integrations.

The session asks ``knows``, ``card_fields``, ``credentials_for`` and ``all_for``; the connect
pages (``routes.py``) drive a flow through ``begin_oauth``, ``complete_oauth``,
``complete_secret`` and ``decline`` (``gateway.testing`` through ``complete_with`` and
``decline``); the CLI and the HTTP endpoint revoke.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote, urlencode

from gateway.dispatch import UnknownSession
from gateway.inbound import Inbound, PlatformUser
from gateway.integrations.crypto import CredentialCipher
from gateway.integrations.oauth import OAuthClient, OAuthFailure, TokenSet, new_code_verifier
from gateway.integrations.providers import ProviderSpec
from gateway.integrations.state import ConnectState, StateRefused, StateSigner
from gateway.store.integrations import IntegrationQueries, StoredCredential
from gateway.types import IntegrationCredentials, UserInfo

if TYPE_CHECKING:
    from gateway.app import App
    from gateway.callers import Callers
    from gateway.config import Settings
    from gateway.inbound import Accepted
    from gateway.store import Store


class IntegrationsHost(Protocol):
    """What the integrations service needs from the running gateway (``gateway.runtime.Gateway``)."""

    settings: Settings
    store: Store
    app: App
    callers: Callers

    @property
    def public_url(self) -> str: ...

    async def submit(self, inbound: Inbound) -> Accepted: ...

log = logging.getLogger("chatgate.integrations")

PURGE_EVERY = 600.0  # seconds between purges of old flow rows
USED_STATUSES = ("exchanging", "connected", "declined")
LEASE_POLL = 0.05  # seconds between tries for the refresh lease another process holds


class FlowRefused(Exception):
    """A step of a connect flow cannot go on. ``status`` is the HTTP status of the page."""

    def __init__(self, status: int, heading: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.heading = heading
        self.message = message


@dataclass
class RevokeResult:
    removed: bool
    provider_revoked: bool | None = None
    """True/False when the provider has a revocation endpoint and was asked; None otherwise."""


def credentials_from(provider: ProviderSpec, payload: dict[str, Any]) -> IntegrationCredentials:
    if provider.mode == "secret":
        return IntegrationCredentials(fields={str(k): str(v) for k, v in (payload.get("fields") or {}).items()})
    tokens = TokenSet.from_payload(payload)
    return IntegrationCredentials(
        access_token=tokens.access_token, token_type=tokens.token_type, scopes=list(tokens.scopes),
        expires_at=tokens.expires_at,
    )


class IntegrationService:
    def __init__(self, runtime: IntegrationsHost, providers: dict[str, ProviderSpec], cipher: CredentialCipher) -> None:
        self.runtime = runtime
        self.providers = providers
        self.records = IntegrationQueries(runtime.store, cipher)
        self.signer = StateSigner(runtime.settings.resolved_secret_key())
        self._refresh_locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._holder = f"integrations-{secrets.token_hex(8)}"
        self._last_purge = 0.0

    @property
    def settings(self) -> Any:
        return self.runtime.settings.integrations

    @property
    def oauth(self) -> OAuthClient:
        return OAuthClient(timeout=self.settings.http_timeout)

    # -- what the session asks -------------------------------------------------------------

    def knows(self, kind: str) -> bool:
        return kind.lower() in self.providers

    def provider(self, kind: str) -> ProviderSpec | None:
        return self.providers.get(kind.lower())

    @staticmethod
    def scope_key(provider: ProviderSpec, user: UserInfo) -> str:
        return user.owner_id if provider.owner_scoped else user.id

    def card_fields(self, kind: str, *, user: UserInfo, session_id: str, prompt_id: str | None) -> dict[str, Any]:
        provider = self.providers[kind.lower()]
        state, token = self.signer.issue(
            provider=provider.name, user_id=user.id, scope_key=self.scope_key(provider, user),
            session_id=session_id, prompt_id=prompt_id, ttl=self.settings.state_ttl_seconds,
        )
        return {
            "mode": provider.mode,
            "title": provider.title,
            "connect_url": self.connect_url(provider.name, token),
            "expires_at": int(state.expires_at),
        }

    def connect_url(self, kind: str, token: str) -> str:
        return f"{self.runtime.public_url}/integrations/{quote(kind)}/connect?{urlencode({'state': token})}"

    def redirect_uri(self, kind: str) -> str:
        """The OAuth callback to register with the provider."""
        return f"{self.runtime.public_url}/integrations/{quote(kind)}/callback"

    async def credentials_for(self, user: UserInfo, kind: str) -> IntegrationCredentials | None:
        provider = self.provider(kind)
        if provider is None:
            return None
        stored = await self.records.get(self.scope_key(provider, user), provider.name)
        if stored is None:
            return None
        return await self._fresh(provider, stored)

    async def all_for(self, user: UserInfo) -> dict[str, IntegrationCredentials]:
        """Every connected integration of ``user`` (one query; a refresh only for tokens about
        to expire)."""
        found: dict[str, IntegrationCredentials] = {}
        for stored in await self.records.for_scopes((user.id, user.owner_id)):
            provider = self.providers.get(stored.provider)
            if provider is None or stored.scope_key != self.scope_key(provider, user):
                continue
            credentials = await self._fresh(provider, stored)
            if credentials:
                found[provider.name] = credentials
        return found

    async def _fresh(self, provider: ProviderSpec, stored: StoredCredential) -> IntegrationCredentials | None:
        """The stored credentials, refreshed first when the access token is about to expire."""
        if stored.payload is None:
            log.warning("%s credentials of %s do not decrypt with the configured encryption_key; ignored",
                        provider.name, stored.scope_key)
            return None
        if provider.mode == "secret":
            return credentials_from(provider, stored.payload)
        tokens = TokenSet.from_payload(stored.payload)
        if not self._needs_refresh(tokens):
            return credentials_from(provider, stored.payload)
        if not tokens.refresh_token:
            return None if tokens.expires_at <= time.time() else credentials_from(provider, stored.payload)
        key = (stored.scope_key, provider.name)
        lock = self._refresh_locks.setdefault(key, asyncio.Lock())
        try:
            async with lock:
                return await self._refresh_under_lease(provider, stored.scope_key)
        finally:
            if not lock.locked() and self._refresh_locks.get(key) is lock:
                del self._refresh_locks[key]  # the lease still excludes a refresh that races this

    def _needs_refresh(self, tokens: TokenSet) -> bool:
        return bool(tokens.expires_at) and tokens.expires_at - self.settings.refresh_margin_seconds <= time.time()

    async def _refresh_under_lease(self, provider: ProviderSpec, scope_key: str) -> IntegrationCredentials | None:
        """Refresh while holding a store lease, so two processes never spend the same refresh
        token (a provider that rotates refresh tokens would reject the second as reused)."""
        store = self.runtime.store
        name = "int-refresh:" + hashlib.sha256(f"{provider.name}|{scope_key}".encode()).hexdigest()[:40]
        holder = f"{self._holder}:{secrets.token_hex(4)}"
        ttl = self.settings.http_timeout + 5
        deadline = time.monotonic() + 2 * ttl  # leases expire, so waiting ends; this is a backstop
        leased = await store.leases.acquire(name, holder, ttl)
        while not leased and time.monotonic() < deadline:
            await asyncio.sleep(LEASE_POLL)
            leased = await store.leases.acquire(name, holder, ttl)
        try:
            return await self._refresh(provider, scope_key)
        finally:
            if leased:
                await store.leases.release(name, holder)

    async def _refresh(self, provider: ProviderSpec, scope_key: str) -> IntegrationCredentials | None:
        current = await self.records.get(scope_key, provider.name)  # another turn may have refreshed
        if current is None or current.payload is None:
            return None
        tokens = TokenSet.from_payload(current.payload)
        if not self._needs_refresh(tokens):
            return credentials_from(provider, current.payload)
        try:
            renewed = await self.oauth.refresh(provider, tokens.refresh_token)
        except OAuthFailure as failure:
            if failure.permanent:
                latest = await self.records.get(scope_key, provider.name)
                if latest is not None and latest.updated_at != current.updated_at and latest.payload is not None:
                    # Another process refreshed first (and rotated the refresh token we used).
                    return credentials_from(provider, latest.payload)
                log.warning("refreshing %s for %s failed for good (%s); the user must connect again",
                            provider.name, scope_key, failure)
                await self.records.delete_if_unchanged(scope_key, provider.name, updated_at=current.updated_at)
                return None
            log.warning("refreshing %s for %s failed (%s); will retry", provider.name, scope_key, failure)
            alive = tokens.expires_at > time.time()
            return credentials_from(provider, current.payload) if alive else None
        if not renewed.scopes:
            renewed.scopes = tokens.scopes
        payload = renewed.to_payload()
        stored = await self.records.replace_tokens(
            scope_key, provider.name, previous_updated_at=current.updated_at, payload=payload,
            expires_at=renewed.expires_at,
        )
        if not stored:  # revoked (or replaced by a new connection) while we refreshed
            latest = await self.records.get(scope_key, provider.name)
            return None if latest is None or latest.payload is None else credentials_from(provider, latest.payload)
        log.info("refreshed %s credentials of %s", provider.name, scope_key)
        return credentials_from(provider, payload)

    # -- revoking and listing --------------------------------------------------------------

    async def revoke(self, scope_key: str, kind: str) -> RevokeResult:
        """Forget the credentials and, where the provider can, revoke them there too."""
        name = kind.lower()
        stored = await self.records.delete(scope_key, name)
        if stored is None:
            return RevokeResult(False)
        provider = self.providers.get(name)
        if provider is None or provider.mode != "oauth" or not provider.revoke_url or stored.payload is None:
            return RevokeResult(True)
        return RevokeResult(True, await revoke_at_provider(self.oauth, provider, stored.payload))

    async def revoke_for(self, user: UserInfo, kind: str) -> RevokeResult:
        provider = self.provider(kind)
        scope_key = self.scope_key(provider, user) if provider is not None else user.id
        return await self.revoke(scope_key, kind)

    async def connected(self, user: UserInfo) -> list[dict[str, Any]]:
        """What ``user`` has connected, without secrets."""
        out = []
        for stored in await self.records.for_scopes((user.id, user.owner_id)):
            provider = self.providers.get(stored.provider)
            if provider is not None and stored.scope_key != self.scope_key(provider, user):
                continue
            out.append(describe(stored, provider))
        return sorted(out, key=lambda item: item["provider"])

    # -- the connect flow ------------------------------------------------------------------

    def verify(self, kind: str, token: str) -> tuple[ProviderSpec, ConnectState]:
        provider = self.provider(kind)
        if provider is None:
            raise FlowRefused(404, "Unknown integration", f"No integration named {kind!r} is configured here.")
        try:
            state = self.signer.verify(token, provider=provider.name)
        except StateRefused as refused:
            if refused.expired:
                raise FlowRefused(410, "Link expired", refused.reason) from None
            raise FlowRefused(400, "Invalid link", refused.reason) from None
        return provider, state

    async def ensure_unused(self, state: ConnectState) -> None:
        if await self.records.flow_status(state.id) in USED_STATUSES:
            raise already_used()

    async def begin_oauth(self, provider: ProviderSpec, state: ConnectState, token: str) -> str:
        """The provider's authorize URL for this state (PKCE verifier kept server-side)."""
        await self._purge_now_and_then()
        status, verifier = await self.records.begin_oauth(state, new_code_verifier)
        if status != "pending" or verifier is None:
            raise already_used()
        return self.oauth.authorization_url(
            provider, redirect_uri=self.redirect_uri(provider.name), state=token, code_verifier=verifier
        )

    async def complete_oauth(self, provider: ProviderSpec, state: ConnectState, code: str) -> None:
        verifier = await self.records.claim_pending(state.id, "exchanging")
        if verifier is None:
            raise already_used_or_unknown()
        try:
            tokens = await self.oauth.exchange_code(
                provider, code=code, redirect_uri=self.redirect_uri(provider.name), code_verifier=verifier
            )
        except OAuthFailure as failure:
            await self.records.set_status(state.id, "pending")  # the link may be tried again
            log.warning("exchanging the %s code failed: %s", provider.name, failure)
            raise _not_finished(502, f"{provider.title} did not accept the sign-in ({failure.error}).") from None
        except BaseException:
            await self.records.set_status(state.id, "pending")
            raise
        try:
            await self.records.save(state.scope_key, provider.name, connected_by=state.user_id,
                                    payload=tokens.to_payload(), expires_at=tokens.expires_at)
        except Exception:
            # The code is spent, but the link is not: opening it again signs in afresh. Left
            # "exchanging", the link would answer "already used" and the chat wait for nothing.
            log.exception("storing the %s credentials failed; the connect link may be opened again", provider.name)
            with contextlib.suppress(Exception):
                await self.records.set_status(state.id, "pending")
            saved_nothing = f"{provider.title} accepted the sign-in, but it could not be saved here."
            raise _not_finished(503, saved_nothing) from None
        except BaseException:
            await self.records.set_status(state.id, "pending")
            raise
        await self.records.set_status(state.id, "connected")
        await self._resolve_prompt(state, {"connected": True})

    async def complete_secret(self, provider: ProviderSpec, state: ConnectState, values: dict[str, str]) -> None:
        await self.complete_with(provider, state, {"fields": values}, expires_at=0)

    async def complete_with(
        self, provider: ProviderSpec, state: ConnectState, payload: dict[str, Any], *, expires_at: int
    ) -> None:
        """Store ``payload`` (``{"fields": ...}``, or ``TokenSet.to_payload()``) for an unused state
        and answer its prompt: the secret form's step, and how ``gateway.testing`` connects an
        OAuth provider with tokens in hand (no code to exchange)."""
        await self._purge_now_and_then()
        if not await self.records.finish(state, "exchanging"):
            raise already_used()
        try:
            await self.records.save(state.scope_key, provider.name, connected_by=state.user_id,
                                    payload=payload, expires_at=expires_at)
        except BaseException:
            await self.records.set_status(state.id, "pending")
            raise
        await self.records.set_status(state.id, "connected")
        await self._resolve_prompt(state, {"connected": True})

    async def decline(self, state: ConnectState, *, error: str = "access_denied", from_provider: bool) -> None:
        """The user said no: on our page (a fresh or pending state) or at the provider (the
        callback of a pending state)."""
        await self._purge_now_and_then()
        if from_provider:
            if await self.records.claim_pending(state.id, "declined") is None:
                raise already_used_or_unknown()
            await self.records.set_status(state.id, "declined")
        elif not await self.records.finish(state, "declined"):
            raise already_used()
        await self._resolve_prompt(state, {"declined": True, "error": error})

    async def _resolve_prompt(self, state: ConnectState, payload: dict[str, Any]) -> None:
        """Answer the prompt waiting in the chat (if it still waits: the dispatcher drops a
        signal nobody waits for, and the credentials are there for the next turn anyway)."""
        if not state.prompt_id:
            return
        record = await self.runtime.store.sessions.get(state.session_id)
        if record is None:
            log.info("integration flow finished for session %s, which no longer exists", state.session_id)
            return
        inbound = Inbound(
            kind="signal", dedup_key=f"int:{state.id}", channel=record.channel,
            user=PlatformUser("chatgate", state.user_id), session_id=state.session_id,
            prompt_id=state.prompt_id, payload=payload,
        )
        try:
            await self.runtime.submit(inbound)
        except (UnknownSession, RuntimeError) as exc:
            log.warning("could not resolve the integration prompt of session %s: %s", state.session_id, exc)

    async def _purge_now_and_then(self) -> None:
        now = time.time()
        if now - self._last_purge < PURGE_EVERY:
            return
        self._last_purge = now
        await self.records.purge_flows(now - self.settings.state_ttl_seconds - 3600)

    # -- wiring ----------------------------------------------------------------------------

def _not_finished(status: int, what_happened: str) -> FlowRefused:
    """The sign-in did not complete, and the link is waiting again: the user may reopen it."""
    return FlowRefused(status, "Could not finish connecting",
                       f"{what_happened} Open the link from the chat to try again.")


def already_used() -> FlowRefused:
    return FlowRefused(409, "Link already used",
                       "This connection link was already used. Ask again in the chat if you need a new one.")


def already_used_or_unknown() -> FlowRefused:
    return FlowRefused(409, "Link already used",
                       "This sign-in was already completed, or was never started from this gateway.")


def describe(stored: StoredCredential, provider: ProviderSpec | None) -> dict[str, Any]:
    scopes = (stored.payload or {}).get("scopes") or []
    return {
        "provider": stored.provider,
        "title": provider.title if provider else stored.provider,
        "mode": provider.mode if provider else "unknown",
        "scope_key": stored.scope_key,
        "connected_by": stored.connected_by,
        "connected_at": int(stored.created_at),
        "updated_at": int(stored.updated_at),
        "expires_at": stored.expires_at,
        "scopes": list(scopes),
        "readable": stored.payload is not None,
    }


async def revoke_at_provider(oauth: OAuthClient, provider: ProviderSpec, payload: dict[str, Any]) -> bool:
    """Best effort: revoke the refresh token and the access token (RFC 7009)."""
    tokens = TokenSet.from_payload(payload)
    ok = True
    for token, hint in ((tokens.refresh_token, "refresh_token"), (tokens.access_token, "access_token")):
        if not token:
            continue
        try:
            await oauth.revoke(provider, token, hint=hint)
        except OAuthFailure as failure:
            log.warning("revoking the %s %s at the provider failed: %s", provider.name, hint, failure)
            ok = False
    return ok
