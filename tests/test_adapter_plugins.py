"""Adapters found through the ``chatgate.adapters`` entry points (gateway/plugins.py).

``tests/packages/chatgate-linechat`` is a third-party adapter in its own pip package, installed
into the test environment by ``scripts/setup --test``: a real gateway finds it, configures it
from its own ``[linechat]`` section and serves a chat through it, with no line of it in chatgate.
Broken plugins are real installed distributions too (a ``.dist-info`` on ``PYTHONPATH``), run in a
child process so that they exist for that process only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import EntryPoint, PackageNotFoundError, distribution
from pathlib import Path
from typing import Any

import pytest

import gateway
from gateway.config import ConfigError, load_settings
from gateway.plugins import AdapterSpec, discover, find
from gateway.runtime import Gateway
from gateway.testing import test_settings

ROOT = Path(__file__).resolve().parent.parent
LINECHAT_OFF = "linechat: off (set LINECHAT_PORT or [linechat] port to enable)"


@pytest.fixture(autouse=True, scope="module")
def linechat_installed() -> None:
    try:
        dist = distribution("chatgate-linechat")
    except PackageNotFoundError:
        pytest.fail("the test package tests/packages/chatgate-linechat is not installed: run scripts/setup --test")
    assert [(e.name, e.value) for e in dist.entry_points.select(group="chatgate.adapters")] == [
        ("linechat", "chatgate_linechat:spec")
    ]


def echo_app() -> gateway.App:
    app = gateway.App("lines")

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        count = session.data.get("count", 0) + 1
        session.data["count"] = count
        if msg.text == "stream":
            async with session.stream_reply() as reply:
                for part in ("one", " two", " three"):
                    reply.write(part)
            return
        await session.reply(f"echo {count}: {msg.text}")

    return app


@asynccontextmanager
async def running(tmp_path: Path, **overrides: Any) -> AsyncIterator[Gateway]:
    gw = Gateway(echo_app(), test_settings(tmp_path, **overrides))
    await gw.start()
    try:
        yield gw
    finally:
        await gw.stop()


class LineClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send(self, frame: dict[str, Any] | bytes) -> None:
        self.writer.write(frame if isinstance(frame, bytes) else json.dumps(frame).encode() + b"\n")
        await self.writer.drain()

    async def read(self) -> dict[str, Any]:
        line = await asyncio.wait_for(self.reader.readline(), 10)
        assert line, "the gateway closed the connection"
        return json.loads(line)

    async def turn(self, frame: dict[str, Any]) -> list[dict[str, Any]]:
        """Send a message; the lines received up to its ``turn_end``."""
        await self.send(frame)
        lines = []
        while not lines or lines[-1]["type"] != "turn_end":
            lines.append(await self.read())
        return lines


@asynccontextmanager
async def connected(port: int) -> AsyncIterator[LineClient]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield LineClient(reader, writer)
    finally:
        writer.close()


def linechat_of(gw: Gateway) -> Any:
    [adapter] = [a for a in gw.adapters if "linechat" in a.channel_types]
    return adapter


# -- the third-party adapter serves a chat -------------------------------------------------------


async def test_a_third_party_adapter_serves_a_chat(tmp_path: Path) -> None:
    async with running(tmp_path, linechat={"port": 0}) as gw:
        adapter = linechat_of(gw)
        assert type(adapter).__module__ == "chatgate_linechat.adapter"  # from the installed package
        assert f"channel: linechat, JSON lines over TCP on 127.0.0.1:{adapter.port}" in gw.describe()
        async with connected(adapter.port) as client:
            lines = await client.turn({"type": "message", "chat": "c1", "user": "ada", "text": "hi", "id": "m1"})
            assert {"type": "accepted", "chat": "c1", "id": "m1", "duplicate": False} in lines
            assert {"type": "message", "chat": "c1", "text": "echo 1: hi", "stopped": False} in lines
            assert lines[-1] == {"type": "turn_end", "chat": "c1", "error": None}

            lines = await client.turn({"type": "message", "chat": "c1", "user": "ada", "text": "stream"})
            assert {"type": "message", "chat": "c1", "text": "one two three", "stopped": False} in lines
            partials = [line["text"] for line in lines if line["type"] == "partial"]
            assert all("one two three".startswith(text) for text in partials)

            lines = await client.turn({"type": "message", "chat": "c1", "user": "ada", "text": "again"})
            assert {"type": "message", "chat": "c1", "text": "echo 3: again", "stopped": False} in lines

            await client.send({"type": "message", "chat": "c1", "user": "ada", "text": "hi", "id": "m1"})
            assert await client.read() == {"type": "accepted", "chat": "c1", "id": "m1", "duplicate": True}

        session = await gw.store.sessions.find(gateway.SessionChannel("linechat", chat_id="c1"))
        assert session is not None
        messages, _ = await gw.store.messages.page(session.id)
        assert [(m.role, m.text) for m in messages] == [
            ("user", "hi"), ("assistant", "echo 1: hi"), ("user", "stream"), ("assistant", "one two three"),
            ("user", "again"), ("assistant", "echo 3: again"),
        ]


async def test_bad_lines_get_an_error_line_and_the_connection_goes_on(tmp_path: Path) -> None:
    async with running(tmp_path, linechat={"port": 0, "max_line_bytes": 1024}) as gw:
        async with connected(linechat_of(gw).port) as client:
            for bad, detail in (
                (b"not json\n", "each line must be one JSON object"),
                (b"[1, 2]\n", "each line must be one JSON object"),
                ({"type": "message", "chat": "c1", "text": "hi"}, "'user' must be a non-empty string"),
                ({"type": "message", "chat": "c1", "user": "ada", "text": " "}, "a message needs 'text'"),
                ({"type": "shout", "chat": "c1", "user": "ada"}, "unknown type 'shout'"),
            ):
                await client.send(bad)
                error = await client.read()
                assert error["type"] == "error" and error["error"] == "bad_request"
                assert error["detail"].startswith(detail)
            lines = await client.turn({"type": "message", "chat": "c1", "user": "ada", "text": "still here"})
            assert {"type": "message", "chat": "c1", "text": "echo 1: still here", "stopped": False} in lines
            await client.send(b'{"type": "message", "text": "' + b"x" * 2000 + b'"}\n')
            assert (await client.read())["error"] == "too_large"
            assert await client.reader.readline() == b""  # then the connection closes


# -- its settings section ------------------------------------------------------------------------


def test_the_third_party_section_loads_from_the_file_and_the_environment(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "chatgate.toml"
    path.write_text("[linechat]\nport = 7001\nhost = '0.0.0.0'\n")
    settings = load_settings(str(path))
    assert (settings.linechat.host, settings.linechat.port) == ("0.0.0.0", 7001)
    monkeypatch.setenv("LINECHAT_PORT", "7002")  # its conventional variable, declared in its spec
    assert load_settings(str(path)).linechat.port == 7002
    monkeypatch.setenv("CHATGATE_LINECHAT__PORT", "7003")  # the generic one ranks higher
    assert load_settings(str(path)).linechat.port == 7003
    assert load_settings(None).linechat.port == 7003


def test_a_bad_third_party_value_names_the_key_in_one_line(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[linechat]\nport = 'seven'\n")
    with pytest.raises(ConfigError) as info:
        load_settings(str(path))
    message = str(info.value)
    assert message.startswith("config error: linechat.port: ") and "CHATGATE_LINECHAT__PORT" in message
    assert "\n" not in message
    path.write_text("[linechat]\nprot = 1\n")
    with pytest.raises(ConfigError, match=r"unknown option 'linechat\.prot'"):
        load_settings(str(path))
    path.write_text("[linechatt]\nport = 1\n")
    with pytest.raises(ConfigError, match=r"unknown option 'linechatt'"):
        load_settings(str(path))
    monkeypatch.setenv("LINECHAT_PORT", "70000")
    with pytest.raises(ConfigError) as info:
        load_settings(None)
    assert str(info.value).startswith("config error: linechat.port: ") and str(info.value).endswith("or LINECHAT_PORT")


# -- start-up: what runs, what is off, and nothing imported that is off --------------------------


def run_python(code: str, *, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            timeout=60, cwd=cwd or ROOT, env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_start_up_lists_each_adapter_and_imports_none_that_is_off(tmp_path: Path) -> None:
    out = run_python(f"""
        import asyncio, sys
        import gateway
        from gateway.runtime import Gateway
        from gateway.testing import test_settings

        async def main():
            gw = Gateway(gateway.App("x"), test_settings({str(tmp_path)!r}, web={{"enabled": True}}))
            await gw.start()
            try:
                for line in gw.describe():
                    print(line)
            finally:
                await gw.stop()
            for module in ("aiogram", "slack_bolt", "chatgate_linechat.adapter", "adapters.web.adapter"):
                print("imported" if module in sys.modules else "not imported", module)

        asyncio.run(main())
    """)
    lines = out.splitlines()
    assert any(line.startswith("channel: web widget at /") for line in lines)  # the web adapter's own line
    assert "telegram: off (set TELEGRAM_BOT_TOKEN to enable)" in lines
    assert "slack: off (set SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET or SLACK_APP_TOKEN)" in lines
    assert LINECHAT_OFF in lines
    assert "not imported aiogram" in lines and "not imported slack_bolt" in lines
    assert "not imported chatgate_linechat.adapter" in lines and "imported adapters.web.adapter" in lines


def test_the_installed_adapters_come_in_start_up_order() -> None:
    found = discover()
    assert [(i.spec.name, i.distribution) for i in found.installed] == [
        ("slack", "chatgate"), ("telegram", "chatgate"), ("web", "chatgate"), ("linechat", "chatgate-linechat"),
    ]
    assert found.broken == ()


def write_distribution(root: Path, name: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
    """An installed distribution as importlib.metadata finds one on sys.path: a .dist-info folder."""
    info = root / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    points = "".join(f"{key} = {value}\n" for key, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[chatgate.adapters]\n{points}")
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))


def test_an_adapter_that_fails_to_load_is_one_log_line_and_the_others_start(tmp_path: Path, free_port: int) -> None:
    site = tmp_path / "site"
    write_distribution(site, "chatgate-broken", {"broken": "chatgate_broken:spec"}, {
        "chatgate_broken": "raise ImportError('chatgate-broken needs libfoo')\n",
    })
    write_distribution(site, "chatgate-halfway", {"halfway": "chatgate_halfway:spec"}, {
        "chatgate_halfway": """
            from adapters.base import AdapterSpec
            spec = AdapterSpec(name="halfway", adapter="chatgate_halfway_impl:Adapter", enabled=lambda s: True)
        """,
        "chatgate_halfway_impl": "import a_platform_library_that_is_not_installed\n",
    })
    config = tmp_path / "chatgate.toml"
    config.write_text(textwrap.dedent(f"""
        data_dir = "{tmp_path / 'data'}"
        [database]
        url = "sqlite:///{tmp_path / 'data' / 'chatgate.db'}"
        [files]
        dir = "{tmp_path / 'data' / 'files'}"
        [linechat]
        port = 0
        [broken]
        anything = "is kept unchecked while the adapter cannot load"
    """))
    log_path = tmp_path / "run.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "run", str(ROOT / "examples" / "echo.py"), "--config", str(config),
             "--port", str(free_port)],
            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(site)])},
        )
    try:
        deadline = time.monotonic() + 30
        while "ready in" not in log_path.read_text():
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        with urllib.request.urlopen(f"http://127.0.0.1:{free_port}/healthz", timeout=5) as response:
            assert response.status == 200  # the web adapter started
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
    finally:
        if process.poll() is None:
            process.kill()
    text = log_path.read_text()
    errors = [line for line in text.splitlines() if " ERROR " in line]
    assert len(errors) == 2, text
    assert re.search(r"adapter 'broken' from package chatgate-broken 0\.1 failed to load: ImportError: "
                     r"chatgate-broken needs libfoo; the other adapters start without it "
                     r"\(fix or uninstall chatgate-broken\)$", errors[0]), errors
    assert re.search(r"adapter 'halfway' from package chatgate-halfway 0\.1 failed to load: ModuleNotFoundError: "
                     r"No module named 'a_platform_library_that_is_not_installed'", errors[1]), errors
    assert "Traceback" not in text
    assert "broken: failed to load (package chatgate-broken 0.1; see the error above)" in text
    assert "halfway: failed to load (package chatgate-halfway 0.1; see the error above)" in text
    assert "channel: linechat, JSON lines over TCP on 127.0.0.1:" in text and "channel: web widget at /" in text


# -- what find() refuses -------------------------------------------------------------------------


def test_entry_points_that_are_not_adapter_specs_are_refused_with_a_reason(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "plugin_odd.py").write_text(textwrap.dedent("""
        from adapters.base import AdapterSpec
        spec = AdapterSpec(name="odd", adapter="plugin_odd:Nothing", enabled=lambda s: False)
        not_a_spec = object()
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    group = "chatgate.adapters"
    found = find([
        EntryPoint("odd", "plugin_odd:spec", group),
        EntryPoint("odd", "plugin_odd:spec", group),
        EntryPoint("even", "plugin_odd:spec", group),
        EntryPoint("thing", "plugin_odd:not_a_spec", group),
        EntryPoint("gone", "plugin_missing:spec", group),
    ])
    assert [i.spec.name for i in found.installed] == ["odd"]
    problems = {broken.name: broken.problem for broken in found.broken}
    assert problems == {
        "odd": "the name 'odd' is taken by the adapter from an unknown package",
        "even": "the entry point is named 'even' but its spec 'odd'; name both the same",
        "thing": "plugin_odd:not_a_spec is a object, not a gateway.plugins.AdapterSpec",
        "gone": "ModuleNotFoundError: No module named 'plugin_missing'",
    }


@pytest.mark.parametrize(("fields", "problem"), [
    ({"name": "Tele-gram"}, "use lowercase letters, digits and '_'"),
    ({"adapter": "pkg.Adapter"}, "write it as 'module:Class'"),
    ({"environment": {"X_TOKEN": "token"}}, "maps environment variables but has no settings model"),
])
def test_a_malformed_spec_says_what_to_fix(fields: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        AdapterSpec(**{"name": "x", "adapter": "pkg:Adapter", "enabled": lambda s: True, **fields})


def test_an_install_without_chatgates_entry_points_says_to_reinstall(tmp_path: Path) -> None:
    """An environment installed before the entry points existed has no adapters at all: say so
    instead of refusing [telegram] as an unknown option (the first distribution on sys.path wins)."""
    stale = tmp_path / "stale" / "chatgate-0.0.1.dist-info"
    stale.mkdir(parents=True)
    (stale / "METADATA").write_text("Metadata-Version: 2.1\nName: chatgate\nVersion: 0.0.1\n")
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "run", str(ROOT / "examples" / "echo.py")],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "stale"), str(ROOT)])},
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "chatgate's own adapters (web, telegram, slack) are not registered" in lines[0]
    assert "reinstall it with scripts/setup" in lines[0]


def test_chatgate_run_quiets_the_loggers_adapters_name(tmp_path: Path) -> None:
    out = run_python("""
        import logging
        from gateway.cli import configure_logging
        from gateway.config import load_settings
        configure_logging(load_settings(None, logging={"level": "DEBUG"}))
        print(logging.getLogger("aiogram.event").level, logging.getLogger("slack_bolt").level,
              logging.getLogger("chatgate").getEffectiveLevel())
    """, cwd=tmp_path, env={"PYTHONPATH": str(ROOT)})
    assert out.split() == [str(logging.WARNING), str(logging.WARNING), str(logging.DEBUG)]


@pytest.mark.parametrize(("spec", "message"), [
    ('name="server", adapter="chatgate_clash:A", settings=S, enabled=lambda s: False',
     "config error: the adapter 'server' from package chatgate-clash 0.1 is named like chatgate's own [server] "
     "section; that package must rename its entry point"),
    ('name="clash", adapter="chatgate_clash:A", settings=S, environment={"PORT": "port"}, enabled=lambda s: False',
     "config error: the adapter 'clash' from package chatgate-clash 0.1 reads PORT, which already sets "
     "server.port; that package must drop it"),
])
def test_an_adapter_that_would_take_a_core_setting_is_refused(tmp_path: Path, spec: str, message: str) -> None:
    name = re.match(r'name="(\w+)"', spec).group(1)  # type: ignore[union-attr]
    write_distribution(tmp_path / "site", "chatgate-clash", {name: "chatgate_clash:spec"}, {"chatgate_clash": f"""
        from adapters.base import AdapterSpec
        from gateway.config import Section
        class S(Section):
            port: int = 0
        spec = AdapterSpec({spec})
    """})
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "run", str(ROOT / "examples" / "echo.py")],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path / "site")])},
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"chatgate: {message}"]
