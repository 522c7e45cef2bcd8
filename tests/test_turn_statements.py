"""What one text turn costs the store: counted statements, not timings.

A turn answering a message in a known session reads the session once (the turn's own read; the
intake checks it exists inside the write that records the event) and binds each attachment to
its adapter once (at intake; only an event recovered after a restart is bound in the turn)."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from typing import Any, ClassVar

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

import gateway
from adapters.base import Adapter, Capabilities, Inbound, Limits, PlatformUser
from gateway.runtime import Gateway
from gateway.testing import test_settings
from gateway.types import Attachment, Message, SessionChannel
from tests.support import until


class CountingAdapter(Adapter):
    """A channel whose outbox collects replies and whose attachments count their bindings."""

    channel_types: ClassVar[tuple[str, ...]] = ("counted",)
    limits: ClassVar[Limits] = Limits(max_text=4096)
    capabilities: ClassVar[Capabilities] = Capabilities()

    def __init__(self) -> None:
        self.replies: asyncio.Queue[str] = asyncio.Queue()
        self.bound: Counter[str] = Counter()

    async def start(self, gateway: Any) -> None:
        return None

    async def stop(self) -> None:
        return None

    def outbox(self, channel: SessionChannel, session_id: str, turn: str | None = None) -> Any:
        adapter = self

        class Outbox:
            async def send_text(self, message_id: str, text: str) -> list[str]:
                adapter.replies.put_nowait(text)
                return [message_id]

            async def end_turn(self, inbound_id: str | None, error: str | None) -> None:
                return None

        return Outbox()

    def resolve_attachment(self, attachment: Attachment) -> Attachment:
        self.bound[attachment.url] += 1

        async def fetch() -> bytes:
            return b"%PDF-1.7"

        return Attachment(attachment.name, attachment.content_type, attachment.url, attachment.size, fetch=fetch)


class StatementLog:
    """Every SQL statement any engine runs while ``recording`` (a listener, not a patch)."""

    def __init__(self) -> None:
        self.recording = False
        self.statements: list[str] = []

    def __call__(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if self.recording:
            self.statements.append(" ".join(statement.split()))

    def session_reads(self) -> list[str]:
        return [s for s in self.statements if re.match(r"SELECT .* FROM sessions\b", s)]


@pytest.fixture
def statements() -> Any:
    log = StatementLog()
    event.listen(Engine, "before_cursor_execute", log)
    yield log
    event.remove(Engine, "before_cursor_execute", log)


def echo_app() -> gateway.App:
    app = gateway.App("counted")

    @app.message()
    async def echo(session: gateway.Session, msg: gateway.Message) -> None:
        names = [a.name for a in msg.attachments or []]
        contents = [await a.read() for a in msg.attachments or []] if names else []
        await session.reply(f"echo: {msg.text} {names} {[len(c) for c in contents]}")

    return app


async def test_one_text_turn_reads_its_session_once_and_binds_attachments_once(
    tmp_path, database_url, statements
) -> None:
    adapter = CountingAdapter()
    gw = Gateway(echo_app(), test_settings(tmp_path, database={"url": database_url}), adapters=[adapter])
    await gw.start()
    try:
        user = await gw.sessions.resolve_user(PlatformUser("counted", "u1"))
        record = await gw.sessions.create(SessionChannel("counted"), user)

        async def turn(key: str, message: Message) -> str:
            await gw.submit(Inbound("message", key, SessionChannel("counted"), PlatformUser("counted", "u1"),
                                    message=message, session_id=record.id))
            return await asyncio.wait_for(adapter.replies.get(), 10)

        await turn("counted:0", Message("first", "user", "counted"))  # the session's first turn runs @app.enter
        await until(lambda: gw.dispatcher.running_inbound(record.id) is None)
        attachment = Attachment("report.pdf", "application/pdf", "counted-file:1", 8)
        statements.recording = True
        reply = await turn("counted:1", Message("hello", "user", "counted", attachments=[attachment]))
        await until(lambda: gw.dispatcher.running_inbound(record.id) is None)  # marked done
        statements.recording = False
    finally:
        await gw.stop()

    assert reply == "echo: hello ['report.pdf'] [8]"
    assert len(statements.session_reads()) == 1, statements.session_reads()
    assert adapter.bound == {"counted-file:1": 1}
    writes = [s for s in statements.statements if s.startswith(("INSERT", "UPDATE", "DELETE"))]
    # the event and the user's message, in one transaction with the session check; the reply; done
    assert [w.split(" (")[0].split(" SET")[0] for w in writes] == [
        "UPDATE sessions", "INSERT INTO inbox", "INSERT INTO messages", "INSERT INTO messages", "UPDATE inbox",
    ], "\n".join(w[:90] for w in writes)


async def test_an_event_for_a_session_that_does_not_exist_records_nothing(tmp_path, database_url) -> None:
    adapter = CountingAdapter()
    gw = Gateway(echo_app(), test_settings(tmp_path, database={"url": database_url}), adapters=[adapter])
    await gw.start()
    try:
        inbound = Inbound("message", "counted:ghost", SessionChannel("counted"), PlatformUser("counted", "u1"),
                          message=Message("anyone?", "user", "counted"), session_id="01NOSUCHSESSION")
        with pytest.raises(gateway.types.UnknownSession):
            await gw.submit(inbound)
        assert await gw.store.inbox.unfinished() == []
    finally:
        await gw.stop()
