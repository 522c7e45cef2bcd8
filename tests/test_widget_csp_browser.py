"""The widget's Content-Security-Policy (issue 13 item 6) in a real Chromium: the full-page chat
works under it without a single violation, scripts injected into the page do not run, and only
the origins in ``web.frame_ancestors`` may show the page in a frame (a second loopback origin
plays the embedding site)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from playwright.async_api import Browser, Page, async_playwright

import gateway
from adapters.web.testing import base_url, running_gateway

pytestmark = [pytest.mark.browser, pytest.mark.timeout(90)]

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
WAIT_MS = 15_000
RECORD_VIOLATIONS = """() => {
    window.__violations = [];
    document.addEventListener('securitypolicyviolation',
        event => window.__violations.push(event.violatedDirective + ' ' + event.blockedURI));
}"""


def make_app() -> gateway.App:
    app = gateway.App("csp-bot")

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        async with session.stream_reply() as reply:
            for word in ("**echo**", ":", msg.text):
                reply.write(word)

    return app


@pytest.fixture
async def browser(chromium_path: str) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


async def framing_site(target: str) -> web.AppRunner:
    """Another origin (``localhost`` rather than ``127.0.0.1``, another port) framing ``target``."""
    async def page(_request: web.Request) -> web.Response:
        return web.Response(text=f'<!doctype html><iframe id="chat" src="{target}"></iframe>', content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "localhost", 0)
    await site.start()
    return runner


def site_url(runner: web.AppRunner) -> str:
    site = next(iter(runner.sites))
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return f"http://localhost:{port}"


async def chat_ready(page: Page) -> None:
    await page.wait_for_function("() => window.chatgate && window.chatgate.client.ready", timeout=WAIT_MS)


async def test_the_page_and_its_files_carry_the_policy(tmp_path):
    async with running_gateway(make_app(), tmp_path) as gw, aiohttp.ClientSession() as http:
        for path in ("/", "/widget.js", "/static/chat.js", "/static/chat.css"):
            async with http.get(base_url(gw) + path) as response:
                assert response.status == 200
                policy = response.headers["Content-Security-Policy"]
                assert "script-src 'self'" in policy and "default-src 'none'" in policy
                assert "'unsafe-inline'" not in policy and "'unsafe-eval'" not in policy
                assert policy.endswith("frame-ancestors 'self'")
                assert response.headers["X-Content-Type-Options"] == "nosniff"


async def test_the_full_page_chat_works_under_the_policy_without_violations(tmp_path, browser):
    async with running_gateway(make_app(), tmp_path) as gw:
        context = await browser.new_context()
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        await page.add_init_script(f"({RECORD_VIOLATIONS})()")
        await page.goto(base_url(gw) + "/")
        await chat_ready(page)
        await page.fill(".cg-input", "hi there")
        await page.press(".cg-input", "Enter")
        await page.wait_for_function(
            """() => Array.from(document.querySelectorAll('.cg-row[data-role=assistant][data-status=complete]'))
                  .some(row => row.innerText.includes('echo:hi there'))""",
            timeout=WAIT_MS,
        )
        assert await page.evaluate("() => window.__violations") == []
        # The policy is in force: a script element added to the page does not run.
        await page.evaluate("""() => {
            const script = document.createElement('script');
            script.textContent = 'window.__ran = true';
            document.head.appendChild(script);
        }""")
        assert await page.evaluate("() => window.__ran === undefined")
        assert any("script-src" in v for v in await page.evaluate("() => window.__violations"))
        assert errors == []
        await context.close()


async def framed(browser: Browser, host: str) -> dict[str, Any]:
    """Opens ``host`` (which frames the chat) and says whether the chat ran inside the frame."""
    context = await browser.new_context()
    page = await context.new_page()
    refusals: list[str] = []
    page.on("console", lambda message: refusals.append(message.text) if "frame-ancestors" in message.text else None)
    await page.goto(host)
    await page.wait_for_selector("#chat")
    frame = await (await page.query_selector("#chat")).content_frame()  # type: ignore[union-attr]
    assert frame is not None
    await frame.wait_for_load_state()
    try:
        await frame.wait_for_function("() => window.chatgate && window.chatgate.client.ready", timeout=3_000)
        ran = True
    except Exception:
        ran = False
    await context.close()
    return {"ran": ran, "refusals": refusals}


async def test_only_the_configured_sites_may_frame_the_page(tmp_path, browser):
    async with running_gateway(make_app(), tmp_path / "closed") as gw:
        host = await framing_site(base_url(gw) + "/")
        try:
            result = await framed(browser, site_url(host))
        finally:
            await host.cleanup()
        assert result == {"ran": False, "refusals": result["refusals"]} and result["refusals"]

    # The embedding site's origin is only known once it listens: start it first, then the gateway.
    holder: dict[str, str] = {}

    async def page(_request: web.Request) -> web.Response:
        return web.Response(text=f'<!doctype html><iframe id="chat" src="{holder["target"]}"></iframe>',
                            content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "localhost", 0).start()
    try:
        origin = site_url(runner)
        async with running_gateway(make_app(), Path(tmp_path) / "open", web={"frame_ancestors": [origin]}) as gw:
            holder["target"] = base_url(gw) + "/"
            result = await framed(browser, origin)
        assert result == {"ran": True, "refusals": []}
    finally:
        await runner.cleanup()
