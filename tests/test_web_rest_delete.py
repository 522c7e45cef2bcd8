"""REST ``DELETE /api/v1/chat/sessions/{id}`` deletes a session the way every other path does:
``@app.exit`` hooks run with the session, its running turn stops, and its session-scoped
collection and key-value data go with it (it used to delete the rows only)."""

from __future__ import annotations

import asyncio

import pytest
from promptrails import AsyncPromptRails
from promptrails.exceptions import NotFoundError
from sqlmodel import select

import gateway
from adapters.web.testing import base_url, running_gateway
from gateway.store.documents import DocumentRow, KVRow
from tests.support import until

KEY = "delete-key"


def notes_app(exits: list[tuple[str, str | None]], started: asyncio.Event) -> gateway.App:
    app = gateway.App("notes-bot")
    notes = app.collection("notes", scope="session")

    @app.message()
    async def remember(session: gateway.Session, msg: gateway.Message) -> None:
        if msg.text == "wait":
            started.set()
            await asyncio.sleep(60)
            return
        await notes.insert_one({"text": msg.text})
        await session.set("last", msg.text)
        await session.reply(f"noted: {msg.text}")

    @app.exit()
    async def goodbye(session: gateway.Session) -> None:
        exits.append((session.id, await session.get("last")))

    return app


async def test_rest_delete_runs_exit_hooks_and_removes_session_data(tmp_path, database_url) -> None:
    exits: list[tuple[str, str | None]] = []
    app = notes_app(exits, asyncio.Event())
    async with running_gateway(app, tmp_path, web={"api_keys": [KEY]}, database={"url": database_url}) as gw:
        sdk = AsyncPromptRails(api_key=KEY, base_url=base_url(gw), timeout=30)
        try:
            kept = await sdk.chat.create_session(agent_id="notes-bot")
            doomed = await sdk.chat.create_session(agent_id="notes-bot")
            await sdk.chat.send_message(kept.id, content="stays")
            await sdk.chat.send_message(doomed.id, content="goes")
            assert await gw.store.sessions.get(doomed.id) is not None

            await sdk.chat.delete_session(doomed.id)

            assert exits == [(doomed.id, "goes")]  # the hook saw the session and its data
            assert await gw.store.sessions.get(doomed.id) is None
            with pytest.raises(NotFoundError):
                await sdk.chat.get_session(doomed.id)
            # session-scoped documents and KV of the deleted session are gone, the other's stay
            kept_session = await gw.sessions.open(kept.id)
            assert [d["text"] for d in await kept_session.db.notes.find()] == ["stays"]
            assert await kept_session.get("last") == "stays"
            async with gw.store.session() as db:
                scopes = {row.session_id for row in (await db.exec(select(DocumentRow))).all()}
                kv_scopes = {row.scope_id for row in (await db.exec(select(KVRow))).all()}
            assert doomed.id not in scopes and kept.id in scopes
            assert doomed.id not in kv_scopes and kept.id in kv_scopes
        finally:
            await sdk.close()


async def test_rest_delete_stops_the_running_turn(tmp_path) -> None:
    started = asyncio.Event()
    app = notes_app([], started)
    async with running_gateway(app, tmp_path, web={"api_keys": [KEY]}) as gw:
        sdk = AsyncPromptRails(api_key=KEY, base_url=base_url(gw), timeout=30)
        try:
            session = await sdk.chat.create_session(agent_id="notes-bot")
            waiting = asyncio.create_task(sdk.chat.send_message(session.id, content="wait"))
            await asyncio.wait_for(started.wait(), 10)
            await sdk.chat.delete_session(session.id)
            await until(lambda: gw.dispatcher.running_inbound(session.id) is None)
            waiting.cancel()
        finally:
            await sdk.close()
