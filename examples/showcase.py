"""A tour of what a handler can do: blocks, prompts, session data and collections.

Say "menu" to see the buttons.
"""

from __future__ import annotations

import gateway

app = gateway.App("showcase")
notes = app.collection("notes", scope="user")


@app.enter()
async def welcome(session: gateway.Session) -> None:
    await session.reply("Welcome! Say **menu** to see what I can do.")


@app.message()
async def handle(session: gateway.Session, msg: gateway.Message) -> None:
    text = msg.text.strip().lower()
    session.data["messages"] = session.data.get("messages", 0) + 1
    if msg.attachments:
        names = ", ".join(a.name for a in msg.attachments)
        await session.reply(f"Thanks for {names}.")
    elif text in ("menu", "help", "start", "/start"):
        await session.show_suggestions(
            ["upload a file", "approve something", "my notes", gateway.Suggestion("count", action="count")],
            title="Try one of these",
        )
    elif text == "upload a file":
        upload = await session.prompt_file(message="Send me any file (under 20 MiB).", timeout=120)
        await session.reply(f"Got **{upload.name}** ({upload.size} bytes, {upload.content_type}).")
    elif text == "approve something":
        approved = await session.prompt_approval("Shall I add a note saying you approved?", timeout=120)
        if approved:
            await session.db.notes.insert_one({"text": "approved something"})
        await session.reply("Noted." if approved else "Alright, nothing done.")
    elif text == "my notes":
        rows = await session.db.notes.find(sort={"_id": -1}, limit=5)
        listing = "\n".join(f"- {row['text']}" for row in rows) or "_no notes yet_"
        await session.reply(f"Your latest notes:\n\n{listing}")
    elif text.startswith("note "):
        await session.db.notes.insert_one({"text": msg.text[5:].strip()})
        await session.reply(f"Saved. You have {await session.db.notes.count()} note(s).")
    else:
        await session.set_title(msg.text[:40])
        await session.reply(f"You said: {msg.text}. Say **menu** for options, or `note <text>` to save a note.")


@app.action("count")
async def count(session: gateway.Session, event: gateway.Event) -> None:
    await session.reply(f"We have exchanged {session.data.get('messages', 0)} message(s) in this conversation.")
