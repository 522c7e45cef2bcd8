"""Capsule kind 1, a streaming assistant: a model that streams deltas and one that streams
cumulative partials (as BAML does), through ``stream_reply``, ``stream`` and
``stream_reply_from``, with the conversation from ``chat_messages``."""

import gateway as cpsl  # the only line that differs from the Capsule original: `import cpsl`

app = cpsl.App("assistant", image=cpsl.Image(python_packages=["baml-py"]))


def answer_for(messages):
    return f"You said: {messages[-1]['content']} ({len(messages)} messages so far)"


async def model_tokens(messages):
    """A chat model streaming deltas, one word at a time."""
    words = answer_for(messages).split(" ")
    for index, word in enumerate(words):
        yield word if index == 0 else " " + word


async def model_partials(messages):
    """A structured-output library streaming partial results: the whole text so far each time,
    repeated when a chunk added nothing, and ``None`` before the first field appeared."""
    yield None
    text = ""
    for token in [t async for t in model_tokens(messages)]:
        text += token
        yield text
        yield text


@app.message()
async def chat(session: cpsl.Session, msg: cpsl.Message):
    messages = session.chat_messages(msg)
    if msg.text.startswith("/partials "):
        text = await session.stream_reply_from(model_partials(messages))
        session.data["last_answer"] = text
    elif msg.text.startswith("/plain "):
        await session.stream(model_tokens(messages))
    else:
        async with session.stream_reply() as reply:
            async for token in model_tokens(messages):
                reply.write(token)
        session.data["last_answer"] = reply.text
