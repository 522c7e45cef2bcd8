"""An assistant that streams a (fake, offline) model's tokens, using the conversation history.

The model is a stand-in: it needs no network and no weights. Swap ``FakeModel`` for any client
whose ``stream(messages)`` yields text deltas (OpenAI, Anthropic, a local llama.cpp server...).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import gateway

app = gateway.App("assistant")


class FakeModel:
    """Streams a deterministic answer word by word, like an LLM would token by token."""

    def __init__(self, tokens_per_second: float = 40.0) -> None:
        self.delay = 1.0 / tokens_per_second

    async def stream(self, messages: list[dict[str, str]]) -> AsyncIterator[str]:
        question = messages[-1]["content"].strip()
        turns = sum(1 for m in messages if m["role"] == "user")
        answer = self.answer(question, turns)
        for token in re.findall(r"\S+\s*", answer):
            await asyncio.sleep(self.delay)
            yield token

    @staticmethod
    def answer(question: str, turns: int) -> str:
        if not question:
            return "Ask me anything."
        if question.endswith("?"):
            return (
                f"Good question. You asked: *{question}* — this is message {turns} of our conversation. "
                "I'm a stand-in model, so here is a structured answer instead of a real one:\n\n"
                "1. **Understand** the question.\n2. **Look up** what is known.\n3. **Answer** briefly.\n\n"
                "```python\nprint('hello from chatgate')\n```"
            )
        return f"Noted: {question}. (That is message {turns}; ask me a question, ending with '?'.)"


model = FakeModel()


@app.message()
async def assistant(session: gateway.Session, msg: gateway.Message) -> None:
    await session.notify("Thinking…")
    async with session.stream_reply() as reply:
        async for token in model.stream(session.chat_messages(msg)):
            reply.write(token)
