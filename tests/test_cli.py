"""The command line, run as real processes: --help everywhere, init, chat, and a crash mid-handler."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHATGATE = [sys.executable, "-m", "gateway.cli"]
THIS_TREE = {"PYTHONPATH": str(ROOT)}  # the chatgate of this tree, whichever one the venv has installed


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None, **kwargs):
    return subprocess.run([*CHATGATE, *args], capture_output=True, text=True, timeout=60, cwd=cwd,
                          env={**os.environ, **THIS_TREE, **(env or {})}, **kwargs)


def every_command() -> list[list[str]]:
    """Every command and subcommand the parser has, found by walking it (a new one is covered)."""
    import argparse

    from gateway.cli import build_parser

    found: list[list[str]] = []

    def walk(parser: argparse.ArgumentParser, path: list[str]) -> None:
        found.append(path)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, [*path, name])

    walk(build_parser(), [])
    return found


def test_the_documented_commands_exist():
    commands = every_command()
    for expected in (["run"], ["chat"], ["init"], ["integrations", "list"]):
        assert expected in commands


@pytest.mark.parametrize("command", every_command(), ids=lambda c: " ".join(c) or "chatgate")
def test_help_everywhere(command):
    result = run_cli(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: {' '.join(['chatgate', *command])}")
    assert result.stderr == ""


def test_no_command_is_a_usage_error():
    result = run_cli()
    assert result.returncode == 2 and "usage" in result.stderr


def test_bad_app_path_says_what_to_do(tmp_path):
    result = run_cli("run", "nope.py", cwd=tmp_path)
    assert result.returncode == 2 and "no such file: nope.py" in result.stderr
    (tmp_path / "other.py").write_text("x = 1\n")
    result = run_cli("run", "other.py:app", cwd=tmp_path)
    assert result.returncode == 2 and "has no attribute 'app'" in result.stderr
    result = run_cli("run", "other.py:x", cwd=tmp_path)
    assert result.returncode == 2 and "not a gateway.App" in result.stderr
    (tmp_path / "time.py").write_text((ROOT / "examples" / "echo.py").read_text())  # names a module in use
    result = run_cli("run", "time.py", cwd=tmp_path)
    assert result.returncode == 2 and "the module name 'time' is already taken" in result.stderr


def test_a_module_app_is_found_from_the_working_directory(tmp_path):
    """``chatgate chat package.module:attr`` through the installed console script, whose own
    sys.path does not hold the working directory."""
    script = Path(sys.executable).with_name("chatgate")
    if not script.exists():
        pytest.skip("the chatgate console script is not installed in this environment")
    package = tmp_path / "botpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "bot.py").write_text((ROOT / "examples" / "echo.py").read_text().replace('App("echo")', 'App("pkg")'))
    result = subprocess.run([str(script), "chat", "botpkg.bot:app"], input="hi\n", capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "chatting with 'pkg'" in result.stdout and "bot> echo: hi" in result.stdout
    result = subprocess.run([str(script), "run", "botpkg.nothere:app"], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    assert result.returncode == 2 and "cannot import module 'botpkg.nothere'" in result.stderr


def test_an_endpoint_on_one_of_chatgates_own_routes_is_refused_at_start(tmp_path, free_port):
    for path in ("/", "/healthz"):
        (tmp_path / "clash.py").write_text(
            "import gateway\n"
            "app = gateway.App('clash')\n"
            f"@app.endpoint('GET', {path!r}, authorized=False)\n"
            "async def mine(request):\n"
            "    return {'mine': True}\n"
        )
        result = run_cli("run", "clash.py", "--port", str(free_port), "--database",
                         f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}", cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert f"@app.endpoint('GET', {path!r}) has the path of one of chatgate's own routes" in result.stderr
        assert "Traceback" not in result.stderr


def test_init_writes_a_runnable_starter(tmp_path):
    result = run_cli("init", str(tmp_path / "bot"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "bot" / "app.py").exists() and (tmp_path / "bot" / "chatgate.toml").exists()
    again = run_cli("init", str(tmp_path / "bot"))
    assert again.returncode == 2 and "--force" in again.stderr
    chat = run_cli("chat", "app.py", cwd=tmp_path / "bot", input="hello\n")
    assert chat.returncode == 0, chat.stderr
    assert "You said: hello" in chat.stdout


def test_chat_runs_a_capsule_app_in_the_terminal(tmp_path):
    app = ROOT / "tests" / "apps" / "capsule_app.py"
    script = "hi\nnote milk\nconfirm\napprove\nmenu\n/1\n"
    result = run_cli("chat", str(app), "--user", "ada", cwd=tmp_path, input=script)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "turn 1: you said hi" in out
    assert "saved (1 notes)" in out
    assert "? Really? — type approve or reject" in out and "confirmed" in out
    assert "[/1] list notes" in out
    assert out.rstrip().splitlines()[-1].endswith("milk") or "bot> milk" in out
    # The same conversation continues next time.
    again = run_cli("chat", str(app), "--user", "ada", cwd=tmp_path, input="list notes\n")
    assert "bot> milk" in again.stdout


def test_chat_answers_a_file_prompt_with_a_path_and_shows_blocks_as_text(tmp_path):
    upload = tmp_path / "notes.txt"
    upload.write_text("hello")
    script = f"upload a file\n{tmp_path / 'missing.txt'}\n{upload}\nmenu\n/4\n"
    result = run_cli("chat", str(ROOT / "examples" / "showcase.py"), "--user", "ada", cwd=tmp_path, input=script)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "bot> Welcome! Say **menu**" in out  # @app.enter
    assert "📎 Send me any file (under 20 MiB). — type a file path" in out
    assert f"no such file: {tmp_path / 'missing.txt'}" in out
    assert "✓ received notes.txt" in out and "Got **notes.txt** (5 bytes, text/plain)." in out
    assert "  Try one of these\n  [/1] upload a file" in out and "[/4] count" in out
    assert "We have exchanged 2 message(s)" in out  # the action button, with session.data kept


def test_chat_streams_the_assistant_example(tmp_path):
    result = run_cli("chat", str(ROOT / "examples" / "assistant.py"), cwd=tmp_path,
                     input="what is chatgate?\nthanks\n")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "… Thinking…" in out
    assert "bot> Good question. You asked: *what is chatgate?* — this is message 1" in out
    assert "bot> Noted: thanks. (That is message 2;" in out  # chat_messages carried the history


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _get_json(url: str, key: str):
    request = urllib.request.Request(url, headers={"X-API-Key": key})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def _post_json(url: str, key: str, body: dict, timeout: float = 5):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"X-API-Key": key, "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


async def _statuses(db: Path, session_id: str) -> list[tuple[str, str]]:
    from gateway.store import Store

    store = Store(f"sqlite+aiosqlite:///{db}")
    await store.open()
    try:
        messages, _ = await store.messages.page(session_id)
        return [(m.role, m.status) for m in messages]
    finally:
        await store.close()


def _start(tmp_path: Path, port: int, log_name: str, **extra_env: str) -> subprocess.Popen:
    env = {
        **os.environ,
        **THIS_TREE,
        **extra_env,
        "CRASHY_MARKER_DIR": str(tmp_path),
        "CHATGATE_WEB__API_KEYS": '["test-key"]',
        "CHATGATE_WEB__SEND_TIMEOUT": "0.5",
        "CHATGATE_DATA_DIR": str(tmp_path / "data"),
        "CHATGATE_FILES__DIR": str(tmp_path / "data" / "files"),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'data' / 'chatgate.db'}",
    }
    log = open(tmp_path / log_name, "w")
    return subprocess.Popen([*CHATGATE, "run", str(ROOT / "tests" / "apps" / "crashy_app.py"), "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)


def test_killed_mid_handler_the_event_runs_again_after_restart(tmp_path, free_port):
    base = f"http://127.0.0.1:{free_port}"
    first = _start(tmp_path, free_port, "first.log")
    try:
        _wait_for(lambda: "ready in" in (tmp_path / "first.log").read_text(), 30, "the first start")
        startup = re.search(r"ready in ([\d.]+) s \(([\d.]+) s since the process started\)",
                            (tmp_path / "first.log").read_text())
        assert startup and float(startup.group(2)) >= float(startup.group(1))  # imports count too
        # server.event_loop = "auto": uvloop when installed (chatgate[fast]), and the log says so
        expected_loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
        assert f"event loop: {expected_loop}" in (tmp_path / "first.log").read_text()
        session = _post_json(f"{base}/api/v1/chat/sessions", "test-key", {"agent_id": "default"})["data"]
        # send_message answers with the stored user message once send_timeout passes.
        stored = _post_json(f"{base}/api/v1/chat/sessions/{session['id']}/messages", "test-key",
                            {"content": "precious"})["data"]
        assert stored["role"] == "user"
        _wait_for(lambda: (tmp_path / "runs-precious").exists(), 10, "the handler to start")
        first.send_signal(signal.SIGKILL)  # no chance to clean up
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    second = _start(tmp_path, free_port, "second.log", CHATGATE_SERVER__EVENT_LOOP="asyncio")
    try:
        _wait_for(lambda: "ready in" in (tmp_path / "second.log").read_text(), 30, "the restart")
        assert "event loop: asyncio" in (tmp_path / "second.log").read_text()

        def reply():
            messages = _get_json(f"{base}/api/v1/chat/sessions/{session['id']}/messages?limit=50", "test-key")
            texts = [m["content"] for m in messages["data"]]
            return texts if any(t.startswith("handled precious") for t in texts) else None

        texts = _wait_for(reply, 15, "the event to run again")
        # The reply that was streaming when the process died had no text yet (it lived only in
        # the dead process): recovery removes it, so the history keeps no empty failed reply.
        assert texts == ["precious", "handled precious on run 2"]
        statuses = asyncio.run(_statuses(tmp_path / "data" / "chatgate.db", session["id"]))
        assert statuses == [("user", "complete"), ("assistant", "complete")]
        assert "interrupted by the last shutdown" in (tmp_path / "second.log").read_text()
        second.send_signal(signal.SIGTERM)
        assert second.wait(15) == 0
        assert "stopped" in (tmp_path / "second.log").read_text()
    finally:
        if second.poll() is None:
            second.kill()


def test_chat_shows_each_block_kind_as_a_readable_line(tmp_path):
    import io

    from adapters.console import ConsoleAdapter
    from gateway.testing import test_settings

    out = io.StringIO()
    console = ConsoleAdapter(test_settings(tmp_path), out=out)
    blocks = [
        ("step_status", {"label": "Fetching", "status": "running", "detail": "page 1"}),
        ("activity", {"label": "Read a file", "links": [{"label": "notes", "url": "https://x.example/n"}]}),
        ("integration_prompt", {"type": "github", "reason": "to read repos", "blocking": True,
                                "connect_url": "http://127.0.0.1/integrations/github/connect?t=1"}),
        ("integration_prompt", {"type": "github", "completed": True}),
        ("integration_prompt", {"type": "linear", "declined": True}),
        ("approval_prompt", {"message": "go?", "completed": True, "approved": False, "timed_out": True}),
        ("session_event", {"event": "progress", "payload": {"pct": 5}}),
        ("image", {"url": "https://x.example/cat.png", "alt": "cat"}),
    ]
    for index, (kind, payload) in enumerate(blocks):
        console.show_block({"id": f"b{index}", "type": kind, "payload": payload})
    assert out.getvalue().splitlines() == [
        "  • Fetching (running) — page 1",
        "  • Read a file",
        "    notes: https://x.example/n",
        "  🔗 connect github — to read repos: http://127.0.0.1/integrations/github/connect?t=1",
        "  ✓ github connected",
        "  ✗ linear not connected",
        "  (the approval timed out)",
        "  [image] cat https://x.example/cat.png",
    ]
