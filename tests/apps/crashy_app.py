"""An app whose handler announces it started, then takes long enough to be killed mid-turn."""

import asyncio
import os
from pathlib import Path

import gateway

app = gateway.App("crashy")
MARKER = Path(os.environ["CRASHY_MARKER_DIR"])


@app.message()
async def handle(session: gateway.Session, msg: gateway.Message) -> None:
    runs = MARKER / f"runs-{msg.text}"
    count = int(runs.read_text()) + 1 if runs.exists() else 1
    runs.write_text(str(count))
    if count == 1:
        async with session.stream_reply() as reply:
            reply.write("half an answ")
            await asyncio.sleep(60)  # the first process is killed here, mid-stream
    await session.reply(f"handled {msg.text} on run {count}")
