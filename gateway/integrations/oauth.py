"""The OAuth 2 client side of a connect flow (RFC 6749 authorization code + RFC 7636 PKCE,
RFC 7009 revocation), done by authlib's httpx client."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import httpx
from authlib.common.security import generate_token
from authlib.deprecate import AuthlibDeprecationWarning

from gateway.integrations.providers import ProviderSpec

with warnings.catch_warnings():
    # authlib 1.9 prefers the httpx2 package and warns when it falls back to httpx, which it
    # supports and which the rest of chatgate already uses.
    warnings.filterwarnings("ignore", message="The httpx module is deprecated", category=AuthlibDeprecationWarning)
    from authlib.integrations.httpx_client import AsyncOAuth2Client, OAuthError

PKCE_VERIFIER_LENGTH = 64  # RFC 7636 §4.1: 43 to 128 characters


class OAuthFailure(Exception):
    """The provider refused (``error`` is its RFC 6749 error code) or could not be reached."""

    def __init__(self, error: str, description: str = "") -> None:
        super().__init__(f"{error}: {description}" if description else error)
        self.error = error
        self.description = description

    @property
    def permanent(self) -> bool:
        """The grant itself is dead (revoked or expired refresh token): retrying cannot help."""
        return self.error in ("invalid_grant", "invalid_client", "unauthorized_client", "token_revoked")


@dataclass
class TokenSet:
    access_token: str
    token_type: str = "Bearer"
    refresh_token: str = ""
    scopes: list[str] = field(default_factory=list)
    expires_at: int = 0

    def to_payload(self) -> dict[str, Any]:
        return {
            "access_token": self.access_token,
            "token_type": self.token_type,
            "refresh_token": self.refresh_token,
            "scopes": self.scopes,
            "expires_at": self.expires_at,
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> TokenSet:
        return cls(
            access_token=str(payload.get("access_token") or ""),
            token_type=str(payload.get("token_type") or "Bearer"),
            refresh_token=str(payload.get("refresh_token") or ""),
            scopes=[str(s) for s in payload.get("scopes") or []],
            expires_at=int(payload.get("expires_at") or 0),
        )


def new_code_verifier() -> str:
    return generate_token(PKCE_VERIFIER_LENGTH)


class OAuthClient:
    def __init__(self, *, timeout: float) -> None:
        self.timeout = timeout

    def _client(self, provider: ProviderSpec, redirect_uri: str | None = None) -> AsyncOAuth2Client:
        return AsyncOAuth2Client(
            client_id=provider.client_id,
            client_secret=provider.client_secret or None,
            token_endpoint_auth_method=provider.token_auth_method,
            revocation_endpoint_auth_method=provider.token_auth_method,
            redirect_uri=redirect_uri,
            code_challenge_method="S256" if provider.pkce else None,
            timeout=self.timeout,
        )

    def authorization_url(self, provider: ProviderSpec, *, redirect_uri: str, state: str, code_verifier: str) -> str:
        client = self._client(provider, redirect_uri)
        extra: dict[str, Any] = dict(provider.authorize_params)
        if provider.scope_param == "scope":
            extra["scope"] = provider.scope_string or None
        else:
            extra["scope"] = None
            extra[provider.scope_param] = provider.scope_string or None
        url, _ = client.create_authorization_url(
            provider.authorize_url, state=state, code_verifier=code_verifier if provider.pkce else None, **extra
        )
        return str(url)

    async def exchange_code(
        self, provider: ProviderSpec, *, code: str, redirect_uri: str, code_verifier: str
    ) -> TokenSet:
        extra = {"code_verifier": code_verifier} if provider.pkce and code_verifier else {}
        async with self._client(provider, redirect_uri) as client:
            token = await self._call(
                client.fetch_token(
                    provider.token_url, code=code, redirect_uri=redirect_uri, grant_type="authorization_code", **extra
                )
            )
        return self._token_set(provider, token, fallback_refresh="")

    async def refresh(self, provider: ProviderSpec, refresh_token: str) -> TokenSet:
        async with self._client(provider) as client:
            token = await self._call(client.refresh_token(provider.token_url, refresh_token=refresh_token))
        return self._token_set(provider, token, fallback_refresh=refresh_token)

    async def revoke(self, provider: ProviderSpec, token: str, *, hint: str) -> None:
        """Ask the provider to revoke ``token`` (RFC 7009); a provider without a revocation
        endpoint is a no-op."""
        if not provider.revoke_url or not token:
            return
        async with self._client(provider) as client:
            response = await self._call(client.revoke_token(provider.revoke_url, token=token, token_type_hint=hint))
        if response.status_code >= 400:
            raise OAuthFailure("revocation_failed", f"HTTP {response.status_code} from {provider.revoke_url}")

    @staticmethod
    async def _call(awaitable: Any) -> Any:
        try:
            return await awaitable
        except OAuthError as exc:
            raise OAuthFailure(str(exc.error or "oauth_error"), str(exc.description or "")) from None
        except httpx.HTTPStatusError as exc:
            raise OAuthFailure("server_error", f"HTTP {exc.response.status_code} from the provider") from None
        except httpx.HTTPError as exc:
            raise OAuthFailure("temporarily_unavailable", f"the provider could not be reached ({exc})") from None
        except ValueError as exc:  # a token endpoint that answered something other than JSON
            raise OAuthFailure("invalid_response", str(exc)) from None

    @staticmethod
    def _token_set(provider: ProviderSpec, token: dict[str, Any], *, fallback_refresh: str) -> TokenSet:
        if provider.token_path and isinstance(token.get(provider.token_path), dict):
            token = token[provider.token_path]
        access_token = token.get("access_token")
        if not isinstance(access_token, str) or not access_token:
            raise OAuthFailure("invalid_response", "the token response has no access_token")
        scope = token.get("scope")
        if isinstance(scope, str):
            scopes = [s for s in scope.replace(",", " ").split() if s]
        elif isinstance(scope, list):
            scopes = [str(s) for s in scope]
        else:
            scopes = list(provider.scopes)
        expires_at = 0
        if token.get("expires_in") not in (None, ""):
            expires_at = int(time.time() + float(token["expires_in"]))
        elif token.get("expires_at"):
            expires_at = int(float(token["expires_at"]))
        token_type = str(token.get("token_type") or "Bearer")
        return TokenSet(
            access_token=access_token,
            token_type="Bearer" if token_type.lower() == "bearer" else token_type,
            refresh_token=str(token.get("refresh_token") or fallback_refresh or ""),
            scopes=scopes,
            expires_at=expires_at,
        )
