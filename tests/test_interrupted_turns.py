"""An event whose run was interrupted runs again; what that run already sent and stored is not
sent or stored again (``Conversation.replay``): the platform sees at most the one reply that was
in flight when the process died."""

from __future__ import annotations

import asyncio

import gateway
from adapters.base import Inbound, PlatformUser
from gateway.runtime import Gateway
from gateway.store import Store
from gateway.testing import test_settings
from gateway.types import Message, SessionChannel
from tests.support import TextChannel


def chatty_app() -> gateway.App:
    app = gateway.App("chatty")

    @app.message()
    async def answer(session: gateway.Session, msg: gateway.Message) -> None:
        await session.reply(f"first: {msg.text}")
        await session.reply("second")
        await session.reply("third")

    return app


async def test_a_rerun_skips_the_replies_its_interrupted_run_stored(tmp_path) -> None:
    settings = test_settings(tmp_path)
    store = Store(settings.database.url)
    await store.open()
    user = await store.users.resolve(PlatformUser("collected", "u1"))
    record = await store.sessions.create(SessionChannel("collected"), user)
    inbound = Inbound("message", "collected:1", SessionChannel("collected"), PlatformUser("collected", "u1"),
                      message=Message("hi", "user", "collected"), session_id=record.id)
    entry = await store.inbox.record(record.id, inbound.dedup_key, "message", inbound.to_json(), user_text="hi")
    # The process died after sending and storing the first reply, mid-way through the second.
    await store.messages.add(record.id, "assistant", "first: hi", inbound_id=entry.id)
    await store.close()

    adapter = TextChannel("collected")
    gw = Gateway(chatty_app(), settings, adapters=[adapter])
    await gw.start()
    try:
        await asyncio.wait_for(adapter.ended.wait(), 10)
        await gw.dispatcher.wait_idle(10)
        messages = await gw.store.messages.of_turn(record.id, entry.id)
        unfinished, row = await gw.store.inbox.unfinished(), await gw.store.inbox.get(entry.id)
    finally:
        await gw.stop()
    assert adapter.texts == ["second", "third"]  # the stored first reply is not sent again
    assert [(m.role, m.text) for m in messages] == [
        ("user", "hi"), ("assistant", "first: hi"), ("assistant", "second"), ("assistant", "third"),
    ]
    assert unfinished == [] and row is not None and row.status == "done"


async def test_a_rerun_that_says_something_else_sends_it_all(tmp_path) -> None:
    """The replay ends at the first reply that differs: from there the rerun is new."""
    settings = test_settings(tmp_path)
    store = Store(settings.database.url)
    await store.open()
    user = await store.users.resolve(PlatformUser("collected", "u1"))
    record = await store.sessions.create(SessionChannel("collected"), user)
    inbound = Inbound("message", "collected:1", SessionChannel("collected"), PlatformUser("collected", "u1"),
                      message=Message("hi", "user", "collected"), session_id=record.id)
    entry = await store.inbox.record(record.id, inbound.dedup_key, "message", inbound.to_json(), user_text="hi")
    await store.messages.add(record.id, "assistant", "an answer from a different model", inbound_id=entry.id)
    await store.close()

    adapter = TextChannel("collected")
    gw = Gateway(chatty_app(), settings, adapters=[adapter])
    await gw.start()
    try:
        await asyncio.wait_for(adapter.ended.wait(), 10)
    finally:
        await gw.stop()
    assert adapter.texts == ["first: hi", "second", "third"]
