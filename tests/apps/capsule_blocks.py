"""Capsule kind 2, blocks: a title, steps and an activity that update in place, a custom card
shown and then updated under the same id, a status pill, suggestions and the action they call."""

import gateway as cpsl  # the only line that differs from the Capsule original: `import cpsl`

app = cpsl.App("trip-planner", image=cpsl.Image())


@app.message()
async def chat(session: cpsl.Session, msg: cpsl.Message):
    await session.set_title(f"Trip to {msg.text}")
    step = await session.show_step("Searching flights", status="running", detail="3 airlines")
    await session.notify("Searching", detail="this takes a moment")
    await session.show(cpsl.Block("flight_card", {"to": msg.text, "price": 120}, id="flight"))
    await session.show(cpsl.Block("flight_card", {"to": msg.text, "price": 99}, id="flight"))
    await session.show_step("Searching flights", status="done", step_id=step,
                            links=[{"label": "Airline", "url": "https://example.com"}])
    await session.show_activity("Price watch", detail="watching 1 route", icon="bell")
    await session.show_suggestions(
        ["Show hotels", cpsl.Suggestion("Book it", action="book", payload={"price": 99}, primary=True)],
        title="What next?",
    )
    await session.reply(f"Cheapest flight to {msg.text}: 99")


@app.action("book")
async def book(session: cpsl.Session, event: cpsl.Event):
    await session.reply(f"Booked for {event.payload['price']}")
