"""Who is on the other end of a widget request: an anonymous visitor or a host site's user.

Anonymous visitors get a random id signed with the gateway's secret key (itsdangerous), kept in
a cookie or, where cookies do not reach (the widget embedded on another site), as a visitor
token the widget stores itself. A host site that knows its user signs an HS256 JWT with
``web.identity_secret``; its ``sub``, ``email`` and ``org`` become ``session.user``.
A credential that is present but wrong is refused, never downgraded to anonymous.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import jwt
from aiohttp import web
from itsdangerous import BadSignature, Signer

from gateway.config import Settings
from gateway.inbound import PlatformUser

VISITOR_COOKIE = "chatgate_uid"
COOKIE_MAX_AGE = 365 * 24 * 3600
"""A visitor keeps their conversations for a year of inactivity."""
VISITOR_SALT = "chatgate.web.visitor"
VISITOR_PREFIX = "anon-"
TOKEN_ALGORITHMS = ["HS256"]
TOKEN_REQUIRED_CLAIMS = ["sub", "exp"]
TOKEN_LEEWAY_SECONDS = 10
"""Clock skew tolerated between the host site and the gateway."""
PLATFORM = "web"


class IdentityRefused(Exception):
    """A token or visitor id was presented but does not verify. The message is for the caller."""


@dataclass(frozen=True)
class WebIdentity:
    """The caller. ``visitor_token`` is set for anonymous visitors (so the client can keep it);
    ``minted`` says the visitor is new in this request (set the cookie)."""

    user: PlatformUser
    visitor_token: str | None = None
    minted: bool = False

    @property
    def anonymous(self) -> bool:
        return self.visitor_token is not None


class VisitorTokens:
    """Signs and checks anonymous visitor ids. Not time-limited: the id must stay stable."""

    def __init__(self, secret_key: str) -> None:
        self._signer = Signer(secret_key, salt=VISITOR_SALT)

    def mint(self) -> WebIdentity:
        visitor_id = VISITOR_PREFIX + secrets.token_urlsafe(16)
        token = self._signer.sign(visitor_id).decode()
        return WebIdentity(PlatformUser(PLATFORM, visitor_id), visitor_token=token, minted=True)

    def verify(self, token: str) -> WebIdentity:
        try:
            visitor_id = self._signer.unsign(token).decode()
        except BadSignature:
            raise IdentityRefused("the visitor id's signature is not valid") from None
        if not visitor_id.startswith(VISITOR_PREFIX):
            raise IdentityRefused("the visitor id is not valid")
        return WebIdentity(PlatformUser(PLATFORM, visitor_id), visitor_token=token)


def verify_host_token(token: str, secret: str | None) -> PlatformUser:
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
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise IdentityRefused("the identity token's sub claim must be a non-empty string")
    email = claims.get("email")
    org = claims.get("org")
    return PlatformUser(
        PLATFORM,
        sub,
        email=email if isinstance(email, str) and email else None,
        name=claims.get("name") if isinstance(claims.get("name"), str) else None,
        org_id=org if isinstance(org, str) and org else None,
    )


class IdentityResolver:
    """Reads a request's identity in the documented order: ``token``, ``visitor``, cookie."""

    def __init__(self, settings: Settings) -> None:
        self._identity_secret = settings.web.identity_secret
        self._visitors = VisitorTokens(settings.resolved_secret_key())
        self._secure_cookie = settings.server.base_url().startswith("https://")

    def resolve(self, request: web.BaseRequest, *, mint: bool) -> WebIdentity | None:
        """The caller's identity; a new visitor when there is none and ``mint``, else ``None``.

        Raises :class:`IdentityRefused` for a forged or expired credential.
        """
        token = request.query.get("token")
        if token:
            return WebIdentity(verify_host_token(token, self._identity_secret))
        visitor = request.query.get("visitor")
        if visitor:
            return self._visitors.verify(visitor)
        cookie = request.cookies.get(VISITOR_COOKIE)
        if cookie:
            try:
                return self._visitors.verify(cookie)
            except IdentityRefused:
                # An HttpOnly cookie the page cannot clear (the secret key changed): replace it
                # with a new visitor rather than lock the page out. It never grants more.
                pass
        return self._visitors.mint() if mint else None

    def remember(self, response: web.StreamResponse, identity: WebIdentity) -> None:
        """Set the visitor cookie (for anonymous identities; a JWT is the host site's to keep)."""
        if identity.visitor_token is None:
            return
        response.set_cookie(
            VISITOR_COOKIE,
            identity.visitor_token,
            max_age=COOKIE_MAX_AGE,
            httponly=True,
            samesite="Lax",
            secure=self._secure_cookie,
            path="/",
        )
