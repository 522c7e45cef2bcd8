"""Who is on the other end of a widget request: an anonymous visitor or a host site's user.

Anonymous visitors get a random id signed with the gateway's secret key and the time it was
signed (itsdangerous), kept in a cookie or, where cookies do not reach (the widget embedded on
another site), as a visitor token the widget stores itself. A token expires after
``web.visitor_ttl_seconds`` unused and is re-issued while in use. A host site that knows its user
signs an HS256 JWT with ``web.identity_secret``; its ``sub``, ``email`` and ``org`` become
``session.user``. A credential that is present but wrong is refused, never downgraded to anonymous.

The cookie is ``SameSite=Lax``, so a browser sends it to every origin of the same *site* (another
port, another subdomain). It is therefore honoured only on requests from the gateway's own origin
or a listed ``web.allowed_origins`` entry (the ``Origin`` header, or ``Sec-Fetch-Site`` where a
browser sends no ``Origin``), and its value is never handed to script: a request from any other
origin is a new visitor, and nothing it does touches the cookie.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

import jwt
from aiohttp import web
from itsdangerous import BadSignature, SignatureExpired, Signer, TimestampSigner
from yarl import URL

from adapters.base import PlatformUser
from gateway.config import Settings

VISITOR_COOKIE = "chatgate_uid"
VISITOR_SALT = "chatgate.web.visitor.v2"
"""Salt of the expiring visitor tokens (id + time)."""
LEGACY_VISITOR_SALT = "chatgate.web.visitor"
"""Salt of the visitor tokens issued before they carried a time (``web.legacy_visitor_tokens``)."""
VISITOR_PREFIX = "anon-"
"""Every anonymous visitor id starts with it; a host token's ``sub`` may not (the namespaces of
stored web identities stay apart without a migration)."""
RENEW_FRACTION = 10
"""A token in use is re-issued once it is older than a tenth of its lifetime."""
TOKEN_ALGORITHMS = ["HS256"]
TOKEN_REQUIRED_CLAIMS = ["sub", "exp"]
TOKEN_LEEWAY_SECONDS = 10
"""Clock skew tolerated between the host site and the gateway."""
PLATFORM = "web"
SAME_ORIGIN_FETCH_SITES = frozenset({"same-origin", "none"})
"""``Sec-Fetch-Site`` values of requests the gateway's own pages (or the user) started (Fetch
Metadata, W3C): ``same-site`` and ``cross-site`` are other origins."""
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


class IdentityRefused(Exception):
    """A token or visitor id was presented but does not verify. The message is for the caller."""


@dataclass(frozen=True)
class WebIdentity:
    """The caller.

    ``visitor_token`` is a token the client may keep: a new visitor's, or the one it sent in
    ``?visitor=`` (renewed when due); never a token that arrived in the cookie. ``cookie`` is a
    value to (re)set the visitor cookie to. ``minted`` says the visitor is new in this request.
    """

    user: PlatformUser
    anonymous: bool = False
    visitor_token: str | None = None
    cookie: str | None = None
    minted: bool = False

    @property
    def key(self) -> str:
        """What per-visitor limits count by: the stored identity's id (stable across renewals)."""
        return self.user.id


@dataclass(frozen=True)
class CheckedVisitor:
    visitor_id: str
    due: bool
    """The token is old (or of the legacy kind): issue a new one."""


class VisitorTokens:
    """Signs and checks anonymous visitor ids, with the time of signing."""

    def __init__(self, secret_key: str, *, ttl_seconds: int = 30 * 24 * 3600, accept_legacy: bool = True) -> None:
        self._signer = TimestampSigner(secret_key, salt=VISITOR_SALT)
        self._legacy = Signer(secret_key, salt=LEGACY_VISITOR_SALT) if accept_legacy else None
        self.ttl_seconds = ttl_seconds

    def sign(self, visitor_id: str) -> str:
        return self._signer.sign(visitor_id).decode()

    def mint(self) -> WebIdentity:
        visitor_id = VISITOR_PREFIX + secrets.token_urlsafe(16)
        token = self.sign(visitor_id)
        return WebIdentity(PlatformUser(PLATFORM, visitor_id), anonymous=True, visitor_token=token, minted=True)

    def check(self, token: str) -> CheckedVisitor:
        try:
            raw, signed_at = self._signer.unsign(token, max_age=self.ttl_seconds, return_timestamp=True)
            visitor_id = raw.decode()
            age = time.time() - signed_at.timestamp()
            due = age > self.ttl_seconds / RENEW_FRACTION
        except SignatureExpired:
            raise IdentityRefused("the visitor token has expired") from None
        except BadSignature:
            visitor_id = self._legacy_id(token)
            due = True
        if not visitor_id.startswith(VISITOR_PREFIX):
            raise IdentityRefused("the visitor token is not valid")
        return CheckedVisitor(visitor_id, due)

    def _legacy_id(self, token: str) -> str:
        if self._legacy is not None:
            try:
                return self._legacy.unsign(token).decode()
            except BadSignature:
                pass
        raise IdentityRefused("the visitor token's signature is not valid")

    def verify(self, token: str) -> WebIdentity:
        """A ``?visitor=`` token: the client keeps it, or the renewal when one is due."""
        checked = self.check(token)
        kept = self.sign(checked.visitor_id) if checked.due else token
        return WebIdentity(PlatformUser(PLATFORM, checked.visitor_id), anonymous=True, visitor_token=kept)


def verify_host_token(token: str, secret: str | None, *, max_lifetime: int = 24 * 3600) -> PlatformUser:
    """Check a host site's identity token (HS256 JWT: ``sub``, ``exp``, ``email``?, ``org``?)."""
    if not secret:
        raise IdentityRefused("identity tokens are not accepted: web.identity_secret is not set")
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=TOKEN_ALGORITHMS,
            options={"require": TOKEN_REQUIRED_CLAIMS},
            leeway=TOKEN_LEEWAY_SECONDS,
        )
    except jwt.ExpiredSignatureError:
        raise IdentityRefused("the identity token has expired") from None
    except jwt.InvalidTokenError as exc:
        raise IdentityRefused(f"the identity token is not valid: {exc}") from None
    exp = claims["exp"]
    if not isinstance(exp, int | float) or exp - time.time() > max_lifetime + TOKEN_LEEWAY_SECONDS:
        raise IdentityRefused(
            f"the identity token is valid for too long: exp may lie at most {max_lifetime} s ahead "
            "(web.identity_token_max_lifetime); mint short-lived tokens and renew them"
        )
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise IdentityRefused("the identity token's sub claim must be a non-empty string")
    if sub.startswith(VISITOR_PREFIX):
        raise IdentityRefused(f"the identity token's sub may not start with {VISITOR_PREFIX!r} (kept for visitors)")
    email = claims.get("email")
    org = claims.get("org")
    return PlatformUser(
        PLATFORM,
        sub,
        email=email if isinstance(email, str) and email else None,
        name=claims.get("name") if isinstance(claims.get("name"), str) else None,
        org_id=org if isinstance(org, str) and org else None,
    )


def normalized_origin(origin: str) -> str | None:
    """``scheme://host[:port]`` in lower case without a default port; None for anything else."""
    try:
        url = URL(origin.strip())
    except (ValueError, TypeError):
        return None
    if not url.scheme or not url.host:
        return None
    scheme = url.scheme.lower()
    port = url.explicit_port
    if port is not None and DEFAULT_PORTS.get(scheme) == port:
        port = None
    return f"{scheme}://{url.host.lower()}" + (f":{port}" if port is not None else "")


class IdentityResolver:
    """Reads a request's identity in the documented order: ``token``, ``visitor``, cookie."""

    def __init__(self, settings: Settings) -> None:
        web_settings = settings.web
        self._identity_secret = web_settings.identity_secret
        self._max_lifetime = web_settings.identity_token_max_lifetime
        self._visitors = VisitorTokens(
            settings.resolved_secret_key(),
            ttl_seconds=web_settings.visitor_ttl_seconds,
            accept_legacy=web_settings.legacy_visitor_tokens,
        )
        base = settings.server.base_url()
        self._secure_cookie = base.startswith("https://")
        self._public_origin = normalized_origin(base) if settings.server.public_url else None
        self._trusted_origins = {
            normalized for origin in web_settings.allowed_origins if (normalized := normalized_origin(origin))
        }

    def own_origins(self, request: web.BaseRequest) -> set[str]:
        """The gateway's own origins: ``server.public_url``'s and the one this request reached."""
        own = {o for o in (normalized_origin(f"{request.scheme}://{request.host}"),) if o}
        if self._public_origin:
            own.add(self._public_origin)
        return own

    def cookie_trusted(self, request: web.BaseRequest) -> bool:
        """May this request use (and be given) the visitor cookie? Only from the gateway's own
        origin or a listed ``web.allowed_origins`` entry (``"*"`` never extends this)."""
        origin = request.headers.get("Origin")
        if origin is not None:
            normalized = normalized_origin(origin)
            return normalized is not None and (
                normalized in self._trusted_origins or normalized in self.own_origins(request)
            )
        fetch_site = request.headers.get("Sec-Fetch-Site")
        return fetch_site is None or fetch_site in SAME_ORIGIN_FETCH_SITES

    def resolve(self, request: web.BaseRequest, *, mint: bool) -> WebIdentity | None:
        """The caller's identity; a new visitor when there is none and ``mint``, else ``None``.

        Raises :class:`IdentityRefused` for a forged or expired credential.
        """
        token = request.query.get("token")
        if token:
            return WebIdentity(verify_host_token(token, self._identity_secret, max_lifetime=self._max_lifetime))
        visitor = request.query.get("visitor")
        if visitor:
            return self._visitors.verify(visitor)
        trusted = self.cookie_trusted(request)
        cookie = request.cookies.get(VISITOR_COOKIE) if trusted else None
        if cookie:
            try:
                checked = self._visitors.check(cookie)
            except IdentityRefused:
                # An HttpOnly cookie the page cannot clear (the secret key changed, or it expired):
                # replace it with a new visitor rather than lock the page out. It never grants more.
                pass
            else:
                renewed = self._visitors.sign(checked.visitor_id) if checked.due else None
                return WebIdentity(PlatformUser(PLATFORM, checked.visitor_id), anonymous=True, cookie=renewed)
        if not mint:
            return None
        minted = self._visitors.mint()
        # Another origin's request never sets the cookie: it would replace the real visitor's.
        return WebIdentity(
            minted.user, anonymous=True, visitor_token=minted.visitor_token, minted=True,
            cookie=minted.visitor_token if trusted else None,
        )  # fmt: skip

    def remember(self, response: web.StreamResponse, identity: WebIdentity) -> None:
        """Set the visitor cookie when there is one to (re)set (a new visitor, a renewal)."""
        if identity.cookie is None:
            return
        response.set_cookie(
            VISITOR_COOKIE,
            identity.cookie,
            max_age=self._visitors.ttl_seconds,
            httponly=True,
            samesite="Lax",
            secure=self._secure_cookie,
            path="/",
        )
