"""Capsule kind 4, state and collections: ``session.data``, the scoped key-value store, a
user-scoped collection queried three ways, and an app-wide one."""

import gateway as cpsl  # the only line that differs from the Capsule original: `import cpsl`

app = cpsl.App("todos", image=cpsl.Image())
todos = app.collection("todos", columns=["title", cpsl.Column("done", "boolean")], scope="user", sortable=True)
audit = app.collection("audit", scope="app")


@app.message()
async def chat(session: cpsl.Session, msg: cpsl.Message):
    session.data["turns"] = session.data.get("turns", 0) + 1
    command, _, argument = msg.text.partition(" ")
    if command == "add":
        titles = [t.strip() for t in argument.split(",") if t.strip()]
        rows = await session.db.todos.insert_many(documents=[{"title": t, "done": False} for t in titles])
        await app.db.audit.insert_one({"event": "add", "count": len(rows)})
        await session.reply(f"Added {len(rows)}")
    elif command == "done":
        result = await session.db.todos.update_one({"title": argument}, {"done": True})
        await session.reply(f"Marked {result['modified']}")
    elif command == "list":
        open_items = await todos.filter(done=False).order_by("title").all()
        await session.reply(", ".join(row["title"] for row in open_items) or "Nothing to do")
    elif command == "count":
        finished = await session.db.todos.count({"done": True})
        first = await todos.filter(title__startswith="b").first()
        await session.reply(f"{finished} done; first b: {first['title'] if first else '-'}")
    elif command == "lang":
        await session.set("lang", argument, scope="user")
        await app.set("last_lang", argument)
        await session.reply("Saved")
    elif command == "whoami":
        lang = await session.get("lang", "en", scope="user")
        last = await app.get("last_lang", "none")
        events = await app.db.audit.count()
        await session.reply(f"lang={lang} last={last} audit={events} turns={session.data['turns']}")
