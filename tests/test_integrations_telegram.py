"""The connect flow from a real Telegram chat: the Telegram adapter talking to the local Bot API
server, the integration card arriving as a message with a URL button, a browser following that
button through the local OAuth 2 server, and the handler continuing in the chat."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

import gateway
from gateway.integrations.crypto import generate_key
from gateway.runtime import Gateway
from gateway.testing import test_settings
from gateway.types import IntegrationDeclined
from tests.fakes.oauth_server import FakeOAuthServer
from tests.fakes.telegram_api import FakeTelegramAPI
from tests.test_integrations import CLIENT_ID, CLIENT_SECRET, Browser, providers_for, until

SCALE = 0.05  # shrinks Telegram's pacing on both sides, as the Telegram adapter tests do
PRIVATE = 7001


@pytest.fixture
async def telegram() -> AsyncIterator[FakeTelegramAPI]:
    async with FakeTelegramAPI(rate_scale=SCALE) as server:
        yield server


@pytest.fixture
async def oauth() -> AsyncIterator[FakeOAuthServer]:
    async with FakeOAuthServer() as server:
        yield server


def connect_app(oauth: FakeOAuthServer) -> gateway.App:
    app = gateway.App("tg-connect")

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        try:
            credentials = await session.require_integration("acme", reason="I need your Acme Code account.")
        except IntegrationDeclined:
            await session.reply("no account, no code")
            return
        async with aiohttp.ClientSession() as http, http.get(
            f"{oauth.base_url}/userinfo", headers={"Authorization": f"Bearer {credentials.access_token}"}
        ) as response:
            login = (await response.json())["login"]
        await session.reply(f"signed in as {login}")

    return app


def connect_button(api: FakeTelegramAPI) -> str | None:
    for message in api.visible(PRIVATE):
        for row in (message.reply_markup or {}).get("inline_keyboard", []):
            for button in row:
                if button.get("url"):
                    return str(button["url"])
    return None


async def start(tmp_path: Path, telegram: FakeTelegramAPI, oauth: FakeOAuthServer) -> Gateway:
    settings = test_settings(
        tmp_path,
        telegram=telegram.settings(rate_scale=SCALE, retry_backoff=0.2),
        integrations={"encryption_key": generate_key(), "providers": providers_for(oauth)},
    )
    gw = Gateway(connect_app(oauth), settings)
    await gw.start()
    oauth.register(CLIENT_ID, CLIENT_SECRET, gw.integrations.redirect_uri("acme"))
    return gw


@pytest.mark.parametrize("decision", ["approve", "deny"])
async def test_connect_from_a_telegram_url_button(
    tmp_path: Path, telegram: FakeTelegramAPI, oauth: FakeOAuthServer, decision: str
) -> None:
    oauth.decision = decision
    gw = await start(tmp_path, telegram, oauth)
    try:
        telegram.send_text(PRIVATE, "show me my code")
        await until(lambda: connect_button(telegram) is not None, timeout=10)
        url = str(connect_button(telegram))
        assert url.startswith(f"{gw.public_url}/integrations/acme/connect?state=")
        assert "I need your Acme Code account." in telegram.visible_texts(PRIVATE)

        async with aiohttp.ClientSession() as http:
            browser = Browser(http)
            status, page, page_url = await browser.get(url)
            assert status == 200
            status, page, _ = await browser.submit(page_url, page)
        assert status == 200
        expected = "signed in as octocat" if decision == "approve" else "no account, no code"
        assert ("Acme Code connected" if decision == "approve" else "You chose not to connect") in page
        await until(lambda: expected in telegram.visible_texts(PRIVATE), timeout=10)
    finally:
        await gw.stop()
    assert not telegram.rate_limited
