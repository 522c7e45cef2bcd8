"""Bad input on the integrations' HTTP surface: the connect pages, the secret form, the OAuth
callback and the revoke endpoint. Each gets a clear answer in its own shape (an HTML page for a
browser, JSON for the API), stores nothing wrongly, and the gateway goes on serving: the genuine
flow still works afterwards. A real gateway on a loopback port and the local OAuth 2 server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from tests.fakes.oauth_server import FakeOAuthServer
from tests.support import until
from tests.test_integrations import API_KEY, Browser, connect_via_oauth, connected, make_client, prompt_of


@pytest.fixture
async def oauth() -> AsyncIterator[FakeOAuthServer]:
    async with FakeOAuthServer() as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def state_of(connect_url: str) -> str:
    return parse_qs(urlsplit(connect_url).query)["state"][0]


async def post(http: aiohttp.ClientSession, url: str, **options: Any) -> tuple[int, str, str]:
    async with http.post(url, allow_redirects=False, **options) as response:
        return response.status, response.headers.get("Content-Type", ""), await response.text()


async def test_malformed_oversized_and_foreign_forms_are_refused_and_store_nothing(
    tmp_path: Any, oauth: FakeOAuthServer, http: aiohttp.ClientSession, database_url: str
) -> None:
    async with make_client(tmp_path, oauth, database_url=database_url) as client:
        chat = await client.conversation("alice")
        turn = await chat.send("vault")
        connect_url = prompt_of(turn)["connect_url"]
        token = state_of(connect_url)
        form_url = f"{client.gateway.public_url}/integrations/vault/connect"
        urlencoded = {"Content-Type": "application/x-www-form-urlencoded"}

        async def chunks() -> AsyncIterator[bytes]:
            yield f"state={token}&api_key=sk-".encode()
            yield b"a" * 20

        broken_part = b"--xx\r\nthis is not a header\r\n\r\nvalue\r\n--xx--\r\n"
        multipart = {"Content-Type": "multipart/form-data; boundary=xx"}
        cases = [
            # a multipart body whose part headers are garbage
            (dict(data=broken_part, headers=multipart), 400, "could not be read"),
            # a body sent without a length (chunked): the size bound could not hold
            (dict(data=chunks(), headers=urlencoded), 411, "connect page"),
            # over the form bound
            (dict(data=b"state=" + token.encode() + b"&api_key=sk-" + b"a" * (70 * 1024), headers=urlencoded),
             413, "too large"),
            # not a form at all
            (dict(json={"state": token, "api_key": "sk-abcdefgh1234"}), 415, "connect page"),
            # bytes that are not text
            (dict(data=b"\xff\xfe\x00\x01=\x02", headers=urlencoded), 400, "could not be read"),
            # no state
            (dict(data={"api_key": "sk-abcdefgh1234"}), 400, "no connection state"),
            # the key sent as a file instead of a field
            (dict(data=_file_form(token)), 400, "API key is required"),
            # a NUL inside the secret
            (dict(data={"state": token, "api_key": "sk-abcd\x00efgh1234"}), 400, "control characters"),
        ]
        for options, status, text in cases:
            got, content_type, page = await post(http, form_url, **options)
            assert (got, text in page) == (status, True), (options.get("headers"), got, page.split("<main>")[-1])
            assert content_type.startswith("text/html")
        for kind, data in (("vault", {"state": "x" * 5000}), ("nope", {"state": token})):
            got, _, page = await post(http, f"{client.gateway.public_url}/integrations/{kind}/decline", data=data)
            assert got == (400 if kind == "vault" else 404)

        assert await client.gateway.integrations.records.listing() == []  # nothing was stored
        assert await client.gateway.integrations.records.flow_status(_state_id(client, token)) is None
        assert not turn.ended  # and nothing answered the waiting prompt

        # still serving, and the link still works
        browser = Browser(http)
        status, page, url = await browser.get(connect_url)
        assert status == 200
        status, done, _ = await browser.submit(url, page, api_key="sk-abcdefgh1234")
        assert status == 200 and "Vault connected" in done
        await until(lambda: turn.ended)
        assert turn.replies[-1] == "fields [('api_key', 'sk-abcdefgh1234')]"


def _file_form(token: str) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("state", token)
    form.add_field("api_key", b"sk-abcdefgh1234", filename="key.txt", content_type="text/plain")
    return form


def _state_id(client: Any, token: str) -> str:
    return client.gateway.integrations.signer.verify(token).id


async def _link_still_connects(client: Any, http: aiohttp.ClientSession, turn: Any, connect_url: str,
                               token: str) -> None:
    """The flow is waiting again, its chat still waiting on it, and the genuine sign-in through
    the same link connects and answers the chat."""
    assert await client.gateway.integrations.records.flow_status(_state_id(client, token)) == "pending"
    assert not turn.ended
    status, page, _ = await connect_via_oauth(Browser(http), connect_url)
    assert status == 200 and "Acme Code connected" in page
    await until(lambda: turn.ended)
    assert turn.replies[-1].startswith("hello octocat with ")


async def _asked_to_connect(client: Any, oauth: FakeOAuthServer) -> tuple[Any, str, str]:
    """Alice's chat asks for Acme: her turn waiting on the prompt, its connect link and state."""
    await connected(client, oauth)
    chat = await client.conversation("alice")
    turn = await chat.send("acme")
    connect_url = prompt_of(turn)["connect_url"]
    return turn, connect_url, state_of(connect_url)


async def test_bad_callbacks_are_refused_and_leave_the_link_usable(
    tmp_path: Any, oauth: FakeOAuthServer, http: aiohttp.ClientSession, database_url: str
) -> None:
    async with make_client(tmp_path, oauth, database_url=database_url) as client:
        turn, connect_url, token = await _asked_to_connect(client, oauth)
        base = client.gateway.public_url
        service = client.gateway.integrations

        # Start the flow (Continue on the start page) without following the provider's redirect.
        status, _, _ = await post(http, f"{base}/integrations/acme/connect", data={"state": token})
        assert status == 303
        assert await service.records.flow_status(_state_id(client, token)) == "pending"

        async def callback(query: str) -> tuple[int, str]:
            async with http.get(f"{base}/integrations/acme/callback?{query}", allow_redirects=False) as response:
                assert response.headers["Content-Type"].startswith("text/html")
                return response.status, await response.text()

        status, page = await callback("")
        assert status == 400 and "no connection state" in page
        status, page = await callback(f"state={token}")
        assert status == 400 and "without a code" in page
        status, page = await callback("state=%ff%fe&code=x")
        assert status == 400 and "not valid" in page
        async with http.get(f"{base}/integrations/nope/callback?state={token}&code=x") as response:
            assert response.status == 404
        # a code the provider does not accept (made up, or from another client)
        status, page = await callback(f"state={token}&code=made-up")
        assert status == 502 and "did not accept" in page
        assert oauth.token_requests[-1]["code"] == "made-up"
        assert await service.records.listing() == []
        # the genuine sign-in still completes with the same link
        await _link_still_connects(client, http, turn, connect_url, token)


async def test_revoke_endpoint_refuses_bad_callers_and_removes_nothing(
    tmp_path: Any, oauth: FakeOAuthServer, http: aiohttp.ClientSession, database_url: str
) -> None:
    async with make_client(tmp_path, oauth, database_url=database_url) as client:
        await connected(client, oauth)
        chat = await client.conversation("alice")
        turn = await chat.send("acme")
        await connect_via_oauth(Browser(http), prompt_of(turn)["connect_url"])
        await until(lambda: turn.ended)
        token = turn.replies[-1].rsplit(" ", 1)[1]
        record = await client.gateway.store.sessions.get(chat.session_id)
        assert record is not None
        user_id = record.user_id
        base = client.gateway.public_url
        key = {"X-API-Key": API_KEY}

        cases = [
            ("DELETE", "/integrations/acme", {"user_id": user_id}, {}, 401),
            ("DELETE", "/integrations/acme", {"user_id": user_id}, {"X-API-Key": "wrong"}, 401),
            ("POST", "/integrations/acme/revoke", {"user_id": user_id}, {"X-API-Key": ""}, 401),
            ("DELETE", "/integrations/acme", {}, key, 400),
            ("DELETE", "/integrations/acme", {"user_id": "x" * 4000}, key, 404),
            ("DELETE", "/integrations/acme", {"user_id": "no-such-user"}, key, 404),
            ("DELETE", "/integrations/nope", {"user_id": user_id}, key, 404),
            ("DELETE", "/integrations/vault", {"user_id": user_id}, key, 404),  # configured, not connected
            ("GET", "/integrations", {"user_id": "\x00"}, key, 404),  # PostgreSQL refuses a NUL
            ("DELETE", "/integrations/acme", {"user_id": "a\x00b"}, key, 404),
            ("DELETE", "/integrations/%00", {"user_id": user_id}, key, 404),
            ("DELETE", "/integrations/" + "x" * 300, {"user_id": user_id}, key, 404),
        ]
        for method, path, params, headers, status in cases:
            async with http.request(method, base + path, params=params, headers=headers) as response:
                assert response.status == status, (method, path, params, headers)
                body = await response.json()
                assert body["error"]["message"], body
        assert oauth.token_is_valid(token) and oauth.revoked == []
        async with http.get(f"{base}/integrations", params={"user_id": user_id}, headers=key) as response:
            assert [i["provider"] for i in (await response.json())["integrations"]] == ["acme"]

        async with http.post(f"{base}/integrations/acme/revoke", params={"user_id": user_id}, headers=key,
                             data=b"\xff garbage body is ignored") as response:
            assert response.status == 200 and (await response.json())["revoked"] is True
        assert not oauth.token_is_valid(token)
        await chat.stop()


async def test_revoke_when_the_provider_cannot_revoke_still_forgets_the_credentials(
    tmp_path: Any, oauth: FakeOAuthServer, http: aiohttp.ClientSession
) -> None:
    async with make_client(tmp_path, oauth) as client:
        await connected(client, oauth)
        chat = await client.conversation("alice")
        turn = await chat.send("acme")
        await connect_via_oauth(Browser(http), prompt_of(turn)["connect_url"])
        await until(lambda: turn.ended)
        token = turn.replies[-1].rsplit(" ", 1)[1]
        record = await client.gateway.store.sessions.get(chat.session_id)
        assert record is not None
        oauth.revoke_status = 503
        async with http.delete(f"{client.gateway.public_url}/integrations/acme",
                               params={"user_id": record.user_id}, headers={"X-API-Key": API_KEY}) as response:
            assert response.status == 200
            assert await response.json() == {"provider": "acme", "revoked": True, "provider_revoked": False}
        assert oauth.token_is_valid(token)  # the provider still honours it: the answer says so
        assert await client.gateway.integrations.records.listing() == []  # but we forgot it
        assert prompt_of(await chat.send("acme"))["blocking"] is True
        await chat.stop()


async def test_an_error_callback_with_control_characters_declines_cleanly(
    tmp_path: Any, oauth: FakeOAuthServer, http: aiohttp.ClientSession, database_url: str
) -> None:
    async with make_client(tmp_path, oauth, database_url=database_url) as client:
        await connected(client, oauth)
        chat = await client.conversation("alice")
        turn = await chat.send("acme")
        token = state_of(prompt_of(turn)["connect_url"])
        base = client.gateway.public_url
        status, _, _ = await post(http, f"{base}/integrations/acme/connect", data={"state": token})
        assert status == 303
        query = {"state": token, "error": "access\x00denied\n" + "x" * 500, "error_description": "\x00" * 3}
        async with http.get(f"{base}/integrations/acme/callback", params=query) as response:
            assert response.status == 200
            assert "Not connected" in await response.text()
        await until(lambda: turn.ended)
        assert turn.replies[-1] == "declined"
        assert await client.gateway.integrations.records.flow_status(_state_id(client, token)) == "declined"


async def test_credentials_the_store_cannot_save_leave_the_link_usable(
    tmp_path: Any, oauth: FakeOAuthServer, http: aiohttp.ClientSession, database_url: str
) -> None:
    """The provider accepted the sign-in but the database refused the credentials (here: their
    table is briefly out of reach): the page says so, the link goes back to waiting instead of
    "already used", and opening it again connects."""
    async with make_client(tmp_path, oauth, database_url=database_url) as client:
        turn, connect_url, token = await _asked_to_connect(client, oauth)
        engine = client.gateway.store.engine

        async def credentials_table(name: str, to: str) -> None:
            async with engine.begin() as conn:
                await conn.exec_driver_sql(f"ALTER TABLE {name} RENAME TO {to}")

        await credentials_table("integration_credentials", "integration_credentials_away")
        try:
            status, page, _ = await connect_via_oauth(Browser(http), connect_url)
        finally:
            await credentials_table("integration_credentials_away", "integration_credentials")
        assert status == 503 and "could not be saved here" in page
        await _link_still_connects(client, http, turn, connect_url, token)
