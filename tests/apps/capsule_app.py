"""A chat app written for the Capsule SDK, as capsule-api.md describes it.

The only change from a real Capsule app is the import line: ``import gateway as cpsl``.
"""

import gateway as cpsl  # the only line that differs from the Capsule original: `import cpsl`

image = cpsl.Image(python_packages=["httpx"]).add_apt_packages("curl")
app = cpsl.App("capsule-notes", image=image, channels=[cpsl.Chat(), cpsl.Telegram()], cpu=0.5, memory=512,
               secrets=["OPENAI_API_KEY"])
notes = app.collection("notes", scope="user")
app.theme(preset="ocean", primary="#0ea5e9")  # hosted-UI settings: accepted, not used
app.home(title="Notes", suggestions=[cpsl.Suggestion("Menu", prompt="menu", primary=True)])


@app.boot()
def boot():
    app.booted = True


@app.message()
async def chat(session: cpsl.Session, msg: cpsl.Message):
    assert cpsl.current_session() is session
    count = session.data.get("turns", 0) + 1
    session.data["turns"] = count
    text = msg.text.strip()
    if text == "menu":
        await session.show_suggestions(
            ["list notes", cpsl.Suggestion("Clear", action=clear_notes, accent="red", primary=True),
             {"label": "Help", "target": "prompt", "value": "help"}],
            title="What next?",
        )
        return
    if text.startswith("note "):
        await session.db.notes.insert_one({"text": text[5:]})
        await session.notify("Saved", detail="notes updated")
        await session.reply(f"saved ({await session.db.notes.count()} notes)")
        return
    if text == "list notes":
        rows = await session.db.notes.find(sort={"_id": 1})
        await session.reply(", ".join(r["text"] for r in rows) or "no notes")
        return
    if text == "confirm":
        ok = await session.prompt_approval("Really?", approve_label="Yes", reject_label="No", timeout=5)
        await session.reply("confirmed" if ok else "cancelled")
        return
    history = session.chat_messages(msg)
    async with session.stream_reply() as reply:
        for word in f"turn {count}: you said {text} ({len(history)} messages)".split(" "):
            reply.write(word + " ")


@app.action("clear_notes")
async def clear_notes(session: cpsl.Session, event: cpsl.Event):
    deleted = await session.db.notes.delete_many({})
    await session.reply(f"cleared {deleted['deleted']}")


@app.endpoint("GET", "/hello", authorized=False)
async def hello(ctx: cpsl.RequestContext):
    return {"hello": ctx.user.id, "authenticated": ctx.authenticated}


@app.endpoint("POST", "/echo", authorized=False)
async def echo(request):
    body = await request.json()
    return body


@app.endpoint("GET", "/private")
async def private(ctx):
    return {"user": ctx.user.id}


@app.endpoint("POST", "/upstream", authorized=False)
async def upstream(request):
    import json

    await request.json()
    return json.loads("{not json from an upstream service")  # the app's own bug: a 500, not a 400


@app.endpoint("GET", "/text", authorized=False)
async def text(request):
    return [1, 2, 3]  # not a dict: Capsule sends str()


@app.data("stats", access="public")
async def stats(ctx, limit: str = "10"):
    return {"limit": int(limit), "user": ctx.user.id}


@app.data("secret", access="authenticated")
async def secret():
    return {"ok": True}


@app.data("page")
async def page(offset: int, size: int = 10, desc: bool = False, scale: float = 1.0):
    rows = [n * scale for n in range(offset, offset + size)]
    return {"rows": rows[::-1] if desc else rows}


@app.data("broken")
async def broken():
    return len(None)  # a TypeError inside the handler is the app's bug: a 500


@app.data("my_notes", access="authenticated")
async def my_notes(session: cpsl.Session):
    rows = await notes.find(sort={"_id": 1})  # the CollectionRef, scoped by the session's user
    return {"notes": [r["text"] for r in rows], "current": cpsl.current_session() is session}


@app.data("greeting")
async def greeting(session: cpsl.Session | None = None, name: str = "you"):
    where = f"session {session.id}" if session is not None else "no session"
    return {"text": f"hello {name} ({where})"}


@app.endpoint("POST", "/notes")
async def add_note(ctx: cpsl.RequestContext):
    body = await ctx.request.json()
    row = await notes.insert_one({"text": body["text"]})  # scoped by the authenticated caller
    return {"owner": row["_user_id"], "count": await notes.count(), "current": cpsl.current_session(),
            "tags": {"new"}}  # a set: sent as a JSON list
