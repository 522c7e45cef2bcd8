"""Capsule kind 3, prompts: a file upload the handler waits for, an approval, an integration the
user connects, and what happens when nobody answers in time."""

import asyncio
import tempfile
from pathlib import Path

import gateway as cpsl  # the only line that differs from the Capsule original: `import cpsl`

app = cpsl.App("importer", image=cpsl.Image())
app.add_integration(cpsl.GitHub(client_id="importer-client", client_secret="importer-secret"))


@app.message()
async def chat(session: cpsl.Session, msg: cpsl.Message):
    if msg.text == "import":
        upload = await session.prompt_file(message="Send the CSV to import", accept=".csv", timeout=30)
        path = await upload.download(tempfile.mkdtemp())  # a directory: the file keeps its name
        text = await asyncio.to_thread(Path(path).read_text)
        rows = [line for line in text.splitlines() if line]
        if await session.prompt_approval(f"Import {len(rows)} rows?", approve_label="Import",
                                         reject_label="Cancel", timeout=30):
            session.data["imported"] = rows
            await session.reply(f"Imported {len(rows)} rows from {upload.name}")
        else:
            await session.reply("Import cancelled")
    elif msg.text == "hurry":
        try:
            await session.prompt_file(message="Quick, a file!", timeout=0.2)
        except cpsl.FileUploadTimeout:
            await session.reply("No file came")
    elif msg.text == "repos":
        try:
            github = await session.require_integration("github", reason="to list your repositories", timeout=30)
        except cpsl.IntegrationDeclined:
            await session.reply("Not connected")
            return
        await session.reply(f"Token ends with {github.access_token[-4:]}")
