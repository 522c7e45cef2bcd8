"""Capsule kind 6, HTTP endpoints and hooks: a public webhook, an authorized endpoint, a raw
request handler, a data source, and the boot, shutdown, enter and exit hooks."""

import gateway as cpsl  # the only line that differs from the Capsule original: `import cpsl`

app = cpsl.App("webhooks", image=cpsl.Image())
events = app.collection("events", scope="app")
app.lifecycle = []


@app.boot()
def boot():
    app.lifecycle.append("boot")


@app.shutdown()
async def shutdown():
    app.lifecycle.append("shutdown")


@app.enter()
async def enter(session: cpsl.Session):
    await session.reply("Welcome! Send me anything.")


@app.exit()
async def leave(session: cpsl.Session):
    await app.db.events.insert_one({"kind": "exit", "session": session.id})


@app.endpoint("POST", "/webhook", authorized=False)
async def webhook(ctx: cpsl.RequestContext):
    body = await ctx.request.json()
    await app.db.events.insert_one({"kind": "webhook", "body": body})
    return {"ok": True, "authenticated": ctx.authenticated}


@app.endpoint("GET", "/me")
async def me(ctx: cpsl.RequestContext):
    return {"user": ctx.user.id}


@app.endpoint("GET", "/echo", authorized=False)
async def echo(request):
    return {"q": request.query.get("q", "")}


@app.data("events")
async def event_counts(kind: str = "webhook", limit: int = 10):
    rows = await app.db.events.find({"kind": kind}, limit=limit)
    return {"kind": kind, "count": len(rows)}


@app.message()
async def chat(session: cpsl.Session, msg: cpsl.Message):
    received = await app.db.events.count({"kind": "webhook"})
    await session.reply(f"{msg.text} (webhooks so far: {received})")
