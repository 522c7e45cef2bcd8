"""The web chat widget in a real browser (headless Chromium) against a real running Gateway.

Each test starts a ``gateway.runtime.Gateway`` on a loopback port with a SQLite file in
``tmp_path`` and the small app below, then drives the full-page chat (``/``) or the embed script
(``/widget.js`` on a host page served cross-origin by a second aiohttp server) with Playwright.
Nothing is mocked: frames go over a real WebSocket, files over a real multipart upload.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from playwright.async_api import Browser, Page, async_playwright

import gateway
from gateway.config import Settings, load_settings
from gateway.runtime import Gateway
from gateway.types import Block, Suggestion

pytestmark = [pytest.mark.browser, pytest.mark.timeout(90)]

ROOT = Path(__file__).resolve().parents[1]
HOST_PAGE = Path(__file__).parent / "widget_pages" / "host.html"
SCREENSHOTS = ROOT / "docs" / "screenshots"
UPDATE_SCREENSHOTS = "CHATGATE_UPDATE_SCREENSHOTS"
"""Set to 1 to write the embed test's screenshots over the README's (``docs/screenshots``); a
plain run writes them into the test's own temporary folder and leaves the repository as it was."""
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WAIT_MS = 15_000  # how long a browser-side condition may take before the test fails

# A 2x2 PNG, so the image block has something real to show.
PIXEL_PNG = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000002000000020802000000fdd49a73"
        "0000001649444154789c63f8cfc0f09f8181e13f03c3ff0c0c0c00002efe05fd5d"
        "2e6c4b0000000049454e44ae426082"
    )
).decode()

INJECTION = (
    'Careful: <img src=x onerror="window.__pwned = 1"> and <script>window.__pwned = 2</script>\n\n'
    "[click me](javascript:window.__pwned=3) [also](JaVaScRiPt:alert(1)) "
    "[data](data:text/html,<script>alert(1)</script>) [safe](https://example.com/docs)\n\n"
    '**<b onmouseover="window.__pwned=4">bold html</b>** `<i>code</i>`'
)

RICH_MARKDOWN = """### Release notes

Version **2.0** is *out*, with ~~bugs~~ fixes and `inline code`.

1. First step
2. Second step
   - nested point

> Quoted wisdom

| Plan | Price |
|:-----|------:|
| Free | $0 |
| Pro  | $9 |

```python
print("hello")
```

See [the docs](https://example.com/docs) or https://example.org."""

TOUR_REPLY = """Here is what I found for **Acme widgets**:

- The *Pro* plan includes priority support
- Invoices are sent on the 1st of each month
- Exports come as `CSV` or `JSON`

| Plan | Seats | Price |
|------|------:|------:|
| Free | 1 | $0 |
| Pro | 10 | $49 |

Want me to start an export?"""


# Astral-plane emoji, a skin-tone modifier, a flag and CJK: delta offsets count UTF-16 code units.
UNICODE_REPLY = " ".join(f"{i}:👋🏽你好🇺🇸" for i in range(60))


def build_app() -> gateway.App:
    """The app every test talks to: one command per feature, an echo otherwise."""
    app = gateway.App("widget-test")

    async def stream_words(session: gateway.Session, text: str, delay: float) -> None:
        async with session.stream_reply() as reply:
            for index, word in enumerate(text.split(" ")):
                reply.write(word if index == 0 else " " + word)
                await asyncio.sleep(delay)

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        text = msg.text.strip()
        if text == "stream":
            await session.notify("Looking it up", detail="step 1 of 1")
            await asyncio.sleep(0.4)
            await stream_words(session, RICH_MARKDOWN, 0.03)
        elif text == "task":
            await session.show(
                Block("task_card", {"task_id": "t9", "name": "Import", "status": "running"}, id="task_9")
            )
        elif text == "activity":
            aid = await session.show_activity(
                "Searching the wiki",
                detail="3 sources",
                icon="\U0001f50e",
                links=[
                    {"label": "Runbook", "url": "https://example.com/runbook"},
                    {"label": "Bad", "url": "javascript:window.__pwned=1"},
                ],
                fields={"query": "export", "hits": 3},
            )
            await session.reply("searching")
            await session.show_activity(
                "Searched the wiki",
                detail="5 sources",
                activity_id=aid,
                expanded=True,
                fields={"query": "export", "hits": 5},
            )
            await session.reply("found it")
        elif text == "unicode":
            await stream_words(session, UNICODE_REPLY, 0.02)
        elif text == "boom":
            raise RuntimeError("the handler failed on purpose")
        elif text == "silent":
            async with session.stream_reply() as reply:
                await asyncio.sleep(10)
                reply.write("too late")
        elif text == "counting":
            await stream_words(session, " ".join(f"n{i}" for i in range(80)), 0.02)
        elif text == "slow":
            await stream_words(session, " ".join(f"tick{i}" for i in range(400)), 0.03)
        elif text == "upload":
            upload = await session.prompt_file(message="Please upload your **notes**", accept=".txt,text/plain")
            with tempfile.TemporaryDirectory() as folder:
                path = await upload.download(folder)
                content = await asyncio.to_thread(Path(path).read_text)
            await session.reply(f"Got {upload.name} ({upload.size} bytes): {content}")
        elif text == "suggest":
            await session.show_suggestions(
                ["Tell me a joke", Suggestion("Ping the server", action="ping")], title="Try one"
            )
        elif text == "inject":
            await session.reply(INJECTION)
            await session.show(Block("task_card", {"task_id": "t", "name": "<img src=x onerror=window.__pwned=5>"}))
        elif text == "markdown":
            await session.reply(RICH_MARKDOWN)
        elif text == "blocks":
            await session.set_title("Block tour")
            await session.show(
                Block("task_card", {"task_id": "t1", "name": "Nightly export", "status": "running"}, id="task_1")
            )
            await session.show_image(f"data:image/png;base64,{PIXEL_PNG}", alt="A tiny chart", width=120)
            await session.show(
                Block(
                    "integration_prompt",
                    {
                        "type": "github",
                        "title": "GitHub",
                        "reason": "I need to read your repositories.",
                        "blocking": False,
                        "mode": "oauth",
                        "connect_url": "https://example.com/connect/github",
                        "expires_at": int(time.time()) + 600,
                    },
                )
            )
            expired = {"type": "jira", "title": "Jira", "mode": "oauth", "blocking": False, "expires_at": 1}
            await session.show(Block("integration_prompt", {**expired, "connect_url": "/integrations/jira/connect"}))
            await session.show(Block("mystery_widget", {"title": "Custom block", "text": "Rendered by the fallback."}))
            await session.show_step("Fetched 3 pages", status="completed", detail="0.4 s", fields={"pages": 3})
            await session.show(
                Block(
                    "task_card",
                    {"task_id": "t1", "name": "Nightly export", "status": "completed", "result": "42 rows exported"},
                    id="task_1",
                )
            )
            approved = await session.prompt_approval(
                "Deploy **v2** to production?", approve_label="Deploy", reject_label="Cancel"
            )
            await session.reply("Deploying now." if approved else "Deployment cancelled.")
        elif text == "tour":
            await session.set_title("Plans and billing")
            await session.notify("Searching the help center")
            await stream_words(session, TOUR_REPLY, 0.005)
            await session.show(
                Block(
                    "task_card",
                    {
                        "task_id": "exp",
                        "name": "Export invoices",
                        "status": "completed",
                        "message": "12 invoices, 48 KB",
                    },
                    id="task_tour",
                )
            )
            await session.show_suggestions(["Start an export", "Compare plans", "Talk to a human"])
        else:
            files = "".join(f" [{a.name}: {a.size} bytes]" for a in msg.attachments or [])
            await stream_words(session, f"Echo: {text}{files}", 0.01)

    @app.message("support", label="Support desk")
    async def support(session: gateway.Session, msg: gateway.Message) -> None:
        await session.reply(f"Support desk: {msg.text}")

    @app.action("ping")
    async def ping(session: gateway.Session, event: gateway.Event) -> None:
        await session.reply("pong from the action")

    return app


ISSUED_TOKENS = web.AppKey("issued_tokens", list)
IDENTITY_SECRET = "host-site-shared-secret-for-tests-0123456789"


def host_token(sub: str, email: str, *, expires_in: float) -> str:
    """What a host site's backend hands its page: an HS256 JWT signed with web.identity_secret."""
    claims = {"sub": sub, "email": email, "exp": int(time.time() + expires_in)}
    return jwt.encode(claims, IDENTITY_SECRET, algorithm="HS256")


def make_settings(tmp_path: Path, port: int = 0) -> Settings:
    return load_settings(
        None,
        data_dir=str(tmp_path / "data"),
        secret_key="widget-test-secret-of-at-least-32-bytes",
        server={"host": "127.0.0.1", "port": port},
        database={"url": f"sqlite+aiosqlite:///{tmp_path / 'chatgate.db'}"},
        files={"dir": str(tmp_path / "files"), "max_upload_bytes": 1_000_000, "accepted_types": ["text/*", "image/*"]},
        web={"title": "Widget Test", "accent_color": "#4f46e5", "identity_secret": IDENTITY_SECRET},
        scheduler={"enabled": False},
    )


@pytest.fixture
async def running_gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    gw = Gateway(build_app(), make_settings(tmp_path))
    await gw.start()
    try:
        yield gw
    finally:
        await gw.stop()


@pytest.fixture
async def browser(chromium_path: str) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def open_page(browser: Browser) -> AsyncIterator[Callable[..., Any]]:
    """Opens a page in a fresh browser context; fails the test on any uncaught page error."""
    errors: list[str] = []
    contexts = []

    async def opener(url: str, *, width: int = 1280, height: int = 800) -> Page:
        context = await browser.new_context(viewport={"width": width, "height": height})
        contexts.append(context)
        page = await context.new_page()
        page.set_default_timeout(WAIT_MS)
        page.on("pageerror", lambda error: errors.append(str(error)))
        await page.goto(url)
        await page.wait_for_function("() => window.chatgate && window.chatgate.client.ready")
        return page

    yield opener
    for context in contexts:
        await context.close()
    assert errors == [], f"uncaught errors in the page: {errors}"


# ---------------------------------------------------------------- helpers


async def send(page: Page, text: str) -> None:
    await page.fill(".cg-input", text)
    await page.press(".cg-input", "Enter")


CHAT_ROOT = """(() => {
    const widget = document.querySelector('chatgate-widget');
    return widget ? widget.shadowRoot : document;  // the embed lives in a shadow root
})()"""


async def conversation(page: Page) -> list[tuple[str, str]]:
    """(role, text) of every visible row, in order."""
    rows = await page.evaluate(
        f"""() => Array.from({CHAT_ROOT}.querySelectorAll('.cg-log > .cg-row:not([hidden])'))
              .filter(row => !row.classList.contains('cg-typing-row'))
              .map(row => {{
                  const body = row.querySelector('.cg-bubble, .cg-card, .cg-suggestions, .cg-system, figure');
                  return [row.dataset.role, (body || row).innerText.trim()];
              }})"""
    )
    return [(role, text) for role, text in rows]


async def wait_rows(page: Page, count: int) -> None:
    await page.wait_for_function(
        f"count => {CHAT_ROOT}.querySelectorAll('.cg-log > .cg-row:not(.cg-typing-row)').length >= count", arg=count
    )


async def wait_reply(page: Page, text: str) -> None:
    """Waits until a finished assistant message has exactly ``text``."""
    await page.wait_for_function(
        f"""text => Array.from({CHAT_ROOT}
                  .querySelectorAll('.cg-row[data-role=assistant][data-status=complete] .cg-md'))
              .some(node => node.innerText.trim() === text)""",
        arg=text,
    )


async def host_server(
    gateway_url: str, *, token: str = "", token_url: str = "", position: str = "right"
) -> web.AppRunner:
    """A second origin serving the host page that embeds the widget, and (like a host site's
    backend would) ``/token``: a fresh identity token for the signed-in customer."""
    html = (
        HOST_PAGE.read_text()
        .replace("{{GATEWAY}}", gateway_url)
        .replace("{{TOKEN}}", token)
        .replace("{{TOKEN_URL}}", token_url)
        .replace("{{POSITION}}", position)
    )
    issued: list[str] = []

    async def page(_request: web.Request) -> web.Response:
        return web.Response(text=html, content_type="text/html")

    async def fresh_token(_request: web.Request) -> web.Response:
        issued.append(host_token("customer-7", "bo@example.com", expires_in=600))
        return web.json_response({"token": issued[-1]})

    app = web.Application()
    app[ISSUED_TOKENS] = issued
    app.router.add_get("/", page)
    app.router.add_get("/token", fresh_token)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


def runner_url(runner: web.AppRunner) -> str:
    site = next(iter(runner.sites))
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return f"http://127.0.0.1:{port}"


# ---------------------------------------------------------------- tests


async def test_streamed_reply_arrives_token_by_token_and_renders_markdown(running_gateway: Gateway, open_page) -> None:
    page = await open_page(running_gateway.public_url + "/")
    await page.evaluate(
        """() => {
            window.__lengths = [];
            new MutationObserver(() => {
                const node = document.querySelector('.cg-row[data-role=assistant] .cg-md');
                if (node) window.__lengths.push(node.innerText.length);
            }).observe(document.querySelector('.cg-log'), {subtree: true, childList: true, characterData: true});
        }"""
    )
    # Shift+Enter is a new line, Enter sends.
    await page.click(".cg-input")
    await page.keyboard.type("strea")
    await page.keyboard.press("Shift+Enter")
    assert await page.input_value(".cg-input") == "strea\n"
    await page.fill(".cg-input", "stream")
    await page.keyboard.press("Enter")
    assert await page.input_value(".cg-input") == ""

    status = page.locator(".cg-status")
    await status.wait_for(state="visible")
    assert "Looking it up" in await status.inner_text()
    await page.wait_for_selector(".cg-row[data-role=assistant][data-status=streaming]")
    assert await page.locator(".cg-stop").is_visible()
    await page.wait_for_selector(".cg-row[data-role=assistant][data-status=complete]")
    assert await status.is_hidden()
    assert await page.locator(".cg-stop").is_hidden()

    # Keyboard order around the composer: attach, message, send.
    await page.focus(".cg-input")
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.getAttribute('aria-label')") == "Send message"
    await page.keyboard.press("Shift+Tab")
    await page.keyboard.press("Shift+Tab")
    assert await page.evaluate("document.activeElement.getAttribute('aria-label')") == "Attach a file"

    lengths = await page.evaluate("window.__lengths")
    partial = sorted({n for n in lengths if 0 < n < max(lengths)})
    assert len(partial) >= 3, f"the reply did not stream in pieces: {lengths}"

    md = page.locator(".cg-row[data-role=assistant] .cg-md")
    assert await md.locator("h3").inner_text() == "Release notes"
    assert await md.locator("strong").first.inner_text() == "2.0"
    assert await md.locator("em").first.inner_text() == "out"
    assert await md.locator("del").inner_text() == "bugs"
    assert await md.locator("ol > li").count() == 2
    assert await md.locator("ol li ul li").inner_text() == "nested point"
    assert await md.locator("blockquote").inner_text() == "Quoted wisdom"
    assert await md.locator("table tbody tr").count() == 2
    assert await md.locator("th").nth(1).evaluate("n => n.style.textAlign") == "right"
    assert await md.locator("pre code").inner_text() == 'print("hello")'
    links = md.locator("a")
    assert await links.count() == 2
    assert await links.nth(0).get_attribute("href") == "https://example.com/docs"
    assert "noopener" in (await links.nth(0).get_attribute("rel") or "")
    assert await links.nth(1).get_attribute("href") == "https://example.org/"
    assert await page.get_attribute(".cg-log", "role") == "log"
    assert await page.get_attribute(".cg-log", "aria-live") == "polite"


async def test_chromiums_offer_of_compression_is_declined(running_gateway: Gateway, open_page) -> None:
    """Chromium offers permessage-deflate on every socket; accepted, each open socket would keep
    about 110 KiB of zlib state (``web.socket_compression``, off by default)."""
    page = await open_page(running_gateway.public_url + "/")
    extensions = await page.evaluate(
        """() => new Promise((resolve, reject) => {
            const socket = new WebSocket(location.origin.replace(/^http/, 'ws') + '/ws');
            socket.onopen = () => { resolve(socket.extensions); socket.close(); };
            socket.onerror = () => reject(new Error('the socket did not open'));
        })"""
    )
    assert extensions == ""


async def test_history_survives_a_reload_without_duplicates(running_gateway: Gateway, open_page) -> None:
    page = await open_page(running_gateway.public_url + "/")
    await send(page, "first")
    await wait_reply(page, "Echo: first")
    await send(page, "second")
    await wait_reply(page, "Echo: second")
    before = await conversation(page)
    session_id = await page.evaluate("Object.entries(localStorage).find(([k]) => k.endsWith(':session'))[1]")

    await page.reload()
    await page.wait_for_selector(".cg-chat[data-connection=open]")
    await wait_rows(page, 4)
    await page.wait_for_timeout(300)  # anything extra (a duplicate) would arrive by now
    after = await conversation(page)
    assert [role for role, _ in after] == ["user", "assistant", "user", "assistant"]
    assert [text for _, text in after] == [text for _, text in before]
    assert [text for _, text in after][::2] == ["first", "second"]
    assert session_id == await page.evaluate("Object.entries(localStorage).find(([k]) => k.endsWith(':session'))[1]")

    # The conversation goes on in the same session after the reload.
    await send(page, "third")
    await wait_reply(page, "Echo: third")
    assert len(await conversation(page)) == 6

    # "New conversation" starts an empty session, which a reload keeps.
    await page.click(".cg-new")
    await page.wait_for_function(
        "old => (Object.entries(localStorage).find(([k]) => k.endsWith(':session')) || [])[1] !== old",
        arg=session_id,
    )
    assert await conversation(page) == []
    assert await page.locator(".cg-empty").is_visible()
    await send(page, "fresh start")
    await wait_reply(page, "Echo: fresh start")
    await page.reload()
    await page.wait_for_selector(".cg-chat[data-connection=open]")
    await wait_rows(page, 2)
    assert await conversation(page) == [("user", "fresh start"), ("assistant", "Echo: fresh start")]


async def test_file_prompt_uploads_with_progress_and_answers_the_handler(running_gateway: Gateway, open_page) -> None:
    page = await open_page(running_gateway.public_url + "/")
    await send(page, "upload")
    prompt = page.locator(".cg-card[data-block-type=file_upload]")
    await prompt.wait_for()
    assert "Please upload your notes" in await prompt.inner_text()
    assert await prompt.locator("strong").inner_text() == "notes"
    assert await prompt.locator("input[type=file]").get_attribute("accept") == ".txt,text/plain"
    await page.evaluate(
        """() => { window.__progress = [];
                   new MutationObserver(() => { const bar = document.querySelector('.cg-progress');
                        if (bar) window.__progress.push(bar.getAttribute('aria-valuenow')); })
                   .observe(document.querySelector('.cg-log'), {subtree: true, attributes: true}); }"""
    )
    content = "meeting notes: ship the widget\n" * 200
    await prompt.locator("input[type=file]").set_input_files(
        {"name": "notes.txt", "mimeType": "text/plain", "buffer": content.encode()}
    )
    await page.wait_for_selector(".cg-card[data-block-type=file_upload].cg-completed")
    done = page.locator(".cg-card[data-block-type=file_upload]")
    assert await done.count() == 1  # the completed prompt replaced the open one
    assert "notes.txt" in await done.inner_text()
    assert "100" in await page.evaluate("window.__progress")
    await page.wait_for_function(
        """() => Array.from(document.querySelectorAll('.cg-row[data-role=assistant] .cg-md'))
              .some(n => n.innerText.startsWith('Got notes.txt'))"""
    )
    reply = await page.locator(".cg-row[data-role=assistant] .cg-md").last.inner_text()
    assert reply.startswith(f"Got notes.txt ({len(content)} bytes): meeting notes: ship the widget")

    # A file attached in the composer goes with the next message.
    await page.locator(".cg-composer input[type=file]").set_input_files(
        {"name": "photo.png", "mimeType": "image/png", "buffer": base64.b64decode(PIXEL_PNG)}
    )
    await page.wait_for_function(
        "() => (document.querySelector('.cg-pending-file') || {innerText: ''}).innerText.includes(' B')"
    )
    await send(page, "with a file")
    size = len(base64.b64decode(PIXEL_PNG))
    await wait_reply(page, f"Echo: with a file [photo.png: {size} bytes]")
    assert await page.locator(".cg-attachments .cg-file").count() == 0
    thumb = page.locator(".cg-row[data-role=user] .cg-file-thumb img").last
    await page.wait_for_function("() => document.querySelector('.cg-file-thumb img').naturalWidth === 2")
    assert await thumb.get_attribute("alt") == "photo.png"

    # Too large for files.max_upload_bytes: the prompt says so and nothing is sent.
    await send(page, "upload")
    await page.wait_for_selector(".cg-card[data-block-type=file_upload]:not(.cg-completed)")
    await page.locator(".cg-card[data-block-type=file_upload]:not(.cg-completed) input[type=file]").set_input_files(
        {"name": "big.txt", "mimeType": "text/plain", "buffer": b"x" * 1_200_000}
    )
    error = page.locator(".cg-card[data-block-type=file_upload]:not(.cg-completed) .cg-upload-status.cg-error-text")
    await error.wait_for()
    assert await error.inner_text() == "big.txt is too large: the limit is 977 KB."
    assert await page.locator(".cg-upload-choose:not([disabled])").count() == 1  # the user can pick another

    # A type the gateway refuses (files.accepted_types): the server's 415 message is shown.
    await page.locator(".cg-card[data-block-type=file_upload]:not(.cg-completed) input[type=file]").set_input_files(
        {"name": "archive.zip", "mimeType": "application/zip", "buffer": b"PK\x03\x04"}
    )
    await page.wait_for_function(
        """() => { const n = document.querySelector('.cg-card[data-block-type=file_upload]:not(.cg-completed)'
                   + ' .cg-upload-status.cg-error-text'); return n && !n.innerText.includes('big.txt'); }"""
    )
    refused = await error.inner_text()
    assert "archive.zip" in refused or "type" in refused.lower(), refused
    assert await page.locator(".cg-upload-choose:not([disabled])").count() == 1

    # Stop gives up on the waiting prompt: the handler ends, the composer is free again.
    await page.click(".cg-stop")
    await page.wait_for_selector(".cg-stop", state="hidden")


async def test_suggestion_buttons_send_a_prompt_or_run_an_action(running_gateway: Gateway, open_page) -> None:
    page = await open_page(running_gateway.public_url + "/")
    await send(page, "suggest")
    chips = page.locator(".cg-suggestions .cg-chip")
    await chips.first.wait_for()
    assert await page.locator(".cg-suggestions-title").inner_text() == "Try one"
    assert await chips.all_inner_texts() == ["Tell me a joke", "Ping the server"]

    await chips.nth(0).click()
    await wait_reply(page, "Echo: Tell me a joke")
    users = [text for role, text in await conversation(page) if role == "user"]
    assert users == ["suggest", "Tell me a joke"]

    await chips.nth(1).click()
    await wait_reply(page, "pong from the action")

    # Reloaded, the history holds each of them once.
    await page.reload()
    await page.wait_for_selector(".cg-chat[data-connection=open]")
    await wait_reply(page, "pong from the action")
    await page.wait_for_timeout(300)
    texts = [text for _, text in await conversation(page)]
    assert texts.count("Echo: Tell me a joke") == 1
    assert texts.count("pong from the action") == 1


async def test_stop_button_stops_a_streaming_reply(running_gateway: Gateway, open_page) -> None:
    page = await open_page(running_gateway.public_url + "/")
    await send(page, "slow")
    await page.wait_for_function(
        """() => (document.querySelector('.cg-row[data-role=assistant] .cg-md') || {innerText: ''})
              .innerText.includes('tick5')"""
    )
    stop = page.locator(".cg-stop")
    assert await stop.is_visible()
    assert await stop.get_attribute("aria-label") == "Stop generating"
    await stop.click()
    await page.wait_for_selector(".cg-row[data-role=assistant][data-status=stopped]")
    stopped_text = await page.locator(".cg-row[data-role=assistant] .cg-md").inner_text()
    assert "tick399" not in stopped_text
    assert await page.locator(".cg-row[data-role=assistant] .cg-meta").inner_text() == "Stopped"
    await page.wait_for_timeout(400)
    assert await page.locator(".cg-row[data-role=assistant] .cg-md").inner_text() == stopped_text
    await page.wait_for_selector(".cg-stop", state="hidden")
    assert await page.locator(".cg-send").is_visible()

    await send(page, "after stop")
    await wait_reply(page, "Echo: after stop")

    # Stopped before the first word: the empty reply says so instead of an empty bubble.
    await send(page, "silent")
    await page.wait_for_selector(".cg-stop", state="visible")
    await page.wait_for_timeout(300)
    await page.click(".cg-stop")
    empty = page.locator(".cg-row[data-role=assistant][data-status=stopped] .cg-empty-reply")
    await empty.wait_for()
    assert await empty.inner_text() == "Stopped before the reply began."
    await page.wait_for_selector(".cg-stop", state="hidden")


async def test_blocks_render_and_update_in_place(running_gateway: Gateway, open_page) -> None:
    page = await open_page(running_gateway.public_url + "/")
    await send(page, "blocks")
    approval = page.locator(".cg-card[data-block-type=approval_prompt]")
    await approval.wait_for()
    assert await page.locator(".cg-subtitle-text").inner_text() == "Block tour"
    assert await page.title() == "Block tour \u00b7 Widget Test"

    task = page.locator(".cg-card[data-block-type=task_card]")
    await page.wait_for_selector(".cg-card[data-block-type=task_card][data-status=completed]")
    assert await task.count() == 1
    assert "42 rows exported" in await task.inner_text()

    image = page.locator("figure[data-block-type=image] img")
    assert await image.get_attribute("alt") == "A tiny chart"
    await page.wait_for_function("() => document.querySelector('figure img').naturalWidth === 2")

    integrations = page.locator(".cg-card[data-block-type=integration_prompt]")
    assert await integrations.count() == 2
    connect = integrations.nth(0).locator("a.cg-connect")
    assert await connect.get_attribute("href") == "https://example.com/connect/github"
    assert await connect.get_attribute("target") == "_blank"
    assert await connect.get_attribute("aria-label") == "Connect GitHub"
    assert "This link has expired" in await integrations.nth(1).inner_text()
    assert await integrations.nth(1).locator("a").count() == 0

    step = page.locator("[data-block-type=step_status]")
    assert await step.get_attribute("data-status") == "completed"
    assert "Fetched 3 pages" in await step.inner_text()
    assert "pages" in await step.locator("dl").inner_text()

    fallback = page.locator(".cg-card[data-block-type=mystery_widget]")
    assert "Custom block" in await fallback.inner_text()
    assert "Rendered by the fallback." in await fallback.inner_text()

    assert await approval.locator("button").all_inner_texts() == ["Deploy", "Cancel"]
    # The handler waits for the user: no "typing" dots, but it can still be stopped.
    assert await page.locator(".cg-typing-row").is_hidden()
    assert await page.locator(".cg-stop").is_visible()
    await approval.locator("button", has_text="Deploy").click()
    await wait_reply(page, "Deploying now.")
    await page.wait_for_function(
        """() => (document.querySelector('.cg-card[data-block-type=approval_prompt]') || {innerText: ''})
              .innerText.includes('Approved')"""
    )
    assert await page.locator(".cg-card[data-block-type=approval_prompt] button").count() == 0


async def test_an_activity_row_renders_and_updates_in_place(running_gateway: Gateway, open_page) -> None:
    page = await open_page(running_gateway.public_url + "/")
    await send(page, "activity")
    await wait_reply(page, "found it")
    activity = page.locator("[data-block-type=activity]")
    assert await activity.count() == 1  # the update replaced the first rendering
    assert await activity.locator(".cg-step-label").inner_text() == "Searched the wiki"
    assert await activity.locator(".cg-detail").inner_text() == "5 sources"
    assert await activity.locator(".cg-activity-icon").count() == 0  # the update has no icon
    details = activity.locator("details")
    assert await details.get_attribute("open") is not None  # expanded=True
    assert await details.locator("dl").inner_text() == "query\nexport\nhits\n5"
    assert "Details" in await details.locator("summary").inner_text()
    # The row sits where it was first shown: before both replies.
    assert [role for role, _ in await conversation(page)] == ["user", "block", "assistant", "assistant"]
    assert "activity" not in await activity.inner_text()  # not the raw-JSON fallback card

    # The first version, as a reload of a fresh session would show it, had the icon, links
    # (unsafe ones dropped) and closed details. Rendered by the same code, fed the stored payload.
    rendered = await page.evaluate(
        """() => {
            const node = ChatGate.blocks.render({id: 'activity_x', type: 'activity', payload: {
                label: 'Searching', icon: '🔎', detail: '3 sources', activity_id: 'x', expanded: false,
                links: [{label: 'Runbook', url: 'https://example.com/runbook'},
                        {label: 'Bad', url: 'javascript:window.__pwned=1'}],
                fields: {query: 'export'}}}, {doc: document, uploads: {}, gateway: location.origin});
            return {
                icon: node.querySelector('.cg-activity-icon').textContent,
                hidden: node.querySelector('.cg-activity-icon').getAttribute('aria-hidden'),
                links: Array.from(node.querySelectorAll('a')).map(a => [a.textContent, a.getAttribute('href'), a.rel]),
                open: node.querySelector('details').open,
            };
        }"""
    )
    assert rendered["icon"] == "\U0001f50e" and rendered["hidden"] == "true"
    assert rendered["links"] == [["Runbook", "https://example.com/runbook", "noopener noreferrer"]]
    assert rendered["open"] is False
    # The disclosure is keyboard-operable.
    await details.locator("summary").focus()
    await page.keyboard.press("Enter")
    assert await details.get_attribute("open") is None


async def test_markdown_injection_renders_as_text(running_gateway: Gateway, open_page) -> None:
    page = await open_page(running_gateway.public_url + "/")
    await send(page, "<img src=x onerror=\"window.__pwned='user'\"> **not bold?**")
    await send(page, "inject")
    await page.wait_for_selector(".cg-card[data-block-type=task_card]")
    await page.wait_for_timeout(200)

    assert await page.evaluate("window.__pwned") is None
    log = page.locator(".cg-log")
    assert await log.locator("img").count() == 0
    assert await log.locator("script").count() == 0
    assert await log.locator("b, i").count() == 0
    assert await page.locator("a[href^='javascript'], a[href^='data'], a[href^='JaVaScRiPt']").count() == 0

    user = page.locator(".cg-row[data-role=user] .cg-text").first
    assert await user.inner_text() == "<img src=x onerror=\"window.__pwned='user'\"> **not bold?**"

    reply = page.locator(".cg-row[data-role=assistant] .cg-md").last
    text = await reply.inner_text()
    assert '<img src=x onerror="window.__pwned = 1">' in text
    assert "<script>window.__pwned = 2</script>" in text
    assert await reply.locator("a").count() == 1
    assert await reply.locator("a").get_attribute("href") == "https://example.com/docs"
    assert await reply.locator("strong").inner_text() == '<b onmouseover="window.__pwned=4">bold html</b>'
    assert await reply.locator("code").inner_text() == "<i>code</i>"
    assert "click me" in text and "javascript:" not in text.split("click me")[0][-5:]
    card = page.locator(".cg-card[data-block-type=task_card]")
    assert "<img src=x onerror=window.__pwned=5>" in await card.inner_text()


async def test_embed_script_on_a_cross_origin_host_page(
    running_gateway: Gateway, browser: Browser, tmp_path: Path
) -> None:
    screenshots = SCREENSHOTS if os.environ.get(UPDATE_SCREENSHOTS) == "1" else tmp_path
    host = await host_server(running_gateway.public_url)
    errors: list[str] = []
    try:
        for width, height, name in ((1280, 800, "widget-desktop.png"), (375, 740, "widget-mobile.png")):
            context = await browser.new_context(viewport={"width": width, "height": height})
            page = await context.new_page()
            page.set_default_timeout(WAIT_MS)
            page.on("pageerror", lambda error: errors.append(str(error)))
            await page.goto(runner_url(host) + "/")
            assert runner_url(host) != running_gateway.public_url

            launcher = page.locator("chatgate-widget .cg-launcher")
            await launcher.wait_for()
            await page.wait_for_function(
                """() => document.querySelector('chatgate-widget').shadowRoot
                      .querySelector('.cg-widget').style.visibility === ''"""
            )
            # The host's hostile CSS does not reach into the shadow root.
            style = await launcher.evaluate(
                "b => { const s = getComputedStyle(b); return [s.backgroundColor, s.borderRadius, s.fontFamily]; }"
            )
            assert style[0] == "rgb(14, 116, 144)", style  # data-accent, not the host's lime
            assert style[1] == "50%"
            assert await launcher.get_attribute("aria-expanded") == "false"

            if width == 375:
                await launcher.focus()  # the keyboard opens it too
                await page.keyboard.press("Enter")
            else:
                await launcher.click()
            panel = page.locator("chatgate-widget .cg-panel")
            await panel.wait_for()
            await page.wait_for_selector("chatgate-widget .cg-chat[data-connection=open]")
            assert await launcher.get_attribute("aria-expanded") == "true"
            assert await page.locator("chatgate-widget .cg-title").inner_text() == "Acme Support"
            assert (
                await page.locator("chatgate-widget .cg-empty-title").inner_text()
                == "Hi! Ask us anything about Acme widgets."
            )
            focused = await page.evaluate(
                "document.querySelector('chatgate-widget').shadowRoot.activeElement.className"
            )
            assert "cg-input" in focused
            font_size = await page.locator("chatgate-widget .cg-input").evaluate("n => getComputedStyle(n).fontSize")
            assert font_size == ("16px" if width == 375 else "15px")  # not the host's 40px

            if name == "widget-desktop.png":
                await send(page, "hello from the host")
                await wait_reply(page, "Echo: hello from the host")
            await send(page, "tour")
            await page.wait_for_selector("chatgate-widget .cg-suggestions .cg-chip")
            await page.wait_for_timeout(250)
            overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, "the widget makes the page scroll sideways"
            box = await panel.bounding_box()
            assert box is not None
            if width == 375:
                assert box["width"] == 375 and box["height"] == 740  # full screen on a phone
            else:
                assert box["x"] + box["width"] <= width - 10  # data-position="right"
            # Pin the clock times so the committed screenshots only change when the design does.
            await page.evaluate(
                """() => document.querySelector('chatgate-widget').shadowRoot
                      .querySelectorAll('.cg-meta').forEach(meta => { meta.textContent = '10:24 AM'; })"""
            )
            await page.screenshot(path=str(screenshots / name), animations="disabled", caret="hide")
            assert (screenshots / name).stat().st_size > 0

            if name == "widget-desktop.png":
                # Uploads from another origin identify with the visitor token, not a cookie.
                await send(page, "upload")
                prompt = page.locator("chatgate-widget .cg-card[data-block-type=file_upload]")
                await prompt.wait_for()
                await prompt.locator("input[type=file]").set_input_files(
                    {"name": "embed.txt", "mimeType": "text/plain", "buffer": b"from the host page"}
                )
                await wait_reply(page, "Got embed.txt (18 bytes): from the host page")

            # Escape closes the panel and gives focus back to the launcher.
            await page.keyboard.press("Escape")
            await panel.wait_for(state="hidden")
            assert await launcher.get_attribute("aria-expanded") == "false"
            active = await page.evaluate("document.querySelector('chatgate-widget').shadowRoot.activeElement.className")
            assert active == "cg-launcher"
            # The host page's own button still looks like the host wants.
            host_background = await page.locator("#host-button").evaluate("b => getComputedStyle(b).backgroundColor")
            assert host_background == "rgb(0, 255, 0)"

            # A reply that arrives while the panel is closed shows on the launcher.
            session_id = await page.evaluate("ChatGateWidget.chat.client.sessionId")
            app_session = await running_gateway.sessions.open(session_id)
            await app_session.reply("While you were away: your export is ready.")
            badge = page.locator("chatgate-widget .cg-unread")
            await badge.wait_for()
            assert await badge.inner_text() == "1"
            assert await launcher.get_attribute("aria-label") == "Open chat (1 new)"
            await launcher.click()
            await badge.wait_for(state="hidden")
            assert await launcher.get_attribute("aria-label") == "Close chat"
            await wait_reply(page, "While you were away: your export is ready.")
            await context.close()
    finally:
        await host.cleanup()
    assert errors == []


async def test_the_embedded_widget_keeps_its_conversation_across_host_page_reloads(
    running_gateway: Gateway, browser: Browser
) -> None:
    host = await host_server(running_gateway.public_url)
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        page = await context.new_page()
        page.set_default_timeout(WAIT_MS)
        await page.goto(runner_url(host) + "/")
        launcher = page.locator("chatgate-widget .cg-launcher")
        await launcher.click()
        await page.wait_for_selector("chatgate-widget .cg-chat[data-connection=open]")
        await send(page, "embedded one")
        await wait_reply(page, "Echo: embedded one")
        session_id = await page.evaluate("ChatGateWidget.chat.client.sessionId")

        await page.reload()  # the panel was open: it opens again, on the same conversation
        await page.wait_for_selector("chatgate-widget .cg-chat[data-connection=open]")
        await wait_rows(page, 2)
        assert await page.evaluate("ChatGateWidget.chat.client.sessionId") == session_id
        await send(page, "embedded two")
        await wait_reply(page, "Echo: embedded two")
        expected = [
            ("user", "embedded one"),
            ("assistant", "Echo: embedded one"),
            ("user", "embedded two"),
            ("assistant", "Echo: embedded two"),
        ]
        assert await conversation(page) == expected

        # A new tab on the host site (no panel state) still finds the conversation once opened.
        other = await context.new_page()
        other.set_default_timeout(WAIT_MS)
        await other.goto(runner_url(host) + "/")
        await other.locator("chatgate-widget .cg-launcher").click()
        await other.wait_for_selector("chatgate-widget .cg-chat[data-connection=open]")
        await wait_rows(other, 4)
        assert await conversation(other) == expected
    finally:
        await context.close()
        await host.cleanup()


async def test_server_restart_mid_conversation_loses_and_repeats_nothing(
    tmp_path: Path, free_port: int, open_page
) -> None:
    first = Gateway(build_app(), make_settings(tmp_path, free_port))
    await first.start()
    first_running = True
    second: Gateway | None = None
    try:
        page = await open_page(first.public_url + "/?reconnect_ms=100")
        await send(page, "before restart")
        await wait_reply(page, "Echo: before restart")

        await first.stop()
        first_running = False
        await page.wait_for_selector(".cg-chat[data-connection=waiting], .cg-chat[data-connection=connecting]")
        # Typed while the server is down: kept and delivered once it is back.
        await send(page, "during restart")
        assert await page.locator(".cg-row[data-status=sending]").count() == 1

        second = Gateway(build_app(), make_settings(tmp_path, free_port))
        await second.start()
        await page.wait_for_selector(".cg-chat[data-connection=open]")
        await wait_reply(page, "Echo: during restart")
        await send(page, "after restart")
        await wait_reply(page, "Echo: after restart")
        await page.wait_for_timeout(300)

        expected = [
            ("user", "before restart"),
            ("assistant", "Echo: before restart"),
            ("user", "during restart"),
            ("assistant", "Echo: during restart"),
            ("user", "after restart"),
            ("assistant", "Echo: after restart"),
        ]
        assert await conversation(page) == expected
        await page.reload()
        await page.wait_for_selector(".cg-chat[data-connection=open]")
        await wait_rows(page, 6)
        await page.wait_for_timeout(300)
        assert await conversation(page) == expected
    finally:
        if first_running:
            await first.stop()
        if second is not None:
            await second.stop()


async def test_server_restart_while_a_reply_streams_matches_the_stored_history(
    tmp_path: Path, free_port: int, open_page
) -> None:
    """Whatever the core does with an interrupted reply, the live page ends up showing exactly
    what a fresh load of the stored history shows: no text lost, none doubled."""
    first = Gateway(build_app(), make_settings(tmp_path, free_port))
    await first.start()
    first_running = True
    second: Gateway | None = None
    try:
        page = await open_page(first.public_url + "/?reconnect_ms=100")
        await send(page, "counting")
        await page.wait_for_function(
            """() => (document.querySelector('.cg-row[data-role=assistant] .cg-md') || {innerText: ''})
                  .innerText.includes('n10')"""
        )
        await first.stop()
        first_running = False
        second = Gateway(build_app(), make_settings(tmp_path, free_port))
        await second.start()
        await page.wait_for_selector(".cg-chat[data-connection=open]")
        full = " ".join(f"n{i}" for i in range(80))
        await send(page, "after")
        await wait_reply(page, "Echo: after")
        await page.wait_for_function("() => !document.querySelector('.cg-row[data-status=streaming]')")
        live = await conversation(page)

        await page.reload()
        await page.wait_for_selector(".cg-chat[data-connection=open]")
        await wait_rows(page, len(live))
        await page.wait_for_timeout(300)
        assert await conversation(page) == live
        assert [text for role, text in live if role == "user"] == ["counting", "after"]
        replies = [text for role, text in live if role == "assistant"]
        assert replies[-1] == "Echo: after"
        for reply in replies[:-1]:
            assert full.startswith(reply), reply  # each is the reply or a prefix of it, never doubled
        assert await page.locator(".cg-stop").is_hidden()
    finally:
        if first_running:
            await first.stop()
        if second is not None:
            await second.stop()


async def test_a_block_updated_while_disconnected_is_current_after_the_reconnect(
    running_gateway: Gateway, open_page
) -> None:
    """The store updates a block's row in place; the resume still brings the update."""
    page = await open_page(running_gateway.public_url + "/")
    await send(page, "hi")
    await wait_reply(page, "Echo: hi")
    await send(page, "task")
    await page.wait_for_selector(".cg-card[data-block-type=task_card][data-status=running]")
    await send(page, "later")
    await wait_reply(page, "Echo: later")

    await page.evaluate("window.chatgate.client.connection.stop()")
    await page.wait_for_timeout(300)  # the server has seen the socket go
    session_id = await page.evaluate("window.chatgate.client.sessionId")
    session = await running_gateway.sessions.open(session_id)
    await session.show(Block("task_card", {"task_id": "t9", "name": "Import", "status": "completed"}, id="task_9"))
    await page.evaluate("window.chatgate.client.connection.start()")

    await page.wait_for_selector(".cg-card[data-block-type=task_card][data-status=completed]")
    await page.wait_for_timeout(200)
    assert [role for role, _ in await conversation(page)] == ["user", "assistant", "user", "block", "user", "assistant"]


async def test_host_signed_identity_token(running_gateway: Gateway, browser: Browser, open_page) -> None:
    token = host_token("customer-42", "ann@example.com", expires_in=600)
    page = await open_page(f"{running_gateway.public_url}/?token={token}")
    assert await page.evaluate("window.chatgate.client.user.email") == "ann@example.com"
    await send(page, "signed in")
    await wait_reply(page, "Echo: signed in")
    session_id = await page.evaluate("window.chatgate.client.sessionId")
    record = await running_gateway.store.sessions.get(session_id)
    assert record is not None
    assert record.user_id == await page.evaluate("window.chatgate.client.user.id")

    # Another customer signs in on the same browser: their chat never even asks for Ann's session.
    hellos: list[str] = []
    page.on("websocket", lambda ws: ws.on("framesent", lambda payload: hellos.append(payload)))
    other = host_token("customer-43", "cy@example.com", expires_in=600)
    await page.goto(f"{running_gateway.public_url}/?token={other}")
    await page.wait_for_function("() => window.chatgate && window.chatgate.client.ready")
    assert await page.evaluate("window.chatgate.client.user.email") == "cy@example.com"
    assert await conversation(page) == []
    first_hello = json.loads(next(p for p in hellos if '"hello"' in p))
    assert first_hello["session_id"] is None

    # An expired token: the page says so and does not hammer the gateway with reconnects.
    context = await browser.new_context()
    try:
        expired = await context.new_page()
        expired.set_default_timeout(WAIT_MS)
        sockets: list[str] = []
        expired.on("websocket", lambda ws: sockets.append(ws.url))
        stale = host_token("customer-42", "ann@example.com", expires_in=-60)
        await expired.goto(f"{running_gateway.public_url}/?token={stale}&reconnect_ms=50")
        await expired.wait_for_selector(".cg-chat[data-connection=unauthorized]")
        assert "sign-in has expired" in await expired.locator(".cg-status").inner_text()
        assert await expired.locator(".cg-subtitle-text").inner_text() == "Signed out"
        await expired.wait_for_timeout(600)
        assert len(sockets) == 1
    finally:
        await context.close()


async def test_embed_renews_an_expired_host_token(running_gateway: Gateway, browser: Browser) -> None:
    stale = host_token("customer-7", "bo@example.com", expires_in=-60)
    host = await host_server(running_gateway.public_url, token=stale, token_url="/token", position="left")
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        page = await context.new_page()
        page.set_default_timeout(WAIT_MS)
        await page.goto(runner_url(host) + "/")
        launcher = page.locator("chatgate-widget .cg-launcher")
        await launcher.click()
        box = await launcher.bounding_box()
        assert box is not None and box["x"] < 100  # data-position="left"
        await page.wait_for_selector("chatgate-widget .cg-chat[data-connection=open]")
        # "open" is the socket; who we are arrives with the gateway's ready frame just after.
        await page.wait_for_function("ChatGateWidget.chat.client.ready")
        issued = host.app[ISSUED_TOKENS]
        assert len(issued) == 1
        assert await page.evaluate("ChatGateWidget.chat.client.token") == issued[0]
        assert await page.evaluate("ChatGateWidget.chat.client.user.email") == "bo@example.com"
        assert await page.locator("chatgate-widget .cg-status").is_hidden()
        await send(page, "renewed")
        await wait_reply(page, "Echo: renewed")
    finally:
        await context.close()
        await host.cleanup()


async def test_a_dropped_socket_mid_stream_resumes_without_losing_or_doubling_text(
    running_gateway: Gateway, open_page
) -> None:
    page = await open_page(running_gateway.public_url + "/?reconnect_ms=50")
    await send(page, "unicode")
    await page.wait_for_function(
        """() => (document.querySelector('.cg-row[data-role=assistant] .cg-md') || {innerText: ''})
              .innerText.includes('10:')"""
    )
    await page.evaluate("window.chatgate.client.connection.stop()")
    await page.wait_for_timeout(250)  # the reply goes on without us
    await page.evaluate("window.chatgate.client.connection.start()")
    await page.wait_for_selector(".cg-row[data-role=assistant][data-status=complete]")
    text = await page.evaluate("window.chatgate.client.messages.find(m => m.role === 'assistant').text")
    assert text == UNICODE_REPLY
    assert await page.locator(".cg-row[data-role=assistant] .cg-md").inner_text() == UNICODE_REPLY


async def test_client_keeps_one_copy_of_every_text_and_message(running_gateway: Gateway, open_page) -> None:
    """The protocol rules the client enforces by itself (docs/web-protocol.md): deltas apply by
    UTF-16 offset and never twice, done is authoritative, one user message per inbound_id. Fed
    frame by frame to a ChatClient that is not connected, so every rule is exercised. Ids are
    ULID-like: they sort by time, as the gateway's do."""
    page = await open_page(running_gateway.public_url + "/")
    result = await page.evaluate(
        """() => {
            const client = new ChatGate.ChatClient({gateway: location.origin});
            const text = () => client.byKey['01H0A'].text;
            const seen = [];
            const feed = frame => { client._handle(frame); seen.push(client.byKey['01H0A'] ? text() : null); };
            feed({type: 'delta', message_id: '01H0A', offset: 0, delta: 'He'});      // unknown message: starts it
            feed({type: 'delta', message_id: '01H0A', offset: 0, delta: 'Hel'});     // overlaps: extends
            feed({type: 'delta', message_id: '01H0A', offset: 0, delta: 'He'});      // already have it
            feed({type: 'delta', message_id: '01H0A', offset: 3, delta: 'lo 👋🏽'});  // astral: 4 code units
            feed({type: 'message', message: {id: '01H0A', role: 'assistant', text: 'Hel', status: 'streaming'}});
            feed({type: 'delta', message_id: '01H0A', offset: 10, delta: '!'});      // after the emoji
            feed({type: 'delta', message_id: '01H0A', offset: 20, delta: 'gap'});    // a gap: not applied
            const gap = client.byKey['01H0A'].gap;
            feed({type: 'done', message_id: '01H0A', text: 'Hello 👋🏽! (final)', stopped: false});
            // The user's own message: optimistic, then acked, then replayed with its stored id.
            const local = client.sendMessage('hi there', []);
            client._handle({type: 'ack', id: local.frameId, inbound_id: '01H0B', duplicate: false});
            client._handle({type: 'message', message: {id: '01H0C', role: 'user', text: 'hi there', status: 'complete',
                                                       inbound_id: '01H0B'}});
            client._handle({type: 'message', message: {id: '01H0C', role: 'user', text: 'hi there', status: 'complete',
                                                       inbound_id: '01H0B'}});
            // Another tab's message: echoed under its inbound id, then replayed under its stored id.
            client._handle({type: 'message', message: {id: '01H0D', role: 'user', text: 'from tab 2',
                                                       status: 'complete', inbound_id: '01H0D'}});
            client._handle({type: 'message', message: {id: '01H0E', role: 'user', text: 'from tab 2',
                                                       status: 'complete', inbound_id: '01H0D'}});
            return {
                seen, gap, final: client.byKey['01H0A'].text, status: client.byKey['01H0A'].status,
                users: client.messages.filter(m => m.role === 'user').map(m => [m.id, m.text]),
                resume: client.resumePoint(),
            };
        }"""
    )
    assert result["seen"] == [
        "He",
        "Hel",
        "Hel",
        "Hello 👋🏽",
        "Hello 👋🏽",
        "Hello 👋🏽!",
        "Hello 👋🏽!",
        "Hello 👋🏽! (final)",
    ]
    assert result["gap"] is True
    assert result["final"] == "Hello 👋🏽! (final)"
    assert result["status"] == "complete"
    assert result["users"] == [["01H0C", "hi there"], ["01H0E", "from tab 2"]]
    assert result["resume"] == "01H0E"


async def test_a_message_too_long_for_one_frame_is_kept_not_sent(running_gateway: Gateway, open_page) -> None:
    """web.max_frame_bytes counts UTF-8 bytes: 17 000 emoji are 34 000 UTF-16 units (JavaScript's
    length) but 68 000 bytes, over the default 64 KiB. The widget refuses to send it, says why,
    and keeps the text in the composer; the gateway never sees it."""
    page = await open_page(running_gateway.public_url + "/")
    huge = "\U0001f44b" * 17_000
    await page.fill(".cg-input", huge)
    await page.press(".cg-input", "Enter")
    status = page.locator(".cg-status.cg-status-error")
    await status.wait_for()
    assert "too long" in await status.inner_text()
    assert await page.input_value(".cg-input") == huge  # nothing the user wrote is lost
    assert await conversation(page) == []
    session_id = await page.evaluate("window.chatgate.client.sessionId")
    stored, _ = await running_gateway.store.messages.page(session_id, offset=0, limit=10)
    assert stored == []

    await page.fill(".cg-input", "\U0001f44b" * 100)
    await page.press(".cg-input", "Enter")
    await wait_reply(page, "Echo: " + "\U0001f44b" * 100)
    await status.wait_for(state="hidden")  # the complaint goes once a message is sent
    stored, _ = await running_gateway.store.messages.page(session_id, offset=0, limit=10)
    assert [m.role for m in stored] == ["user", "assistant"]


async def test_a_named_handler_keeps_its_own_conversation(running_gateway: Gateway, open_page) -> None:
    page = await open_page(running_gateway.public_url + "/")
    await send(page, "to the default")
    await wait_reply(page, "Echo: to the default")

    await page.goto(running_gateway.public_url + "/?handler=support")
    await page.wait_for_function("() => window.chatgate && window.chatgate.client.ready")
    assert await conversation(page) == []  # a conversation of its own
    await send(page, "my order is late")
    await wait_reply(page, "Support desk: my order is late")

    await page.goto(running_gateway.public_url + "/")
    await page.wait_for_function("() => window.chatgate && window.chatgate.client.ready")
    await wait_rows(page, 2)
    assert await conversation(page) == [("user", "to the default"), ("assistant", "Echo: to the default")]


async def test_a_failing_handler_is_reported_and_the_chat_goes_on(running_gateway: Gateway, open_page) -> None:
    page = await open_page(running_gateway.public_url + "/")
    await send(page, "boom")
    await wait_reply(page, running_gateway.settings.dispatch.error_message)  # the gateway's apology
    await page.wait_for_selector(".cg-stop", state="hidden")
    assert await page.locator(".cg-status").is_hidden()
    assert await page.locator(".cg-typing-row").is_hidden()
    await send(page, "still here")
    await wait_reply(page, "Echo: still here")


async def test_two_tabs_on_one_session_show_each_message_once(running_gateway: Gateway, browser: Browser) -> None:
    context = await browser.new_context(viewport={"width": 900, "height": 700})
    try:
        first = await context.new_page()
        first.set_default_timeout(WAIT_MS)
        await first.goto(running_gateway.public_url + "/")
        await first.wait_for_selector(".cg-chat[data-connection=open]")
        await send(first, "hello")
        await wait_reply(first, "Echo: hello")

        second = await context.new_page()  # same context: same localStorage, same session
        second.set_default_timeout(WAIT_MS)
        await second.goto(running_gateway.public_url + "/")
        await second.wait_for_selector(".cg-chat[data-connection=open]")
        await wait_reply(second, "Echo: hello")

        await send(first, "from tab one")
        await wait_reply(first, "Echo: from tab one")
        await wait_reply(second, "Echo: from tab one")
        await send(second, "from tab two")
        await wait_reply(first, "Echo: from tab two")
        await wait_reply(second, "Echo: from tab two")
        await first.wait_for_timeout(300)
        expected = [
            ("user", "hello"),
            ("assistant", "Echo: hello"),
            ("user", "from tab one"),
            ("assistant", "Echo: from tab one"),
            ("user", "from tab two"),
            ("assistant", "Echo: from tab two"),
        ]
        assert await conversation(first) == expected
        assert await conversation(second) == expected
        await second.reload()
        await second.wait_for_selector(".cg-chat[data-connection=open]")
        await wait_rows(second, 6)
        await second.wait_for_timeout(300)
        assert await conversation(second) == expected
    finally:
        await context.close()


async def test_a_deleted_session_gives_way_to_a_new_one(running_gateway: Gateway, open_page) -> None:
    page = await open_page(running_gateway.public_url + "/")
    await send(page, "remember me")
    await wait_reply(page, "Echo: remember me")
    # No key at all while the client swaps the deleted session for a new one: undefined, not a throw.
    session_key = "(Object.entries(localStorage).find(([k]) => k.endsWith(':session')) || [])[1]"
    old_session = await page.evaluate(session_key)

    # Deleted while the page is away: the reload starts a fresh conversation.
    assert await running_gateway.store.sessions.delete(old_session)
    await page.reload()
    await page.wait_for_selector(".cg-chat[data-connection=open]")
    await page.wait_for_function(
        f"old => {{ const now = {session_key}; return !!now && now !== old; }}", arg=old_session
    )
    assert await conversation(page) == []
    await send(page, "new here")
    await wait_reply(page, "Echo: new here")

    # Deleted under the open socket: the next message lands in a new session and is answered.
    second_session = await page.evaluate(session_key)
    assert await running_gateway.store.sessions.delete(second_session)
    await send(page, "still there?")
    await wait_reply(page, "Echo: still there?")
    assert await conversation(page) == [("user", "still there?"), ("assistant", "Echo: still there?")]
    assert await page.locator(".cg-row[data-status=failed]").count() == 0
    assert await page.evaluate(session_key) not in (old_session, second_session)


HOSTILE_MARKDOWN = [
    "<script>window.__pwned = 1</script>",
    '<img src=x onerror="window.__pwned = 1">',
    '<a href="javascript:window.__pwned = 1">html link</a>',
    "[x](javascript:window.__pwned=1)",
    "[x]( javascript:window.__pwned=1 )",
    "[x](java\tscript:window.__pwned=1)",
    "[x](&#106;avascript:window.__pwned=1)",
    "[x](vbscript:msgbox(1))",
    "[x](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "[x](//evil.example/path)",
    "[x](/relative/path)",
    "![img](javascript:window.__pwned=1)",
    "![img](https://evil.example/track.png)",
    "<javascript:alert(1)>",
    "[a [nested](javascript:1)](https://ok.example)",
    "**[b](javascript:1)**",
    "> <svg onload=window.__pwned=1>",
    "| a | b |\n|---|---|\n| <img src=x onerror=window.__pwned=1> | [c](javascript:1) |",
    "```\n<script>window.__pwned=1</script>\n```",
    "- <iframe src=javascript:window.__pwned=1>",
    "`<style>*{display:none}</style>`",
    "\\<b>escaped</b>",
    "[" * 2000 + "deep" + "]" * 2000,
    "> " * 500 + "deep quote",
    "*" * 3000,
]

ALLOWED_TAGS = {
    "P", "BR", "STRONG", "EM", "DEL", "CODE", "PRE", "UL", "OL", "LI", "A", "H1", "H2", "H3", "H4", "H5",
    "H6", "BLOCKQUOTE", "TABLE", "THEAD", "TBODY", "TR", "TH", "TD", "DIV", "HR", "INPUT",
}  # fmt: skip


async def test_markdown_renderer_never_emits_active_content(running_gateway: Gateway, open_page) -> None:
    page = await open_page(running_gateway.public_url + "/")
    results = await page.evaluate(
        """sources => sources.map(source => {
            const box = document.createElement('div');
            const started = performance.now();
            box.appendChild(ChatGate.markdown.render(source));
            document.body.appendChild(box);  // live in the document: any handler would fire now
            const elements = Array.from(box.querySelectorAll('*'));
            const result = {
                tags: elements.map(e => e.tagName),
                attributes: elements.flatMap(e => Array.from(e.attributes).map(a => a.name)),
                hrefs: Array.from(box.querySelectorAll('a')).map(a => a.getAttribute('href')),
                rels: Array.from(box.querySelectorAll('a')).map(a => a.rel),
                text: box.textContent,
                ms: performance.now() - started,
            };
            box.remove();
            return result;
        })""",
        HOSTILE_MARKDOWN,
    )
    await page.wait_for_timeout(200)
    assert await page.evaluate("window.__pwned") is None
    for source, result in zip(HOSTILE_MARKDOWN, results, strict=True):
        assert set(result["tags"]) <= ALLOWED_TAGS, (source, result["tags"])
        assert not [a for a in result["attributes"] if a.startswith("on") or a in ("src", "style", "srcdoc")], (
            source,
            result["attributes"],
        )
        for href in result["hrefs"]:
            assert href.startswith(("https://", "http://", "mailto:")), (source, href)
        assert all("noopener" in rel for rel in result["rels"]), source
        assert result["ms"] < 500, (source[:40], result["ms"])
    by_source = dict(zip(HOSTILE_MARKDOWN, results, strict=True))
    assert by_source["<script>window.__pwned = 1</script>"]["text"] == "<script>window.__pwned = 1</script>"
    assert by_source["[a [nested](javascript:1)](https://ok.example)"]["hrefs"] == ["https://ok.example/"]
    assert by_source["![img](https://evil.example/track.png)"]["tags"] == ["P", "A"]  # a link, never a fetch
    assert by_source["\\<b>escaped</b>"]["text"] == "<b>escaped</b>"  # the backslash escapes the "<"


ATTACKER_PAGE = """<!doctype html><meta charset="utf-8"><title>another origin</title>
<script>
  // A page on another port of the gateway's host: the same site, so the browser sends the
  // visitor's SameSite=Lax cookie with this socket's handshake.
  const params = new URLSearchParams(location.search);
  window.frames_seen = [];
  window.done = new Promise((resolve) => {
    const ws = new WebSocket(params.get("ws"));
    let answers = 0;
    ws.onopen = () => ws.send(JSON.stringify({type: "hello", id: "h1", session_id: null}));
    ws.onmessage = (event) => {
      const frame = JSON.parse(event.data);
      window.frames_seen.push(frame);
      if (frame.type !== "ready" && frame.type !== "error") return;
      answers += 1;
      if (answers === 1) ws.send(JSON.stringify({type: "hello", id: "h2", session_id: params.get("victim")}));
      else resolve(window.frames_seen);
    };
    ws.onclose = () => resolve(window.frames_seen);
  });
</script>"""


async def test_a_page_on_another_origin_of_the_same_site_cannot_take_over_the_visitor(
    running_gateway: Gateway, open_page
) -> None:
    """Issue 13 item 1 in Chromium: the gateway on one loopback port, the attacker's page on another."""
    victim = await open_page(running_gateway.public_url + "/")
    await send(victim, "my private question")
    await wait_reply(victim, "Echo: my private question")
    session_key = "Object.entries(localStorage).find(([k]) => k.endsWith(':session'))[1]"
    session_id = await victim.evaluate(session_key)
    record = await running_gateway.store.sessions.get(session_id)
    assert record is not None
    cookies = {c["name"]: c["value"] for c in await victim.context.cookies()}
    cookie = cookies["chatgate_uid"]

    async def attacker_page(_request: web.Request) -> web.Response:
        return web.Response(text=ATTACKER_PAGE, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", attacker_page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        attacker_url = runner_url(runner)
        assert attacker_url != running_gateway.public_url  # another port: another origin, the same site
        page = await victim.context.new_page()  # the victim's browser opens the attacker's page
        socket_url = running_gateway.public_url.replace("http", "ws") + "/ws"
        await page.goto(f"{attacker_url}/?ws={socket_url}&victim={session_id}")
        frames = await page.evaluate("window.done")
    finally:
        await runner.cleanup()

    ready = next(f for f in frames if f["type"] == "ready")
    assert ready["visitor_token"] != cookie  # never the cookie's value
    assert ready["user"]["id"] is None and ready["session_id"] != session_id  # a fresh visitor
    answer = [f for f in frames if f["type"] in ("ready", "error")][1]
    assert answer["type"] == "error" and answer["code"] == "not_found"  # the victim's session is not theirs
    # The victim keeps their cookie and their conversation.
    assert {c["name"]: c["value"] for c in await victim.context.cookies()}["chatgate_uid"] == cookie
    await victim.reload()
    await victim.wait_for_selector(".cg-chat[data-connection=open]")
    await wait_rows(victim, 2)
    assert (await conversation(victim))[0] == ("user", "my private question")


async def test_messages_past_the_rate_limit_wait_and_go_out_by_themselves(tmp_path: Path, open_page) -> None:
    """A `rate_limited` frame keeps the message queued; the widget sends it after retry_after.

    Four messages, not three: the limiter is a sliding-window counter that rounds the previous
    window's weighted count down, so three sent across a window boundary can all pass."""
    settings = make_settings(tmp_path)
    settings.web.limits.messages_per_visitor = "2 per 2 second"
    gw = Gateway(build_app(), settings)
    await gw.start()
    try:
        page = await open_page(gw.public_url + "/")
        await page.evaluate(
            """() => {
                const client = window.chatgate.client;
                window.__limited = 0;
                client.on('notify', n => { if (n && /paused/.test(n.text)) window.__limited++; });
                for (const word of ['one', 'two', 'three', 'four']) client.sendMessage(word);
            }"""
        )
        for word in ("one", "two", "three", "four"):
            await wait_reply(page, f"Echo: {word}")
        assert await page.evaluate("window.__limited") >= 1  # one was refused at least once, then sent
        assert await page.locator(".cg-row[data-status=failed]").count() == 0
        users = [text for role, text in await conversation(page) if role == "user"]
        assert sorted(users) == ["four", "one", "three", "two"]
    finally:
        await gw.stop()


async def test_a_file_attached_before_the_first_message_starts_the_conversation(
    running_gateway: Gateway, open_page
) -> None:
    """A new conversation is stored on first use: here the upload, before any words."""
    page = await open_page(running_gateway.public_url + "/")
    session_id = await page.evaluate("window.chatgate.client.sessionId")
    assert await running_gateway.store.sessions.get(session_id) is None  # said hello, stored nothing
    await page.locator(".cg-composer input[type=file]").set_input_files(
        {"name": "first.txt", "mimeType": "text/plain", "buffer": b"attached first"}
    )
    await page.wait_for_function(
        "() => (document.querySelector('.cg-pending-file') || {innerText: ''}).innerText.includes(' B')"
    )
    assert await running_gateway.store.sessions.get(session_id) is not None
    await send(page, "then words")
    await wait_reply(page, "Echo: then words [first.txt: 14 bytes]")
    await page.reload()
    await page.wait_for_selector(".cg-chat[data-connection=open]")
    await wait_rows(page, 2)
    assert await page.evaluate("window.chatgate.client.sessionId") == session_id
