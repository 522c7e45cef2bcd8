"""Integrations end to end: a real Gateway (TestClient, HTTP on a loopback port), the local OAuth 2
server of tests/fakes/oauth_server.py, and a real HTTP client driving the connect pages the way a
browser does (GET the page, submit its form, follow the redirects)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import aiohttp
import pytest
from cryptography.fernet import Fernet, InvalidToken

import gateway
from gateway.inbound import PlatformUser
from gateway.integrations.crypto import generate_key
from gateway.testing import Conversation, TestClient, Turn
from gateway.types import IntegrationDeclined, IntegrationTimeout
from tests.fakes.oauth_server import FakeOAuthServer
from tests.support import until

API_KEY = "test-api-key"
CLIENT_ID = "chatgate-test-client"
CLIENT_SECRET = "s3cret-of-the-client"


# -- a browser, as far as the connect pages need one ---------------------------------------


class Forms(HTMLParser):
    """The forms of a page: ``[{"action": ..., "method": ..., "inputs": {name: value}}]``."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, Any]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append({"action": values.get("action", ""), "method": values.get("method", "get"),
                               "inputs": {}})
        elif tag == "input" and self.forms and values.get("name"):
            self.forms[-1]["inputs"][values["name"]] = values.get("value", "")


def forms_of(html: str) -> list[dict[str, Any]]:
    parser = Forms()
    parser.feed(html)
    return parser.forms


class Browser:
    def __init__(self, http: aiohttp.ClientSession) -> None:
        self.http = http

    async def get(self, url: str) -> tuple[int, str, str]:
        async with self.http.get(url) as response:
            return response.status, await response.text(), str(response.url)

    async def submit(self, page_url: str, html: str, *, index: int = 0, **fields: str) -> tuple[int, str, str]:
        """Submit the page's ``index``-th form (with ``fields`` filled in), following redirects."""
        form = forms_of(html)[index]
        data = {**form["inputs"], **fields}
        async with self.http.post(urljoin(page_url, form["action"]), data=data) as response:
            return response.status, await response.text(), str(response.url)


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture
async def oauth() -> AsyncIterator[FakeOAuthServer]:
    async with FakeOAuthServer() as server:
        yield server


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with aiohttp.ClientSession() as http:
        yield Browser(http)


def providers_for(oauth: FakeOAuthServer, **acme: Any) -> dict[str, Any]:
    return {
        "acme": {
            "title": "Acme Code",
            "authorize_url": f"{oauth.base_url}/authorize",
            "token_url": f"{oauth.base_url}/token",
            "revoke_url": f"{oauth.base_url}/revoke",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "scopes": ["repo", "read:user"],
            **acme,
        },
        "vault": {
            "title": "Vault",
            "fields": [
                {"name": "api_key", "label": "API key", "pattern": r"sk-[A-Za-z0-9]{8,}", "help": "starts with sk-"},
                {"name": "region", "label": "Region", "secret": False, "required": False},
            ],
        },
        "teamcode": {
            "authorize_url": f"{oauth.base_url}/authorize",
            "token_url": f"{oauth.base_url}/token",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "owner_scoped": True,
        },
    }


def build_app(oauth: FakeOAuthServer, *, timeout: float = 5.0) -> gateway.App:
    app = gateway.App("int-test")

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        kind = msg.text.split()[0] if msg.text else "acme"
        try:
            credentials = await session.require_integration(kind, reason="to read your code", timeout=timeout)
        except IntegrationDeclined:
            await session.reply("declined")
            return
        except IntegrationTimeout:
            await session.reply("timed out")
            return
        if credentials.fields:
            await session.reply(f"fields {sorted(credentials.fields.items())}")
            return
        async with aiohttp.ClientSession() as http, http.get(
            f"{oauth.base_url}/userinfo", headers={"Authorization": f"Bearer {credentials.access_token}"}
        ) as response:
            body = await response.json()
        await session.reply(f"hello {body.get('login', '?')} with {credentials.access_token}")

    @app.message("card")
    async def card(session: gateway.Session, msg: gateway.Message) -> None:
        await session.show_integration("acme", reason="when you like")

    return app


def make_client(tmp_path: Any, oauth: FakeOAuthServer, *, app: gateway.App | None = None,
                key: str | None = None, database_url: str | None = None, **integrations: Any) -> TestClient:
    settings = {"encryption_key": key or generate_key(), "providers": providers_for(oauth), **integrations}
    return TestClient(app or build_app(oauth), tmp_path, database_url=database_url, integrations=settings,
                      web={"api_keys": [API_KEY]})


async def connected(client: TestClient, oauth: FakeOAuthServer) -> TestClient:
    """Register the gateway's callback with the provider (its port is known once it runs)."""
    for name in ("acme", "teamcode"):
        oauth.register(CLIENT_ID, CLIENT_SECRET, client.gateway.integrations.redirect_uri(name))
    oauth.clients[CLIENT_ID].redirect_uris = [
        client.gateway.integrations.redirect_uri("acme"), client.gateway.integrations.redirect_uri("teamcode")
    ]
    return client


def prompt_of(turn: Turn) -> dict[str, Any]:
    return turn.block("integration_prompt")["payload"]


def latest_block(conversation: Conversation, block_type: str) -> dict[str, Any]:
    for item in reversed(conversation.sent):
        if item.block and item.block["type"] == block_type:
            return item.block["payload"]
    raise AssertionError(f"no {block_type} block")


async def connect_via_oauth(browser: Browser, connect_url: str) -> tuple[int, str, str]:
    status, page, url = await browser.get(connect_url)
    assert status == 200, page
    return await browser.submit(url, page)


# -- the whole OAuth flow --------------------------------------------------------------------


async def test_oauth_flow_from_a_web_chat(
    tmp_path: Any, oauth: FakeOAuthServer, browser: Browser, database_url: str
) -> None:
    async with make_client(tmp_path, oauth, database_url=database_url) as client:
        await connected(client, oauth)
        chat = await client.conversation("alice")
        turn = await chat.send("acme")
        assert turn.replies == ["to read your code"]
        card = prompt_of(turn)
        assert card["mode"] == "oauth" and card["blocking"] is True and card["title"] == "Acme Code"
        assert card["connect_url"].startswith(f"{client.gateway.public_url}/integrations/acme/connect?state=")

        status, page, url = await browser.get(card["connect_url"])
        assert status == 200 and "Continue to Acme Code" in page and "repo, read:user" in page
        assert (await browser.get(card["connect_url"]))[0] == 200  # a link preview's GET changes nothing
        assert oauth.authorize_requests == []
        status, page, url = await browser.submit(url, page)
        assert status == 200, page
        assert "Acme Code connected" in page
        assert url.startswith(client.gateway.integrations.redirect_uri("acme"))

        await until(lambda: turn.ended)
        assert turn.error is None
        reply = turn.replies[-1]
        assert reply.startswith("hello octocat with ")
        token = reply.rsplit(" ", 1)[1]
        assert oauth.token_is_valid(token)
        assert latest_block(chat, "integration_prompt")["completed"] is True

        # PKCE: the authorize request carried an S256 challenge, the token request its verifier.
        authorize = oauth.authorize_requests[-1]
        assert authorize["code_challenge_method"] == "S256" and authorize["scope"] == "repo read:user"
        assert oauth.token_requests[-1]["grant_type"] == "authorization_code"
        assert len(oauth.token_requests[-1]["code_verifier"]) >= 43

        # Connected once: the next turn has it without asking.
        again = await chat.send("acme")
        assert again.blocks == [] and again.replies == [f"hello octocat with {token}"]


async def test_oauth_flow_from_a_telegram_chat(tmp_path: Any, oauth: FakeOAuthServer, browser: Browser) -> None:
    async with make_client(tmp_path, oauth) as client:
        await connected(client, oauth)
        telegram = await client.conversation("bob", channel="telegram")
        assert telegram.channel.chat_id is not None
        turn = await telegram.send("acme")
        card = prompt_of(turn)
        assert card["connect_url"].startswith("http://127.0.0.1:")

        status, page, _ = await connect_via_oauth(browser, card["connect_url"])
        assert status == 200 and "Acme Code connected" in page
        await until(lambda: turn.ended)
        assert turn.replies[-1].startswith("hello octocat with ")

        # The credentials belong to the user, not the chat: the same user on the web has them.
        web = await client.conversation("bob")
        later = await web.send("acme")
        assert later.blocks == [] and later.replies[-1] == turn.replies[-1]
        # ...and another user does not.
        other = await client.conversation("carol")
        theirs = await other.send("acme")
        assert prompt_of(theirs)["blocking"] is True
        await other.stop()


async def test_owner_scoped_provider_is_shared_by_the_org(
    tmp_path: Any, oauth: FakeOAuthServer, browser: Browser
) -> None:
    async with make_client(tmp_path, oauth) as client:
        await connected(client, oauth)
        first = await client.conversation("dana", org_id="acme-corp")
        turn = await first.send("teamcode")
        await connect_via_oauth(browser, prompt_of(turn)["connect_url"])
        await until(lambda: turn.ended)
        colleague = await client.conversation("erin", org_id="acme-corp")
        theirs = await colleague.send("teamcode")
        assert theirs.blocks == [] and theirs.replies[-1] == turn.replies[-1]
        outsider = await client.conversation("frank", org_id="other-corp")
        assert prompt_of(await outsider.send("teamcode"))["blocking"] is True
        await outsider.stop()


# -- refresh ---------------------------------------------------------------------------------


async def test_tokens_are_refreshed_before_they_expire(
    tmp_path: Any, oauth: FakeOAuthServer, browser: Browser, database_url: str
) -> None:
    oauth.expires_in = 600
    async with make_client(tmp_path, oauth, refresh_margin_seconds=60, database_url=database_url) as client:
        await connected(client, oauth)
        chat = await client.conversation("alice")
        turn = await chat.send("acme")
        await connect_via_oauth(browser, prompt_of(turn)["connect_url"])
        await until(lambda: turn.ended)
        first_token = turn.replies[-1].rsplit(" ", 1)[1]
        service = client.gateway.integrations
        user = await client.gateway.store.users.get(
            (await client.gateway.store.sessions.get(chat.session_id)).user_id  # type: ignore[union-attr]
        )
        assert user is not None
        requests_before = len(oauth.token_requests)
        unchanged = await service.credentials_for(user, "acme")
        assert unchanged is not None and unchanged.access_token == first_token
        assert len(oauth.token_requests) == requests_before  # fresh: no refresh

        # Ten minutes left is now "about to expire": the next read refreshes.
        client.gateway.settings.integrations.refresh_margin_seconds = 900
        first_refresh = oauth.token_requests[-1]
        refreshed = await service.credentials_for(user, "acme")
        assert refreshed is not None and refreshed.access_token != first_token
        assert oauth.token_requests[-1]["grant_type"] == "refresh_token"
        assert oauth.token_requests[-1]["refresh_token"] not in (None, first_refresh.get("refresh_token"))
        assert oauth.token_is_valid(refreshed.access_token)
        assert refreshed.expires_at > time.time() + 500
        assert refreshed.scopes == ["repo", "read:user"]

        # A turn gets the refreshed token through session.integrations (all_for) too; the
        # rotated refresh token was stored, so refreshing again works.
        again = await chat.send("acme")
        latest = again.replies[-1].rsplit(" ", 1)[1]
        assert latest not in (first_token, refreshed.access_token) and oauth.token_is_valid(latest)

        # Concurrent reads refresh once, not once each (the renewed token is fresh for longer).
        oauth.expires_in = 3600
        before = len(oauth.token_requests)
        results = await asyncio.gather(*(service.credentials_for(user, "acme") for _ in range(5)))
        assert len({r.access_token for r in results if r}) == 1
        assert len(oauth.token_requests) - before == 1

        # The provider revoked the grant: the credentials are dropped and the user is asked again.
        oauth.refresh_tokens.clear()
        client.gateway.settings.integrations.refresh_margin_seconds = 7200
        assert await service.credentials_for(user, "acme") is None
        client.gateway.settings.integrations.refresh_margin_seconds = 60
        assert prompt_of(await chat.send("acme"))["blocking"] is True
        await chat.stop()


async def test_two_gateways_on_one_database_spend_a_refresh_token_once(
    tmp_path: Any, oauth: FakeOAuthServer, browser: Browser
) -> None:
    """Two processes (here two gateways) refreshing the same credentials at once: the provider
    rotates refresh tokens, so only one may refresh; the other uses its result."""
    key = generate_key()
    database = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    first = TestClient(build_app(oauth), tmp_path / "a", database_url=database,
                       integrations={"encryption_key": key, "providers": providers_for(oauth)})
    second = TestClient(build_app(oauth), tmp_path / "b", database_url=database,
                        integrations={"encryption_key": key, "providers": providers_for(oauth)})
    async with first, second:
        await connected(first, oauth)
        chat = await first.conversation("alice")
        turn = await chat.send("acme")
        await connect_via_oauth(browser, prompt_of(turn)["connect_url"])
        await until(lambda: turn.ended)
        record = await first.gateway.store.sessions.get(chat.session_id)
        assert record is not None
        user = await first.gateway.store.users.get(record.user_id)
        assert user is not None
        for client in (first, second):
            client.gateway.settings.integrations.refresh_margin_seconds = oauth.expires_in + 60
        oauth.expires_in = 7200  # the renewed token is fresh for both
        before = len(oauth.token_requests)
        results = await asyncio.gather(
            first.gateway.integrations.credentials_for(user, "acme"),
            second.gateway.integrations.credentials_for(user, "acme"),
        )
        assert all(results) and results[0].access_token == results[1].access_token  # type: ignore[union-attr]
        assert len(oauth.token_requests) - before == 1
        assert oauth.token_is_valid(results[0].access_token)  # type: ignore[union-attr]


# -- revoke ----------------------------------------------------------------------------------


async def test_revoke_over_http(tmp_path: Any, oauth: FakeOAuthServer, browser: Browser, database_url: str) -> None:
    async with make_client(tmp_path, oauth, database_url=database_url) as client:
        await connected(client, oauth)
        chat = await client.conversation("alice")
        turn = await chat.send("acme")
        await connect_via_oauth(browser, prompt_of(turn)["connect_url"])
        await until(lambda: turn.ended)
        token = turn.replies[-1].rsplit(" ", 1)[1]
        record = await client.gateway.store.sessions.get(chat.session_id)
        assert record is not None
        user_id = record.user_id
        base = client.gateway.public_url
        headers = {"X-API-Key": API_KEY}
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/integrations", params={"user_id": user_id}) as response:
                assert response.status == 401
                assert (await response.json())["error"]["code"] == "unauthorized"
            async with http.get(f"{base}/integrations", headers=headers) as response:
                assert response.status == 400
            async with http.get(f"{base}/integrations", params={"user_id": user_id}, headers=headers) as response:
                listing = await response.json()
            assert [i["provider"] for i in listing["integrations"]] == ["acme"]
            assert token not in str(listing)
            async with http.delete(f"{base}/integrations/acme", params={"user_id": user_id},
                                   headers=headers) as response:
                assert response.status == 200
                assert await response.json() == {"provider": "acme", "revoked": True, "provider_revoked": True}
            assert not oauth.token_is_valid(token)
            assert oauth.revoked and oauth.refresh_tokens == {}  # the refresh token, and its access tokens
            async with http.delete(f"{base}/integrations/acme", params={"user_id": user_id},
                                   headers=headers) as response:
                assert response.status == 404
            async with http.get(f"{base}/integrations", params={"user_id": user_id}, headers=headers) as response:
                assert (await response.json())["integrations"] == []
        assert prompt_of(await chat.send("acme"))["blocking"] is True
        await chat.stop()


async def test_revoke_with_the_cli(tmp_path: Any, oauth: FakeOAuthServer, browser: Browser) -> None:
    import argparse
    import io

    from gateway.integrations.cli import register_cli, run_cli

    key = generate_key()
    async with make_client(tmp_path, oauth, key=key) as client:
        await connected(client, oauth)
        chat = await client.conversation("alice")
        turn = await chat.send("acme")
        await connect_via_oauth(browser, prompt_of(turn)["connect_url"])
        await until(lambda: turn.ended)
        token = turn.replies[-1].rsplit(" ", 1)[1]
        record = await client.gateway.store.sessions.get(chat.session_id)
        assert record is not None
        user_id = record.user_id

        acme = providers_for(oauth)["acme"]
        config = tmp_path / "chatgate.toml"
        config.write_text(
            f'[database]\nurl = "{client.settings.database.url}"\n'
            f'[integrations]\nencryption_key = "{key}"\n'
            "[integrations.providers.acme]\n"
            + "".join(f"{k} = {_toml(v)}\n" for k, v in acme.items())
        )
        parser = argparse.ArgumentParser(prog="chatgate")
        register_cli(parser.add_subparsers(dest="command"))

        def cli(*argv: str) -> tuple[int, str]:
            out = io.StringIO()
            args = parser.parse_args(["integrations", *argv])
            assert args.handler is run_cli
            return run_cli(args, out=out), out.getvalue()

        status, output = await asyncio.to_thread(cli, "list", "--config", str(config))
        assert status == 0 and "acme" in output and user_id in output and token not in output

        # The same through `chatgate integrations ...` (gateway.cli wires register_cli/run_cli).
        from gateway.cli import main

        assert await asyncio.to_thread(main, ["integrations", "list", "--user", user_id, "--config", str(config)]) == 0
        broken = tmp_path / "broken.toml"
        broken.write_text(config.read_text().replace(f'encryption_key = "{key}"', 'encryption_key = "nope"'))
        assert await asyncio.to_thread(main, ["integrations", "revoke", "acme", "--user", user_id,
                                              "--config", str(broken)]) == 2  # a clear config error
        status, output = await asyncio.to_thread(cli, "revoke", "acme", "--user", user_id, "--config", str(config))
        assert status == 0 and f"revoked acme for {user_id}" in output and "revoked the tokens too" in output
        assert not oauth.token_is_valid(token)
        status, output = await asyncio.to_thread(cli, "revoke", "acme", "--user", user_id, "--config", str(config))
        assert status == 1
        status, output = await asyncio.to_thread(cli, "list", "--json", "--config", str(config))
        assert status == 0 and output.strip() == "[]"
        status, output = await asyncio.to_thread(cli, "key")
        Fernet(output.strip().encode())  # a usable key
        assert prompt_of(await chat.send("acme"))["blocking"] is True
        await chat.stop()


def _toml(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return f'"{value}"'


# -- states that must be refused -------------------------------------------------------------


async def test_replayed_and_forged_states_are_refused(
    tmp_path: Any, oauth: FakeOAuthServer, browser: Browser, database_url: str
) -> None:
    async with make_client(tmp_path, oauth, database_url=database_url) as client:
        await connected(client, oauth)
        chat = await client.conversation("alice")
        turn = await chat.send("acme")
        connect_url = prompt_of(turn)["connect_url"]
        token = parse_qs(urlsplit(connect_url).query)["state"][0]
        base = client.gateway.public_url

        # Forged: a tampered signature, a state signed with another secret, no state at all.
        tampered = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        from gateway.integrations.state import StateSigner

        _, foreign = StateSigner("not-our-secret").issue(
            provider="acme", user_id="mallory", scope_key="mallory", session_id=chat.session_id,
            prompt_id=None, ttl=60,
        )
        for bad in (tampered, foreign, ""):
            status, page, _ = await browser.get(f"{base}/integrations/acme/connect?state={bad}")
            assert status == 400
            assert "not valid" in page or "no connection state" in page
            status, page, _ = await browser.get(f"{base}/integrations/acme/callback?state={bad}&code=stolen")
            assert status == 400
        # A genuine state of another integration is not accepted for this one.
        status, page, _ = await browser.get(connect_url.replace("/acme/", "/vault/"))
        assert status == 400 and "another integration" in page
        # A genuine state whose flow never started cannot be used with a code from elsewhere.
        status, page, _ = await browser.get(f"{base}/integrations/acme/callback?state={token}&code=stolen")
        assert status == 409
        assert oauth.token_requests == []  # nothing was exchanged

        # The real flow works once...
        status, page, url = await connect_via_oauth(browser, connect_url)
        assert status == 200 and "connected" in page
        await until(lambda: turn.ended)
        exchanges = len(oauth.token_requests)
        # ...and replaying its callback, or opening the link again, is refused with no effect.
        status, page, _ = await browser.get(url)
        assert status == 409 and "already" in page
        status, page, _ = await browser.get(connect_url)
        assert status == 409 and "already used" in page
        async with browser.http.post(f"{base}/integrations/acme/connect", data={"state": token},
                                     allow_redirects=False) as response:
            assert response.status == 409
        async with browser.http.post(f"{base}/integrations/acme/decline", data={"state": token}) as response:
            assert response.status == 409
        assert len(oauth.token_requests) == exchanges
        assert [b["type"] for b in (await chat.send("acme")).blocks] == []  # still connected


async def test_an_expired_state_is_refused(tmp_path: Any, oauth: FakeOAuthServer, browser: Browser) -> None:
    async with make_client(tmp_path, oauth, state_ttl_seconds=0.2) as client:
        await connected(client, oauth)
        chat = await client.conversation("alice")
        turn = await chat.send("acme")
        await asyncio.sleep(0.3)
        status, page, _ = await browser.get(prompt_of(turn)["connect_url"])
        assert status == 410 and "expired" in page
        assert oauth.authorize_requests == []
        await chat.stop()


# -- declining -------------------------------------------------------------------------------


@pytest.mark.parametrize(("decision", "shown"), [("deny", "You chose not to connect"), ("fail", "server_error")])
async def test_a_callback_with_an_error_declines(
    tmp_path: Any, oauth: FakeOAuthServer, browser: Browser, decision: str, shown: str
) -> None:
    oauth.decision = decision
    async with make_client(tmp_path, oauth) as client:
        await connected(client, oauth)
        chat = await client.conversation("alice")
        turn = await chat.send("acme")
        status, page, url = await connect_via_oauth(browser, prompt_of(turn)["connect_url"])
        assert status == 200 and "Not connected" in page and shown in page
        assert "error=" in url
        await until(lambda: turn.ended)
        assert turn.replies[-1] == "declined"
        assert latest_block(chat, "integration_prompt")["declined"] is True
        assert oauth.token_requests == []
        status, page, _ = await browser.get(url)  # the error callback cannot be replayed either
        assert status == 409


async def test_dont_connect_on_the_start_page_declines(
    tmp_path: Any, oauth: FakeOAuthServer, browser: Browser
) -> None:
    async with make_client(tmp_path, oauth) as client:
        await connected(client, oauth)
        chat = await client.conversation("alice", channel="telegram")
        turn = await chat.send("acme")
        status, page, url = await browser.get(prompt_of(turn)["connect_url"])
        status, page, _ = await browser.submit(url, page, index=1)
        assert status == 200 and "was not connected" in page
        await until(lambda: turn.ended)
        assert turn.replies[-1] == "declined"
        assert oauth.authorize_requests == []


async def test_the_prompt_times_out(tmp_path: Any, oauth: FakeOAuthServer, browser: Browser) -> None:
    async with make_client(tmp_path, oauth, app=build_app(oauth, timeout=0.3)) as client:
        await connected(client, oauth)
        chat = await client.conversation("alice")
        turn = await chat.send("acme")
        await until(lambda: turn.ended)
        assert turn.replies[-1] == "timed out"
        assert latest_block(chat, "integration_prompt")["timed_out"] is True
        # Connecting afterwards still works; the next turn has the account.
        status, page, _ = await connect_via_oauth(browser, prompt_of(turn)["connect_url"])
        assert status == 200 and "connected" in page
        later = await chat.send("acme")
        assert later.blocks == [] and later.replies[-1].startswith("hello octocat")


async def test_show_integration_card_links_to_the_connect_page(
    tmp_path: Any, oauth: FakeOAuthServer, browser: Browser
) -> None:
    async with make_client(tmp_path, oauth) as client:
        await connected(client, oauth)
        chat = await client.conversation("alice")
        turn = await chat.send("anything", chat_name="card")
        card = prompt_of(turn)
        assert card["blocking"] is False and card["reason"] == "when you like"
        status, page, _ = await connect_via_oauth(browser, card["connect_url"])
        assert status == 200 and "connected" in page
        later = await (await client.conversation("alice")).send("acme")
        assert later.blocks == [] and later.replies[-1].startswith("hello octocat")


# -- secret providers ------------------------------------------------------------------------


async def test_secret_form_with_bad_and_good_input(
    tmp_path: Any, oauth: FakeOAuthServer, browser: Browser, database_url: str
) -> None:
    async with make_client(tmp_path, oauth, database_url=database_url) as client:
        chat = await client.conversation("alice")
        turn = await chat.send("vault")
        card = prompt_of(turn)
        assert card["mode"] == "secret"
        status, page, url = await browser.get(card["connect_url"])
        assert status == 200 and 'type="password" name="api_key"' in page and "(optional)" in page

        status, bad, _ = await browser.submit(url, page, api_key="", region="eu")
        assert status == 400 and "API key is required." in bad and 'value="eu"' in bad
        status, bad, _ = await browser.submit(url, page, api_key="not-a-key-at-all", region="eu")
        assert status == 400 and "does not look right: starts with sk-" in bad
        assert "not-a-key-at-all" not in bad  # a secret is never echoed back
        status, bad, _ = await browser.submit(url, page, api_key="sk-" + "a" * 9000)
        assert status == 400 and "too long" in bad
        assert not turn.ended  # bad input answers nothing

        status, done, _ = await browser.submit(url, page, api_key="  sk-abcdef123456 ", region="")
        assert status == 200 and "Vault connected" in done
        await until(lambda: turn.ended)
        assert turn.replies[-1] == "fields [('api_key', 'sk-abcdef123456')]"
        status, _, _ = await browser.submit(url, page, api_key="sk-zzzzzzzzzzzz")
        assert status == 409
        assert (await chat.send("vault")).replies == ["fields [('api_key', 'sk-abcdef123456')]"]

        async with browser.http.post(f"{client.gateway.public_url}/integrations/vault/connect",
                                     json={"state": "x"}) as response:
            assert response.status == 415


# -- encryption at rest ----------------------------------------------------------------------


async def test_credentials_are_unreadable_in_the_database_without_the_key(
    tmp_path: Any, oauth: FakeOAuthServer, browser: Browser
) -> None:
    key = generate_key()
    async with make_client(tmp_path, oauth, key=key) as client:
        await connected(client, oauth)
        chat = await client.conversation("alice")
        turn = await chat.send("acme")
        await connect_via_oauth(browser, prompt_of(turn)["connect_url"])
        await until(lambda: turn.ended)
        token = turn.replies[-1].rsplit(" ", 1)[1]
        refresh = next(iter(oauth.refresh_tokens))
        secret_turn = await chat.send("vault")
        _, page, url = await browser.get(prompt_of(secret_turn)["connect_url"])
        await browser.submit(url, page, api_key="sk-verysecret42")
        await until(lambda: secret_turn.ended)
        database = client.settings.database.url.split("///", 1)[1]

    with sqlite3.connect(database) as raw:
        rows = raw.execute("SELECT provider, secret FROM integration_credentials ORDER BY provider").fetchall()
        everything = "\n".join(str(r) for r in raw.execute("SELECT * FROM integration_credentials"))
        everything += "\n".join(str(r) for r in raw.execute("SELECT * FROM integration_flows"))
    assert [r[0] for r in rows] == ["acme", "vault"]
    for secret in (token, refresh, "sk-verysecret42"):
        assert secret not in everything
    for _, ciphertext in rows:
        with pytest.raises(InvalidToken):
            Fernet(generate_key().encode()).decrypt(ciphertext.encode())
    assert token in Fernet(key.encode()).decrypt(rows[0][1].encode()).decode()

    # A gateway with another key cannot read them either: the user is asked to connect again.
    async with make_client(tmp_path, oauth, key=generate_key()) as client:
        await connected(client, oauth)
        chat = await client.conversation("alice")
        assert prompt_of(await chat.send("acme"))["blocking"] is True
        await chat.stop()


# -- configuration ---------------------------------------------------------------------------


async def test_providers_without_an_encryption_key_fail_at_start(tmp_path: Any, oauth: FakeOAuthServer) -> None:
    from gateway.config import ConfigError

    client = TestClient(build_app(oauth), tmp_path, integrations={"providers": providers_for(oauth)})
    with pytest.raises(ConfigError, match=r"encryption_key is not set.*chatgate integrations key"):
        await client.__aenter__()
    await client.gateway.stop()


# -- schedules and session-less tasks --------------------------------------------------------


async def test_schedules_and_session_less_tasks_see_the_owners_integrations(
    tmp_path: Any, oauth: FakeOAuthServer
) -> None:
    """Capsule: the synthetic owner session carries the owner's connected accounts
    (``GetUserIntegrations(owner_id)``), so a job can call an API with them."""
    from datetime import UTC, datetime, timedelta

    from gateway.context import current_session

    app = gateway.App("owner-jobs")
    seen: dict[str, Any] = {}

    @app.schedule("0 0 1 1 *")
    async def nightly() -> None:
        session = current_session()
        assert session is not None
        seen["schedule"] = {kind: (c.access_token, c.fields) for kind, c in session.integrations.items()}

    @app.task
    async def sync() -> list[str]:
        session = current_session()
        assert session is not None and session.id == ""
        return sorted(session.integrations)

    settings = {"encryption_key": generate_key(), "providers": providers_for(oauth)}
    async with TestClient(app, tmp_path, integrations=settings,
                          scheduler={"enabled": True, "owner_id": "org:acme", "leader_lease_seconds": 0.6,
                                     "task_poll_seconds": 0.05}) as client:
        records = client.gateway.integrations.records
        await records.save("org:acme", "vault", connected_by="ops", payload={"fields": {"api_key": "sk-owner"}},
                           expires_at=0)
        await records.save("org:acme", "teamcode", connected_by="ops", expires_at=0,
                           payload={"access_token": "owner-token", "scopes": ["repo"]})
        await records.save("someone-else", "acme", connected_by="x", expires_at=0,
                           payload={"access_token": "not-the-owners"})
        await client.gateway.scheduler.reschedule("nightly", datetime.now(UTC) + timedelta(seconds=0.05))
        await until(lambda: "schedule" in seen)
        assert seen["schedule"] == {"vault": ("", {"api_key": "sk-owner"}), "teamcode": ("owner-token", {})}
        assert await (await sync.submit()).result(timeout=5) == ["teamcode", "vault"]


# -- the real web channel ------------------------------------------------------------------


async def test_oauth_flow_from_the_widget_socket_and_revoke_as_the_signed_in_user(
    tmp_path: Any, oauth: FakeOAuthServer, browser: Browser
) -> None:
    """The web adapter itself: a signed-in widget user (a host-site token) gets the card inline
    over the WebSocket, connects in the browser, the handler goes on; then revoking over HTTP
    acts on the caller's own accounts only (a ``user_id`` naming someone else is ignored)."""
    from adapters.web.testing import base_url, identity_token, running_gateway

    secret = "host-site-secret-of-at-least-32-bytes!"
    settings = {"encryption_key": generate_key(), "providers": providers_for(oauth)}
    async with running_gateway(build_app(oauth), tmp_path, integrations=settings,
                               web={"identity_secret": secret}) as gw, aiohttp.ClientSession() as http:
        oauth.register(CLIENT_ID, CLIENT_SECRET, gw.integrations.redirect_uri("acme"))
        base = base_url(gw)
        alice = identity_token(secret, "alice", email="alice@example.com")
        ws = await http.ws_connect(f"{base}/ws", params={"token": alice})
        await ws.send_json({"type": "hello", "id": "h1"})
        frames: list[dict[str, Any]] = []

        async def read_until(predicate: Any) -> dict[str, Any]:
            async with asyncio.timeout(5):
                while True:
                    frame = await ws.receive_json()
                    assert frame["type"] != "error", frame
                    frames.append(frame)
                    if predicate(frame):
                        return frame

        await read_until(lambda f: f["type"] == "ready")
        await ws.send_json({"type": "message", "id": "m1", "text": "acme"})
        card = await read_until(lambda f: f["type"] == "block" and f["block"]["type"] == "integration_prompt")
        payload = card["block"]["payload"]
        assert payload["blocking"] is True and payload["mode"] == "oauth"
        assert payload["connect_url"].startswith(f"{gw.public_url}/integrations/acme/connect?state=")
        status, page, _ = await connect_via_oauth(browser, payload["connect_url"])
        assert status == 200 and "Acme Code connected" in page
        reply = await read_until(lambda f: f["type"] == "message" and f["message"]["role"] == "assistant"
                                 and f["message"]["text"].startswith("hello"))
        token = reply["message"]["text"].rsplit(" ", 1)[1]
        assert oauth.token_is_valid(token)
        await ws.close()

        alice_user = await gw.store.users.resolve(PlatformUser("web", "alice"))
        mallory = identity_token(secret, "mallory")
        async with http.delete(f"{base}/integrations/acme",
                               params={"token": mallory, "user_id": alice_user.id}) as response:
            assert response.status == 404  # mallory has no acme; alice's is not hers to revoke
        async with http.get(f"{base}/integrations", params={"token": alice}) as response:
            listing = (await response.json())["integrations"]
        assert [(i["provider"], i["scope_key"]) for i in listing] == [("acme", alice_user.id)]
        assert oauth.token_is_valid(token)
        async with http.delete(f"{base}/integrations/acme", params={"token": alice}) as response:
            assert response.status == 200 and (await response.json())["provider_revoked"] is True
        assert not oauth.token_is_valid(token)
