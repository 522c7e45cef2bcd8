"""Which requests the visitor cookie counts for, and how visitor tokens age (docs/security.md),
against a real running gateway with aiohttp playing the browser: it sends the ``Origin`` and
``Sec-Fetch-Site`` headers a browser would, and the cookie a browser sends to every origin of
the same site (SameSite=Lax)."""

from __future__ import annotations

import time

import aiohttp
import pytest
from itsdangerous import Signer, TimestampSigner

import gateway
from adapters.web.identity import LEGACY_VISITOR_SALT, VISITOR_COOKIE, VISITOR_SALT, VisitorTokens, normalized_origin
from adapters.web.testing import base_url, running_gateway

LISTED = "https://shop.example.com"
DAY = 24 * 3600


def make_app() -> gateway.App:
    app = gateway.App("origin")

    @app.message()
    async def whoami(session: gateway.Session, msg: gateway.Message) -> None:
        await session.reply(f"user {session.user.id}")

    return app


@pytest.fixture
async def gw(tmp_path):
    async with running_gateway(make_app(), tmp_path, web={"allowed_origins": [LISTED]}) as gw:
        yield gw


def secret_of(gw) -> str:
    return gw.settings.resolved_secret_key()


class BackdatedSigner(TimestampSigner):
    """Signs as if it were ``age`` seconds ago: how a token minted long ago looks."""

    def __init__(self, secret: str, age: float) -> None:
        super().__init__(secret, salt=VISITOR_SALT)
        self.age = age

    def get_timestamp(self) -> int:
        return int(time.time() - self.age)


async def hello(ws: aiohttp.ClientWebSocketResponse, session_id: str | None = None) -> dict:
    await ws.send_json({"type": "hello", "id": "h", "session_id": session_id})
    while True:
        frame = await ws.receive_json(timeout=5)
        if frame["type"] in ("ready", "error"):
            return frame


async def say(ws: aiohttp.ClientWebSocketResponse, text: str, frame_id: str = "m") -> str:
    await ws.send_json({"type": "message", "id": frame_id, "text": text})
    while True:
        frame = await ws.receive_json(timeout=5)
        if frame["type"] == "message" and frame["message"]["role"] == "assistant":
            return frame["message"]["text"]


async def victim(http: aiohttp.ClientSession, gw) -> tuple[str, str, str]:
    """A visitor of the gateway's own page: (cookie value, their session id, their user id)."""
    async with http.get(f"{base_url(gw)}/api/widget/identity") as response:
        cookie = response.cookies[VISITOR_COOKIE].value
    own = {"Origin": base_url(gw), "Cookie": f"{VISITOR_COOKIE}={cookie}"}
    async with http.ws_connect(f"{base_url(gw)}/ws", headers=own) as ws:
        ready = await hello(ws)
        reply = await say(ws, "who am I?")
    return cookie, ready["session_id"], reply.removeprefix("user ")


def attacker_origin(gw) -> str:
    """Another port of the gateway's host: the same site, another origin."""
    return f"http://127.0.0.1:{gw.port - 1}"


async def test_another_origin_of_the_same_site_gets_a_fresh_visitor_not_the_cookie(tmp_path):
    # The default web.allowed_origins = []: any origin may open the socket (embeds on any site).
    async with running_gateway(make_app(), tmp_path) as gw, aiohttp.ClientSession() as http:
        cookie, session_id, user_id = await victim(http, gw)
        # A page on another port of the same host: the browser sends the Lax cookie along.
        stolen = {"Origin": attacker_origin(gw), "Cookie": f"{VISITOR_COOKIE}={cookie}"}
        async with http.ws_connect(f"{base_url(gw)}/ws", headers=stolen) as ws:
            assert VISITOR_COOKIE not in ws._response.cookies  # the victim's cookie is left alone
            ready = await hello(ws)
            assert ready["visitor_token"] and ready["visitor_token"] != cookie
            assert ready["user"]["id"] is None  # a new visitor, not the victim
            assert (await hello(ws, session_id))["code"] == "not_found"
            assert await say(ws, "who am I?", "m2") != f"user {user_id}"
        # Nor can that page upload into the victim's session with the cookie.
        form = aiohttp.FormData()
        form.add_field("session_id", session_id)
        form.add_field("file", b"x", filename="x.txt", content_type="text/plain")
        async with http.post(f"{base_url(gw)}/upload", data=form, headers=stolen) as response:
            assert response.status == 401


async def test_with_allowed_origins_set_other_origins_are_refused(gw):
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(f"{base_url(gw)}/ws", headers={"Origin": attacker_origin(gw)})
        assert refused.value.status == 403


async def test_the_own_origin_and_listed_origins_keep_the_cookie_but_never_read_it(gw):
    async with aiohttp.ClientSession() as http:
        cookie, session_id, user_id = await victim(http, gw)
        for origin in (base_url(gw), LISTED, LISTED + "/"):
            headers = {"Origin": origin, "Cookie": f"{VISITOR_COOKIE}={cookie}"}
            async with http.ws_connect(f"{base_url(gw)}/ws", headers=headers) as ws:
                ready = await hello(ws, session_id)
                assert ready["type"] == "ready" and ready["user"]["id"] == user_id
                assert ready["visitor_token"] is None  # the HttpOnly cookie's value never reaches script
        # Requests without Origin: a same-origin GET sends Sec-Fetch-Site: same-origin; another
        # site's <img> or <script> sends same-site or cross-site.
        for fetch_site, known in (("same-origin", True), ("none", True), ("same-site", False), ("cross-site", False)):
            headers = {"Sec-Fetch-Site": fetch_site, "Cookie": f"{VISITOR_COOKIE}={cookie}"}
            async with http.get(f"{base_url(gw)}/api/widget/identity", headers=headers) as response:
                body = await response.json()
            assert (body["user"]["id"] == user_id) is known, fetch_site
            assert body["visitor_token"] != cookie


async def test_the_public_url_is_the_gateways_own_origin_behind_a_proxy(tmp_path):
    public = "https://chat.example.com"
    async with running_gateway(make_app(), tmp_path, server={"public_url": public}) as gw:
        async with aiohttp.ClientSession() as http:
            cookie, session_id, user_id = await victim(http, gw)
            headers = {"Origin": public, "Cookie": f"{VISITOR_COOKIE}={cookie}"}
            async with http.ws_connect(f"{base_url(gw)}/ws", headers=headers) as ws:
                assert (await hello(ws, session_id))["user"]["id"] == user_id
            headers["Origin"] = "https://evil.example.com"
            async with http.ws_connect(f"{base_url(gw)}/ws", headers=headers) as ws:
                assert (await hello(ws, session_id))["code"] == "not_found"


def test_origins_compare_without_default_ports_or_case():
    assert normalized_origin("HTTPS://Shop.Example.com:443") == "https://shop.example.com"
    assert normalized_origin("http://127.0.0.1:8080/") == "http://127.0.0.1:8080"
    assert normalized_origin("null") is None and normalized_origin("") is None


def test_visitor_tokens_expire_and_are_due_for_renewal_in_use():
    tokens = VisitorTokens("k" * 32, ttl_seconds=30 * DAY)
    fresh = tokens.mint()
    assert not tokens.check(fresh.visitor_token).due
    old = BackdatedSigner("k" * 32, 4 * DAY).sign(fresh.user.id).decode()
    checked = tokens.check(old)
    assert checked.visitor_id == fresh.user.id and checked.due
    renewed = tokens.verify(old)
    assert renewed.visitor_token != old and not tokens.check(renewed.visitor_token).due
    expired = BackdatedSigner("k" * 32, 31 * DAY).sign(fresh.user.id).decode()
    with pytest.raises(Exception, match="expired"):
        tokens.check(expired)


async def test_an_old_visitor_token_is_renewed_on_the_socket_and_in_the_cookie(gw):
    secret = secret_of(gw)
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{base_url(gw)}/ws") as ws:
            ready = await hello(ws)
            await say(ws, "hi")
        visitor_id = VisitorTokens(secret).check(ready["visitor_token"]).visitor_id
        old = BackdatedSigner(secret, 5 * DAY).sign(visitor_id).decode()
        async with http.ws_connect(f"{base_url(gw)}/ws", params={"visitor": old}) as ws:
            again = await hello(ws, ready["session_id"])
        assert again["type"] == "ready" and again["visitor_token"] not in (None, old)
        assert VisitorTokens(secret).check(again["visitor_token"]).visitor_id == visitor_id
        # The same token as a cookie: the handshake sets a renewed cookie, ready names no token.
        headers = {"Origin": base_url(gw), "Cookie": f"{VISITOR_COOKIE}={old}"}
        async with http.ws_connect(f"{base_url(gw)}/ws", headers=headers) as ws:
            renewed = ws._response.cookies[VISITOR_COOKIE]
            assert renewed.value != old and renewed["httponly"]
            assert int(renewed["max-age"]) == gw.settings.web.visitor_ttl_seconds
            cookie_ready = await hello(ws, ready["session_id"])
            assert cookie_ready["type"] == "ready" and cookie_ready["visitor_token"] is None


async def test_an_expired_visitor_token_is_refused_and_an_expired_cookie_replaced(gw):
    secret = secret_of(gw)
    expired = BackdatedSigner(secret, gw.settings.web.visitor_ttl_seconds + 60).sign("anon-old").decode()
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{base_url(gw)}/ws", params={"visitor": expired}) as ws:
            frame = await ws.receive_json(timeout=5)
            assert frame["code"] == "unauthorized" and "expired" in frame["message"]
        headers = {"Origin": base_url(gw), "Cookie": f"{VISITOR_COOKIE}={expired}"}
        async with http.ws_connect(f"{base_url(gw)}/ws", headers=headers) as ws:
            assert ws._response.cookies[VISITOR_COOKIE].value != expired
            assert (await hello(ws))["type"] == "ready"


async def test_tokens_from_before_expiry_are_accepted_once_and_replaced(tmp_path):
    async with running_gateway(make_app(), tmp_path) as gw, aiohttp.ClientSession() as http:
        legacy = Signer(secret_of(gw), salt=LEGACY_VISITOR_SALT).sign("anon-from-2025").decode()
        async with http.ws_connect(f"{base_url(gw)}/ws", params={"visitor": legacy}) as ws:
            ready = await hello(ws)
        assert VisitorTokens(secret_of(gw)).check(ready["visitor_token"]).visitor_id == "anon-from-2025"
    async with running_gateway(make_app(), tmp_path / "strict", web={"legacy_visitor_tokens": False}) as gw:
        legacy = Signer(secret_of(gw), salt=LEGACY_VISITOR_SALT).sign("anon-from-2025").decode()
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(f"{base_url(gw)}/ws", params={"visitor": legacy}) as ws:
                assert (await ws.receive_json(timeout=5))["code"] == "unauthorized"
