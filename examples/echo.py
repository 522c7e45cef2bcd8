"""The smallest chatgate app: it says back what you say.

    chatgate run examples/echo.py      # web chat on http://127.0.0.1:8000/
    chatgate chat examples/echo.py     # in this terminal
"""

import gateway

app = gateway.App("echo")


@app.message()
async def echo(session: gateway.Session, msg: gateway.Message) -> None:
    await session.reply(f"echo: {msg.text}")
