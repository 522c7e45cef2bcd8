"""Capsule kind 5, schedules and tasks: a session-bound task shown as a live task card, a task
queued from a cron schedule, and the task query (``app.tasks``, ``app.<task>.count``)."""

import gateway as cpsl  # the only line that differs from the Capsule original: `import cpsl`

app = cpsl.App("reports", image=cpsl.Image())
runs = app.collection("runs", scope="app")


@app.task(retries=1, timeout=30)
async def build_report(session: cpsl.Session, topic: str):
    await session.reply(f"Report on {topic}: 42 sales")
    return {"topic": topic, "sales": 42}


@app.task()
async def cleanup(days: int):
    await app.db.runs.insert_one({"kind": "cleanup", "days": days})


@app.schedule("0 9 * * *")
async def morning():
    owner = cpsl.current_session()
    await app.db.runs.insert_one({"kind": "morning", "owner": owner.user.id, "session": owner.id})
    await app.cleanup.submit(days=7)


@app.message()
async def chat(session: cpsl.Session, msg: cpsl.Message):
    command, _, argument = msg.text.partition(" ")
    if command == "report":
        handle = await app.build_report.submit(session=session, display_name=f"{argument} report", topic=argument)
        await session.show_task(handle, message="Building your report")
        session.data["task"] = handle.task_id
        await session.reply("On it")
    elif command == "status":
        handle = await app.tasks.get(session.data["task"])
        done = await app.build_report.count(status="completed")
        everything = await app.tasks.find(limit=10)
        await session.reply(f"{handle.display_name}: {await handle.status()}; {done} done; {len(everything)} tasks")
