"""The smallest stored turn: every message answered with ``echo: <text>``."""

import gateway

app = gateway.App("echo")


@app.message()
async def echo(session: gateway.Session, msg: gateway.Message) -> None:
    await session.reply("echo: " + msg.text)
