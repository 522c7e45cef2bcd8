"""``chatgate chat`` renders Markdown in a terminal and prints it plain into a pipe (issue 14, item 8).

Run as real processes: through a pipe (plain, automatically), and under a pseudo-terminal (the
``pty`` module), where replies are rendered by ``rich`` and a streamed reply is redrawn in place.
"""

from __future__ import annotations

import os
import pty
import re
import secrets
import select
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parent.parent
CHATGATE = [sys.executable, "-m", "gateway.cli"]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

MARKDOWN_APP = '''
import asyncio

import gateway

app = gateway.App("markdown")

REPLY = (
    "Here is the **menu**:\\n\\n- `soup` of the day\\n- *fresh* bread\\n\\n"
    "| dish | price |\\n|---|---|\\n| soup | 4 |"
)


@app.message()
async def handle(session: gateway.Session, msg: gateway.Message) -> None:
    if msg.text == "tall":  # a reply three times the terminal's height, streamed line by line
        async with session.stream_reply() as reply:
            for i in range(1, 61):
                reply.write(f"line {i:02d} is **bold**\\n\\n")
                await asyncio.sleep(0.01)
        return
    if msg.text == "stream":
        async with session.stream_reply() as reply:
            for word in "A **streamed** answer, word by word, to the end.".split(" "):
                reply.write(word + " ")
                await asyncio.sleep(0.03)
        return
    await session.reply(REPLY)
'''


@pytest.fixture
def app_file(tmp_path: Path) -> Path:
    path = tmp_path / "markdown_app.py"
    path.write_text(MARKDOWN_APP)
    return path


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "TERM", "COLUMNS", "LINES")}
    return {**env, "TERM": "xterm-256color", "PYTHONPATH": str(ROOT)}


def test_piped_output_is_the_markdown_as_written(app_file: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [*CHATGATE, "chat", str(app_file)],
        input="menu\nstream\n",
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=environment(),
    )
    assert result.returncode == 0, result.stderr
    assert "bot> Here is the **menu**:\n\n- `soup` of the day" in result.stdout
    assert "bot> A **streamed** answer, word by word, to the end." in result.stdout
    assert not ANSI.search(result.stdout)  # no colours, no cursor movement in a pipe


def test_help_documents_plain(tmp_path: Path) -> None:
    result = subprocess.run(
        [*CHATGATE, "chat", "--help"], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=environment()
    )
    assert result.returncode == 0
    assert "--plain" in result.stdout and "not a terminal" in result.stdout


class Terminal:
    """``chatgate chat`` on a pseudo-terminal: what a user at a terminal sees, bytes and all."""

    def __init__(self, *args: str, cwd: Path) -> None:
        self.master, slave = pty.openpty()
        os.set_blocking(self.master, False)
        env = {**environment(), "COLUMNS": "100", "LINES": "40"}
        self.process = subprocess.Popen(
            [*CHATGATE, "chat", *args], stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=env
        )  # input() writes its prompt to stderr: all three are the terminal, as in a shell
        os.close(slave)
        self.output = b""

    def read_until(self, marker: bytes, *, after: int = 0, timeout: float = 30.0) -> str:
        """Read until ``marker`` shows up past byte ``after``; everything from there, decoded."""
        deadline = time.monotonic() + timeout
        while marker not in self.output[after:]:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{marker!r} not seen; the terminal shows {self.output[-2000:]!r}")
            readable, _, _ = select.select([self.master], [], [], left)
            if readable:
                try:
                    self.output += os.read(self.master, 65536)
                except OSError:  # the process ended and closed the terminal
                    break
        return self.output[after:].decode("utf-8", "replace")

    def ask(self, line: str) -> str:
        """Type a line; what the terminal shows until the next prompt."""
        start = len(self.output)
        self.type(line + "\n")
        return self.read_until(b"you> ", after=start)

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def close(self) -> int:
        self.type("\x04")  # Ctrl-D at the prompt quits
        try:
            return self.process.wait(timeout=30)
        finally:
            os.close(self.master)


def test_a_terminal_shows_rendered_markdown_and_redraws_a_stream_in_place(app_file: Path, tmp_path: Path) -> None:
    terminal = Terminal(str(app_file), cwd=tmp_path)
    try:
        terminal.read_until(b"you> ")
        shown = terminal.ask("menu")
        text = ANSI.sub("", shown)
        assert "Here is the menu:" in text and "**" not in text  # bold rendered, not starred
        assert "\x1b[1m" in shown  # bold, as the terminal draws it
        assert "• " in text and "soup of the day" in text and "`" not in text  # a list, code without backticks
        assert re.search(r"dish\s+price", text) and "───" in text and "|---|" not in text  # a table, laid out
        streamed = terminal.ask("stream")
        text = ANSI.sub("", streamed)
        assert "A streamed answer" in text and "**" not in text
        assert "\x1b[1A" in streamed or "\x1b[2K" in streamed  # redrawn in place: cursor up / erase line
        assert "\x1b[1m" in streamed
    finally:
        assert terminal.close() == 0


def test_plain_in_a_terminal_prints_the_markdown_as_written(app_file: Path, tmp_path: Path) -> None:
    terminal = Terminal(str(app_file), "--plain", cwd=tmp_path)
    try:
        terminal.read_until(b"you> ")
        shown = terminal.ask("menu")
        assert "bot> Here is the **menu**:" in shown
        assert "\x1b[1m" not in shown
    finally:
        assert terminal.close() == 0


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_a_reply_taller_than_the_terminal_streams_without_copies_in_the_scrollback(
    app_file: Path, tmp_path: Path
) -> None:
    """In tmux (a real terminal emulator with a scrollback): while a tall reply streams, its newest
    lines are redrawn in place; afterwards screen and scrollback hold every line exactly once."""
    server = ["tmux", "-L", f"chatgate-test-{secrets.token_hex(4)}", "-f", "/dev/null"]
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in environment().items() if k in ("PYTHONPATH", "PATH", "HOME"))
    # the pane's own size, not COLUMNS/LINES inherited from the test run (rich would believe them)
    chat = f"{shlex.quote(sys.executable)} -m gateway.cli chat {shlex.quote(str(app_file))}"
    command = f"cd {shlex.quote(str(tmp_path))} && env -u COLUMNS -u LINES {env} TERM=screen-256color {chat}"
    subprocess.run([*server, "new-session", "-d", "-x", "100", "-y", "20", "-s", "chat", command], check=True)
    try:
        subprocess.run([*server, "set-option", "-t", "chat", "remain-on-exit", "on"], check=True)

        def pane() -> str:
            shown = subprocess.run(
                [*server, "capture-pane", "-p", "-J", "-S", "-", "-t", "chat"], capture_output=True, text=True
            )
            return shown.stdout

        def wait_for(predicate: Callable[[str], bool]) -> str:
            deadline = time.monotonic() + 30
            while not predicate(text := pane()):
                assert time.monotonic() < deadline, text
                time.sleep(0.05)
            return text

        wait_for(lambda text: "you> " in text)
        subprocess.run([*server, "send-keys", "-t", "chat", "tall", "Enter"], check=True)
        text = wait_for(lambda text: text.rstrip().endswith("you>") and "line 60" in text)
    finally:
        subprocess.run([*server, "kill-server"], capture_output=True)
    for i in range(1, 61):
        assert text.count(f"line {i:02d} is bold") == 1, (i, text)
    assert "**" not in text
