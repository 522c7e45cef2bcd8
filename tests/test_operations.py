"""Operations against real gateways over real HTTP: /healthz and /readyz (real SQLite, PostgreSQL
and Redis, a closed port, servers that never answer), /metrics as turns run (the widget socket,
the local Telegram Bot API with a 429, the local Slack Web API), its access rule, and JSON log
lines from inside a handler, in-process and from ``chatgate run``."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

import gateway
from adapters.slack.pacer import SlackPacer
from adapters.web import WebAdapter
from adapters.web.testing import base_url, running_gateway, web_settings
from gateway.config import ConfigError
from gateway.context import bind_metrics, reset_metrics
from gateway.health import safe_error
from gateway.inbound import Inbound, PlatformUser
from gateway.leases import Lease
from gateway.logs import log_formatter
from gateway.metrics import GatewayMetrics
from gateway.runtime import Gateway
from gateway.types import Message, SessionChannel
from tests.fakes.slack_api import FakeSlack
from tests.fakes.telegram_api import FakeTelegramAPI
from tests.support import until
from tests.test_telegram_adapter import PRIVATE, SCALE, echo_app, running
from tests.test_web_socket import Widget, open_widget

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent


class Bot:
    """An app whose handler answers, fails, overruns or waits, as the text says."""

    def __init__(self) -> None:
        self.app = gateway.App("ops-bot")
        self.started = asyncio.Event()
        self.gate = asyncio.Event()

        @self.app.message()
        async def handle(session: gateway.Session, msg: gateway.Message) -> None:
            logging.getLogger("ops-bot").info("handling %s", msg.text)
            if msg.text == "boom":
                raise RuntimeError("failed on purpose")
            if msg.text == "slow":
                await asyncio.sleep(30)
            if msg.text == "wait":
                self.started.set()
                await self.gate.wait()
            await session.reply(f"echo: {msg.text}")


async def get_json(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    async with http.get(url) as response:
        return response.status, await response.json()


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(http: aiohttp.ClientSession, gw: Gateway) -> Samples:
    async with http.get(f"{base_url(gw)}/metrics") as response:
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


async def say(widget: Widget, text: str) -> tuple[str, dict[str, Any]]:
    """Send a message; the inbound id the ack names and the turn_end frame."""
    await widget.send("message", text=text)
    ack = await widget.until(lambda f: f["type"] == "ack")
    return ack["inbound_id"], await widget.turn()


# -- /healthz and /readyz ---------------------------------------------------------------------


async def test_healthz_keeps_its_body_and_readyz_names_each_check(tmp_path):
    async with running_gateway(Bot().app, tmp_path) as gw, aiohttp.ClientSession() as http:
        status, body = await get_json(http, f"{base_url(gw)}/healthz")
        assert (status, body) == (200, {"status": "ok", "app": "ops-bot", "adapters": ["WebAdapter"]})
        status, body = await get_json(http, f"{base_url(gw)}/readyz")
        assert status == 200 and body["status"] == "ready"
        assert list(body["checks"]) == ["database", "dispatcher"]  # no redis.url: no Redis check
        for check in body["checks"].values():
            assert check["ok"] is True and check["latency_ms"] >= 0 and "error" not in check


@pytest.mark.postgres
@pytest.mark.redis
async def test_readyz_on_postgresql_and_redis(tmp_path, postgres_url, redis_url):
    async with running_gateway(Bot().app, tmp_path, database={"url": postgres_url}, redis={"url": redis_url}) as gw:
        async with aiohttp.ClientSession() as http:
            status, body = await get_json(http, f"{base_url(gw)}/readyz")
    assert status == 200, body
    assert list(body["checks"]) == ["database", "redis", "dispatcher"]
    assert all(check["ok"] for check in body["checks"].values())


async def test_readyz_is_503_naming_redis_when_it_is_down_and_shows_no_secret(tmp_path, free_port):
    url = f"redis://:hunter2@127.0.0.1:{free_port}/0"  # nothing listens there
    async with running_gateway(Bot().app, tmp_path, redis={"url": url}) as gw, aiohttp.ClientSession() as http:
        async with http.get(f"{base_url(gw)}/readyz") as response:
            text = await response.text()
            assert response.status == 503
        status, _ = await get_json(http, f"{base_url(gw)}/healthz")
    body = json.loads(text)
    assert body["status"] == "unavailable" and body["failing"] == ["redis"]
    assert body["error"]["code"] == "not_ready" and "redis" in body["error"]["message"]
    assert body["checks"]["redis"]["ok"] is False and body["checks"]["redis"]["error"]
    assert body["checks"]["database"]["ok"] and body["checks"]["dispatcher"]["ok"]
    assert "hunter2" not in text
    assert status == 200  # alive all the same: a restart would not bring Redis back


@settings(max_examples=200, deadline=None)
@given(
    scheme=st.sampled_from(["redis", "rediss", "postgresql+asyncpg", "postgres"]),
    user=st.text(st.characters(blacklist_categories=("Z", "C"), blacklist_characters="@:/"), max_size=12),
    password=st.text(st.characters(blacklist_categories=("Z", "C")), min_size=1, max_size=24),
    host=st.from_regex(r"[a-z][a-z0-9.-]{0,20}", fullmatch=True),
)
def test_a_check_error_never_shows_the_credentials_of_a_url(scheme, user, password, host):
    error = safe_error(ConnectionError(f"Error connecting to {scheme}://{user}:{password}@{host}:6379/0. Refused."))
    assert f"{user}:{password}@" not in error
    assert f"://***@{host}:6379/0" in error and error.startswith("ConnectionError: Error connecting to")


@contextlib.asynccontextmanager
async def silent_server() -> AsyncIterator[int]:
    """A loopback server that accepts connections and never answers (a hung service)."""
    connections: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for writer in connections:
            writer.close()
        server.close()


async def test_a_hung_redis_fails_its_check_within_the_probe_timeout(tmp_path):
    async with silent_server() as port, running_gateway(
        Bot().app, tmp_path, redis={"url": f"redis://127.0.0.1:{port}/0"}, server={"probe_timeout": 0.3}
    ) as gw, aiohttp.ClientSession() as http:
        status, body = await get_json(http, f"{base_url(gw)}/readyz")
    assert status == 503 and body["failing"] == ["redis"]
    assert "time" in body["checks"]["redis"]["error"].lower() or "0.3 s" in body["checks"]["redis"]["error"]


class FreezableProxy:
    """A TCP relay to a real server that can stop relaying: the server seems to hang."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.flowing = asyncio.Event()
        self.flowing.set()
        self._handlers: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> FreezableProxy:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.flowing.set()
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        try:
            await asyncio.gather(self._pump(reader, upstream_writer), self._pump(upstream_reader, writer))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._handlers.discard(task)
            for end in (writer, upstream_writer):
                end.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            await self.flowing.wait()
            writer.write(data)
            await writer.drain()
        writer.close()


@pytest.mark.postgres
async def test_a_hung_postgresql_fails_the_database_check_then_recovers(tmp_path, postgres_url):
    host_port, _, name = postgres_url.rpartition("@")[2].partition("/")
    async with FreezableProxy(int(host_port.rpartition(":")[2])) as proxy:
        url = f"postgresql+asyncpg://postgres@127.0.0.1:{proxy.port}/{name}"
        async with running_gateway(Bot().app, tmp_path, database={"url": url}, server={"probe_timeout": 0.3}) as gw:
            async with aiohttp.ClientSession() as http:
                readyz = f"{base_url(gw)}/readyz"
                assert (await get_json(http, readyz))[0] == 200
                proxy.flowing.clear()  # the database stops answering
                status, body = await get_json(http, readyz)
                assert status == 503 and body["failing"] == ["database"], body
                assert body["checks"]["database"]["error"] == "no answer within 0.3 s"
                assert body["checks"]["dispatcher"]["ok"]
                # The probe answers at its deadline, not when the driver has unwound the cancelled
                # query (asyncpg's cancel request hangs too: 2 s more). A bound, not a benchmark.
                assert body["checks"]["database"]["latency_ms"] < 1500
                proxy.flowing.set()

                async def ready() -> bool:
                    return (await get_json(http, readyz))[0] == 200

                await until(ready, timeout=10)


async def test_readyz_is_503_while_the_gateway_shuts_down(tmp_path):
    bot = Bot()
    settings = web_settings(tmp_path)
    gw = Gateway(bot.app, settings, adapters=[WebAdapter(settings)])
    await gw.start()
    stopping: asyncio.Task[None] | None = None
    try:
        async with aiohttp.ClientSession() as http:
            widget = await open_widget(http, gw)
            await widget.hello()
            await widget.send("message", text="wait")
            await bot.started.wait()
            stopping = asyncio.create_task(gw.stop())  # waits for the running handler

            async def refused() -> dict[str, Any] | None:
                status, body = await get_json(http, f"{base_url(gw)}/readyz")
                return body if status == 503 else None

            body = await until(refused)
            assert body["failing"] == ["dispatcher"]
            assert body["checks"]["dispatcher"]["error"] == "shutting down"
            bot.gate.set()
            await stopping
    finally:
        bot.gate.set()
        if stopping is None:
            await gw.stop()


# -- /metrics -----------------------------------------------------------------------------------


async def test_turns_outcomes_latency_handler_errors_and_sockets_are_counted(tmp_path):
    bot = Bot()
    async with running_gateway(bot.app, tmp_path, dispatch={"handler_timeout": 0.5}) as gw:
        async with aiohttp.ClientSession() as http:
            before = await scrape(http, gw)
            assert value(before, "chatgate_turns_total", channel="chat", outcome="done") is None
            widget = await open_widget(http, gw)
            await widget.hello()
            assert value(await scrape(http, gw), "chatgate_open_sockets", adapter="web") == 1
            assert (await say(widget, "hi"))[1]["error"] is None
            assert (await say(widget, "boom"))[1]["error"] == "handler_error"
            assert (await say(widget, "slow"))[1]["error"] == "timeout"
            await widget.send("message", text="wait")
            await bot.started.wait()
            await widget.send("stop")
            assert (await widget.turn())["error"] == "stopped"

            samples = await scrape(http, gw)
            for outcome in ("done", "handler_error", "timeout", "stopped"):
                assert value(samples, "chatgate_turns_total", channel="chat", outcome=outcome) == 1, outcome
            assert value(samples, "chatgate_handler_errors_total", channel="chat", exception="RuntimeError") == 1
            assert value(samples, "chatgate_turn_duration_seconds_count", channel="chat") == 4
            assert value(samples, "chatgate_handler_duration_seconds_count", channel="chat") == 4
            handler_time = value(samples, "chatgate_handler_duration_seconds_sum", channel="chat")
            turn_time = value(samples, "chatgate_turn_duration_seconds_sum", channel="chat")
            assert handler_time is not None and turn_time is not None
            assert 0.5 <= handler_time <= turn_time  # the timed-out handler ran its 0.5 s; turns span handlers
            assert value(samples, "chatgate_turn_duration_seconds_bucket", channel="chat", le="0.25") == 3
            assert value(samples, "process_cpu_seconds_total") is not None

            await widget.ws.close()

            async def sockets_closed() -> bool:
                return value(await scrape(http, gw), "chatgate_open_sockets", adapter="web") == 0

            await until(sockets_closed)


async def test_queue_depth_and_age_come_from_the_inbox_and_leases_held_from_the_store(tmp_path):
    bot = Bot()
    async with running_gateway(bot.app, tmp_path) as gw, aiohttp.ClientSession() as http:
        widget = await open_widget(http, gw)
        await widget.hello()
        await widget.send("message", text="wait")
        await bot.started.wait()
        await asyncio.sleep(0.05)  # the event ages
        samples = await scrape(http, gw)
        assert value(samples, "chatgate_queue_depth") == 1
        age = value(samples, "chatgate_queue_oldest_age_seconds")
        assert age is not None and 0.05 <= age < 30
        bot.gate.set()
        await widget.turn()

        held = value(samples, "chatgate_leases_held")
        assert held is not None
        lease = Lease(gw.store, "ops-test-lease", ttl=10)
        rival = Lease(gw.store, "ops-test-lease", ttl=10)
        assert await lease.try_acquire() and not await rival.try_acquire()
        assert value(await scrape(http, gw), "chatgate_leases_held") == held + 1  # the rival holds nothing
        await lease.release()
        assert value(await scrape(http, gw), "chatgate_leases_held") == held


async def test_each_gateway_counts_its_own_turns(tmp_path):
    async with running_gateway(Bot().app, tmp_path / "one") as one, running_gateway(
        Bot().app, tmp_path / "two"
    ) as two, aiohttp.ClientSession() as http:
        widget = await open_widget(http, one)
        await widget.hello()
        await say(widget, "hi")
        assert value(await scrape(http, one), "chatgate_turns_total", channel="chat", outcome="done") == 1
        other = await scrape(http, two)
        assert value(other, "chatgate_turns_total", channel="chat", outcome="done") is None
        assert value(other, "chatgate_open_sockets", adapter="web") is None


async def test_telegram_calls_and_429s_are_counted_by_method_and_status(tmp_path):
    async with FakeTelegramAPI(rate_scale=SCALE) as api, running(echo_app(), tmp_path, api) as gw:
        api.fail_next("sendMessage", status=429, description="Too Many Requests: retry after 1", retry_after=1)
        api.send_text(PRIVATE, "hi")
        await until(lambda: api.visible_texts(PRIVATE))
        assert api.visible_texts(PRIVATE) == ["echo: hi"]  # the 429 was waited out
        async with aiohttp.ClientSession() as http:
            samples = await scrape(http, gw)
    calls = "chatgate_platform_calls_total"
    assert value(samples, calls, platform="telegram", method="sendMessage", status="429") == 1
    assert value(samples, calls, platform="telegram", method="sendMessage", status="ok") == 1
    assert value(samples, "chatgate_platform_rate_limited_total", platform="telegram", method="sendMessage") == 1
    # this fake has no rich messages: Telegram's 404 for an unknown method, counted as such
    assert value(samples, calls, platform="telegram", method="sendRichMessage", status="404") == 1
    polls = value(samples, calls, platform="telegram", method="getUpdates", status="ok")
    assert polls is not None and polls >= 1  # the poller, started with the gateway, counts too
    assert value(samples, "chatgate_turns_total", channel="telegram", outcome="done") == 1


async def test_a_turn_counts_its_platform_calls_whichever_task_submitted_it(tmp_path):
    """An event submitted from a task the gateway did not start (here the test's own; a worker's
    queue consumer later) still counts its replies: the turn binds the gateway's metrics."""
    async with FakeTelegramAPI(rate_scale=SCALE) as api, running(echo_app(), tmp_path, api) as gw:
        await gw.submit(Inbound(
            kind="message", dedup_key="ops-direct-1", channel=SessionChannel("telegram", chat_id=str(PRIVATE)),
            user=PlatformUser("telegram", str(PRIVATE)), message=Message("direct", "user", "telegram"),
        ))
        await until(lambda: api.visible_texts(PRIVATE))
        await gw.dispatcher.wait_idle(5)
        sample = gw.metrics.registry.get_sample_value
        assert sample("chatgate_platform_calls_total",
                      {"platform": "telegram", "method": "sendMessage", "status": "ok"}) == 1
        assert sample("chatgate_turns_total", {"channel": "telegram", "outcome": "done"}) == 1


async def test_slack_calls_and_429s_are_counted_at_the_pacer():
    metrics = GatewayMetrics()
    token = bind_metrics(metrics)  # what a gateway does for the code it runs
    try:
        async with FakeSlack(time_scale=0.01) as slack:
            slack.set_budget("chat.update", 2, 0.4)  # stricter than the pacer's budget: 429s come
            client = AsyncWebClient(token=slack.bot_token, base_url=slack.api_url, retry_handlers=[])
            pacer = SlackPacer(channel_budgets={})
            posted = await pacer.call("chat.postMessage", "T1", "C1", lambda: client.chat_postMessage(
                channel="C1", text="hello"))
            assert posted is not None
            for i in range(4):
                await pacer.call("chat.update", "T1", "C1", lambda i=i: client.chat_update(
                    channel="C1", ts=posted["ts"], text=f"v{i}"))
            slack.fail_next("chat.postMessage", "channel_not_found")
            with pytest.raises(SlackApiError):
                await pacer.call("chat.postMessage", "T1", "C9", lambda: client.chat_postMessage(
                    channel="C9", text="x"))
            rate_limited = len(slack.rate_limited_calls())
    finally:
        reset_metrics(token)

    def count(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    assert rate_limited >= 1
    calls = "chatgate_platform_calls_total"
    assert count(calls, platform="slack", method="chat.update", status="429") == rate_limited
    assert count("chatgate_platform_rate_limited_total", platform="slack", method="chat.update") == rate_limited
    assert count(calls, platform="slack", method="chat.update", status="ok") == 4
    assert count(calls, platform="slack", method="chat.postMessage", status="ok") == 1
    assert count(calls, platform="slack", method="chat.postMessage", status="api_error") == 1


async def test_metrics_need_the_token_when_one_is_set(tmp_path):
    async with running_gateway(Bot().app, tmp_path, server={"metrics_token": "s3cret"}) as gw:
        url = f"{base_url(gw)}/metrics"
        async with aiohttp.ClientSession() as http:
            async with http.get(url) as response:
                assert response.status == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")
                assert "server.metrics_token" in (await response.json())["error"]["message"]
            async with http.get(url, headers={"Authorization": "Bearer wrong"}) as response:
                assert response.status == 401
            async with http.get(url, headers={"Authorization": "Bearer s3cret",
                                              "X-Forwarded-For": "203.0.113.9"}) as response:
                assert response.status == 200 and "chatgate_open_sockets" in await response.text()


async def test_metrics_without_a_token_answer_direct_loopback_requests_only(tmp_path):
    async with running_gateway(Bot().app, tmp_path) as gw, aiohttp.ClientSession() as http:
        url = f"{base_url(gw)}/metrics"
        async with http.get(url) as response:
            assert response.status == 200
        for header in ("X-Forwarded-For", "Forwarded"):  # relayed by a proxy: the client is elsewhere
            async with http.get(url, headers={header: "for=203.0.113.9"}) as response:
                assert response.status == 403
                assert "server.metrics_token" in (await response.json())["error"]["message"]
        async with http.get(url, headers={"Accept": "application/openmetrics-text; version=1.0.0"}) as response:
            assert response.headers["Content-Type"].startswith("application/openmetrics-text")
            assert (await response.text()).rstrip().endswith("# EOF")


@pytest.mark.parametrize("path", ["/readyz", "/metrics"])
async def test_an_endpoint_may_not_take_an_operations_path(tmp_path, path):
    app = gateway.App("shadow")

    @app.endpoint("GET", path, authorized=False)
    async def mine(request: Any) -> dict[str, Any]:
        return {"mine": True}

    with pytest.raises(ConfigError, match="choose another path"):
        async with running_gateway(app, tmp_path):
            pass


# -- JSON log lines -----------------------------------------------------------------------------


async def test_json_log_lines_carry_the_session_and_turn_of_the_running_handler(tmp_path):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(log_formatter("json"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        async with running_gateway(Bot().app, tmp_path) as gw, aiohttp.ClientSession() as http:
            widget = await open_widget(http, gw)
            await widget.hello()
            first, _ = await say(widget, "hi")
            second, _ = await say(widget, "boom")
            session_id = widget.session_id
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]  # every line is one object
    inside = [line for line in lines if line["logger"] == "ops-bot"]
    assert [line["message"] for line in inside] == ["handling hi", "handling boom"]
    assert [(line["session_id"], line["turn_id"]) for line in inside] == [(session_id, first), (session_id, second)]
    assert inside[0]["level"] == "INFO" and inside[0]["time"].endswith("+00:00")
    raised = next(line for line in lines if line["logger"] == "chatgate.turns" and line["level"] == "ERROR")
    assert (raised["session_id"], raised["turn_id"]) == (session_id, second)
    assert raised["exception"].startswith("Traceback") and "RuntimeError: failed on purpose" in raised["exception"]
    assert any("session_id" not in line for line in lines)  # lines outside a turn name none


def test_chatgate_run_logs_json_lines_and_serves_the_probes(tmp_path, free_port):
    env = {
        **os.environ,
        "CHATGATE_LOGGING__FORMAT": "json",
        "CHATGATE_DATA_DIR": str(tmp_path / "data"),
        "CHATGATE_FILES__DIR": str(tmp_path / "data" / "files"),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'data' / 'chatgate.db'}",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "run", str(ROOT / "examples" / "echo.py"), "--port", str(free_port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT,
    )
    try:
        status = _wait_for_readyz(f"http://127.0.0.1:{free_port}/readyz", process)
        assert status == 200
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, output
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]
    messages = [line["message"] for line in lines]
    assert any(message.startswith("ready in") for message in messages), messages
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)


def _wait_for_readyz(url: str, process: subprocess.Popen[str], timeout: float = 30.0) -> int:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"chatgate run exited early: {process.communicate()[0]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            if exc.code != 503:  # 503: still starting
                return int(exc.code)
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError("chatgate run did not answer /readyz in time")
