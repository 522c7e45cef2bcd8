"""Who a widget request comes from: anonymous visitors (signed ids) and host-site tokens (HS256
JWTs), on every surface that takes an identity, against a real running gateway."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import aiohttp
import jwt
import pytest

import gateway
from adapters.web.identity import IdentityRefused, VisitorTokens, verify_host_token
from adapters.web.testing import base_url, identity_token, running_gateway

SECRET = "host-site-secret-of-at-least-32-bytes!"


def test_visitor_tokens_round_trip_and_refuse_tampering():
    tokens = VisitorTokens("server-key")
    minted = tokens.mint()
    assert minted.minted and minted.user.platform == "web" and minted.user.id.startswith("anon-")
    again = tokens.verify(minted.visitor_token)
    assert again.user.id == minted.user.id and not again.minted
    with pytest.raises(IdentityRefused):
        tokens.verify(minted.visitor_token[:-2] + "xx")
    with pytest.raises(IdentityRefused):
        VisitorTokens("another-key").verify(minted.visitor_token)
    with pytest.raises(IdentityRefused):
        tokens.verify("garbage")


def test_host_tokens_carry_sub_email_and_org():
    user = verify_host_token(identity_token(SECRET, "u-42", email="ada@example.com", org="acme"), SECRET)
    assert (user.platform, user.id, user.email, user.org_id) == ("web", "u-42", "ada@example.com", "acme")


def hs512_token(claims: dict, secret: str) -> str:
    """A correctly signed HS512 token, built by hand (PyJWT warns about the key length)."""

    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = part(json.dumps({"alg": "HS512", "typ": "JWT"}).encode()) + "." + part(json.dumps(claims).encode())
    return head + "." + part(hmac.new(secret.encode(), head.encode(), hashlib.sha512).digest())


@pytest.mark.parametrize(
    "token",
    [
        identity_token("wrong-secret-also-at-least-32-bytes", "u-1"),
        identity_token(SECRET, "u-1", ttl=-120),
        jwt.encode({"sub": "u-1"}, SECRET, algorithm="HS256"),  # no exp
        jwt.encode({"exp": int(time.time()) + 60}, SECRET, algorithm="HS256"),  # no sub
        hs512_token({"sub": "u-1", "exp": int(time.time()) + 60}, SECRET),
        jwt.encode({"sub": "u-1", "exp": int(time.time()) + 60}, None, algorithm="none"),
        "not.a.token",
    ],
    ids=["forged", "expired", "no-exp", "no-sub", "other-alg", "alg-none", "garbage"],
)
def test_bad_host_tokens_are_refused(token):
    with pytest.raises(IdentityRefused):
        verify_host_token(token, SECRET)


def test_tokens_are_refused_when_no_secret_is_configured():
    with pytest.raises(IdentityRefused, match="identity_secret"):
        verify_host_token(identity_token(SECRET, "u-1"), None)


def make_app() -> gateway.App:
    app = gateway.App("who")

    @app.message()
    async def whoami(session: gateway.Session, msg: gateway.Message) -> None:
        user = session.user
        await session.reply(f"{user.email}|{user.org_id}|{user.id}")

    return app


@pytest.fixture
async def gw(tmp_path):
    async with running_gateway(make_app(), tmp_path, web={"identity_secret": SECRET}) as gw:
        yield gw


async def ask(http: aiohttp.ClientSession, gw, text: str, **params: str) -> tuple[dict, str]:
    async with http.ws_connect(f"{base_url(gw)}/ws", params=params) as ws:
        await ws.send_json({"type": "hello", "id": "h", "session_id": None})
        ready = await ws.receive_json(timeout=5)
        await ws.send_json({"type": "message", "id": "m", "text": text})
        while True:
            frame = await ws.receive_json(timeout=5)
            if frame["type"] == "message" and frame["message"]["role"] == "assistant":
                return ready, frame["message"]["text"]


async def test_a_host_token_becomes_session_user(gw):
    token = identity_token(SECRET, "u-42", email="ada@example.com", org="acme")
    async with aiohttp.ClientSession() as http:
        ready, reply = await ask(http, gw, "who?", token=token)
        assert ready["visitor_token"] is None
        assert ready["user"]["email"] == "ada@example.com" and ready["user"]["org_id"] == "acme"
        assert reply == f"ada@example.com|acme|{ready['user']['id']}"
        # The same sub is the same chatgate user next time.
        again, _ = await ask(http, gw, "who?", token=identity_token(SECRET, "u-42"))
        assert again["user"]["id"] == ready["user"]["id"]


async def test_forged_and_expired_tokens_close_the_socket(gw):
    async with aiohttp.ClientSession() as http:
        for token in (
            identity_token("a-forged-secret-of-at-least-32-bytes", "u-1"),
            identity_token(SECRET, "u-1", ttl=-60),
        ):
            async with http.ws_connect(f"{base_url(gw)}/ws", params={"token": token}) as ws:
                frame = await ws.receive_json(timeout=5)
                assert frame["type"] == "error" and frame["code"] == "unauthorized"
                closing = await ws.receive(timeout=5)
                assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
                assert ws.close_code == 4401
        async with http.get(f"{base_url(gw)}/api/widget/identity", params={"visitor": "anon-x.forged"}) as response:
            assert response.status == 401
            assert (await response.json())["error"]["code"] == "unauthorized"


async def test_anonymous_visitors_keep_their_id_and_only_see_their_sessions(gw):
    async with aiohttp.ClientSession() as http:
        ready, _ = await ask(http, gw, "hi")
        token = ready["visitor_token"]
        assert ready["user"]["id"] is None  # stored with the first message, after ready
        again, _ = await ask(http, gw, "hi", visitor=token)
        third, _ = await ask(http, gw, "hi", visitor=token)
        assert again["user"]["id"] and third["user"]["id"] == again["user"]["id"]
        # Another visitor cannot open the first one's session, nor upload into it.
        async with http.ws_connect(f"{base_url(gw)}/ws") as ws:
            await ws.send_json({"type": "hello", "id": "h", "session_id": ready["session_id"]})
            frame = await ws.receive_json(timeout=5)
            assert frame["type"] == "error" and frame["code"] == "not_found"
            # ... and a host-site user cannot either.
        token_user = identity_token(SECRET, "u-9")
        async with http.ws_connect(f"{base_url(gw)}/ws", params={"token": token_user}) as ws:
            await ws.send_json({"type": "hello", "id": "h", "session_id": ready["session_id"]})
            assert (await ws.receive_json(timeout=5))["code"] == "not_found"
        stranger = (await (await http.get(f"{base_url(gw)}/api/widget/identity")).json())["visitor_token"]
        form = aiohttp.FormData()
        form.add_field("session_id", ready["session_id"])
        form.add_field("file", b"x", filename="x.txt", content_type="text/plain")
        async with http.post(f"{base_url(gw)}/upload", data=form, params={"visitor": stranger}) as response:
            assert response.status == 404


async def test_a_stale_cookie_is_replaced_not_refused(gw):
    async with aiohttp.ClientSession() as http:
        stale = {"chatgate_uid": VisitorTokens("an-old-secret-key").mint().visitor_token}
        async with http.get(f"{base_url(gw)}/api/widget/identity", cookies=stale) as response:
            assert response.status == 200
            fresh = response.cookies["chatgate_uid"].value
        assert fresh != stale["chatgate_uid"]
        cookie_header = {"Cookie": f"chatgate_uid={stale['chatgate_uid']}"}
        async with http.ws_connect(f"{base_url(gw)}/ws", headers=cookie_header) as ws:
            await ws.send_json({"type": "hello", "id": "h", "session_id": None})
            assert (await ws.receive_json(timeout=5))["type"] == "ready"


async def test_the_page_sets_the_visitor_cookie(gw):
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base_url(gw)}/") as response:
            if response.status == 404:  # the widget's files are another engineer's; the cookie is ours
                pytest.skip("adapters/web/static/index.html is not written yet")
            cookie = response.cookies["chatgate_uid"]
            assert cookie["httponly"] and cookie["samesite"] == "Lax"


async def test_app_endpoints_know_widget_users(tmp_path):
    """@app.endpoint sees a host-token user as authenticated, a visitor as known but anonymous."""
    import aiohttp
    import jwt

    import gateway
    from adapters.web.testing import running_gateway

    app = gateway.App("who")

    @app.endpoint("GET", "/me", authorized=False)
    async def me(ctx: gateway.RequestContext):
        return {"user": ctx.user.id, "email": ctx.user.email, "authenticated": ctx.authenticated}

    @app.endpoint("GET", "/private")
    async def private(ctx):
        return {"ok": ctx.user.email}

    async with running_gateway(app, tmp_path, web={"identity_secret": "host-secret-of-at-least-32-bytes!!"}) as gw:
        base = f"http://127.0.0.1:{gw.port}"
        claims = {"sub": "ada", "email": "ada@example.com", "exp": int(time.time()) + 600}
        token = jwt.encode(claims, "host-secret-of-at-least-32-bytes!!", "HS256")
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            async with http.get(f"{base}/me", params={"token": token}) as r:
                body = await r.json()
                assert body["email"] == "ada@example.com" and body["authenticated"] is True
            async with http.get(f"{base}/private", params={"token": token}) as r:
                assert (await r.json()) == {"ok": "ada@example.com"}
            async with http.get(f"{base}/api/widget/identity") as r:
                assert r.status == 200  # sets the visitor cookie
            async with http.get(f"{base}/me") as r:
                body = await r.json()
                assert body["user"] != "anonymous" and body["authenticated"] is False
            async with http.get(f"{base}/private") as r:
                assert r.status == 401
            async with http.get(f"{base}/me", params={"token": "forged.token.value"}) as r:
                assert (await r.json())["authenticated"] is False


def test_host_tokens_valid_for_too_long_are_refused():
    claims = {"sub": "u-1", "exp": int(time.time()) + 100 * 365 * 24 * 3600}
    with pytest.raises(IdentityRefused, match="identity_token_max_lifetime"):
        verify_host_token(jwt.encode(claims, SECRET, algorithm="HS256"), SECRET)
    hour = {"sub": "u-1", "exp": int(time.time()) + 3600}
    assert verify_host_token(jwt.encode(hour, SECRET, algorithm="HS256"), SECRET, max_lifetime=3600).id == "u-1"
    with pytest.raises(IdentityRefused, match="too long"):
        verify_host_token(jwt.encode(hour, SECRET, algorithm="HS256"), SECRET, max_lifetime=600)


def test_a_host_sub_cannot_name_an_anonymous_visitor():
    visitor = VisitorTokens("k" * 32).mint()
    forged_sub = identity_token(SECRET, visitor.user.id)
    with pytest.raises(IdentityRefused, match="anon-"):
        verify_host_token(forged_sub, SECRET)


async def test_long_lived_and_visitor_named_host_tokens_close_the_socket(tmp_path):
    web = {"identity_secret": SECRET, "identity_token_max_lifetime": 600}
    async with running_gateway(make_app(), tmp_path, web=web) as gw, aiohttp.ClientSession() as http:
        # A visitor's conversation, then a host token that names that visitor's id as its sub.
        async with http.ws_connect(f"{base_url(gw)}/ws") as ws:
            await ws.send_json({"type": "hello", "id": "h", "session_id": None})
            ready = await ws.receive_json(timeout=5)
        visitor_id = VisitorTokens(gw.settings.resolved_secret_key()).check(ready["visitor_token"]).visitor_id
        for token in (identity_token(SECRET, "u-1", ttl=3600), identity_token(SECRET, visitor_id)):
            async with http.ws_connect(f"{base_url(gw)}/ws", params={"token": token}) as ws:
                frame = await ws.receive_json(timeout=5)
                assert frame["code"] == "unauthorized"
                await ws.receive(timeout=5)
                assert ws.close_code == 4401
        short_lived = identity_token(SECRET, "u-1", ttl=300)
        async with http.ws_connect(f"{base_url(gw)}/ws", params={"token": short_lived}) as ws:
            await ws.send_json({"type": "hello", "id": "h", "session_id": None})
            assert (await ws.receive_json(timeout=5))["type"] == "ready"
