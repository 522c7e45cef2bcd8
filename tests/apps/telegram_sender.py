"""One process's worth of Telegram sending, for the cross-process budget test.

``python -m tests.apps.telegram_sender API_URL REDIS_URL PREFIX SCALE NAME CHATS DATA_DIR``: builds
the Telegram adapter from settings (webhook mode, so it never polls), prints ``ready``, waits for a
line on stdin, sends ``NAME <chat>`` to each of the comma-separated chats at once, prints ``done``.
"""

from __future__ import annotations

import asyncio
import sys

from aiogram.methods import SendMessage

from adapters.telegram.adapter import TelegramAdapter
from gateway.testing import test_settings

TOKEN = "123456789:TEST-chatgate-token"  # the fake Bot API's default token


async def main(api_url: str, redis_url: str, prefix: str, scale: str, name: str, chats: str, data_dir: str) -> None:
    settings = test_settings(
        data_dir,
        telegram={"bot_token": TOKEN, "api_url": api_url, "rate_scale": float(scale), "mode": "webhook"},
        redis={"url": redis_url, "key_prefix": prefix},
    )
    adapter = TelegramAdapter(settings)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    ids = [int(chat) for chat in chats.split(",")]
    await asyncio.gather(
        *(
            adapter.client.call(SendMessage(chat_id=chat, text=f"{name} {chat}"), chat_id=chat, kind="message")
            for chat in ids
        )
    )
    await adapter.client.close()
    await adapter.pacer.close()
    print("done", flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:8]))
