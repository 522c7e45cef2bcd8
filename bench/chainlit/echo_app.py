"""Chainlit's echo app for ``bench/web_echo.py`` (runs in the bench's own Chainlit virtualenv).

With ``BENCH_CHAINLIT_DB`` set to a SQLite file (its tables made by the bench), Chainlit's
SQLAlchemy data layer stores every step (the user's message and the reply), configured the way
Chainlit's documentation says: a ``@cl.data_layer`` function returning ``SQLAlchemyDataLayer``.
"""

from __future__ import annotations

import os

import chainlit as cl

DATABASE = os.environ.get("BENCH_CHAINLIT_DB")

if DATABASE:
    from chainlit.data.sql_alchemy import SQLAlchemyDataLayer

    @cl.data_layer
    def data_layer() -> SQLAlchemyDataLayer:
        return SQLAlchemyDataLayer(conninfo=f"sqlite+aiosqlite:///{DATABASE}")


@cl.on_message
async def echo(message: cl.Message) -> None:
    await cl.Message(content="echo: " + message.content).send()
