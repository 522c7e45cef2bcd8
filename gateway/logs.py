"""Log lines: text for people, or JSON lines for log collectors (``logging.format = "json"``).

A JSON line is one object: ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``,
``exception`` (the traceback's text, when the record has one), ``stack`` (with ``stack_info``),
any ``extra=`` fields the call passed, and inside a turn ``session_id`` and ``turn_id`` (the id of
the inbound event the turn answers), read from the context variables the turn sets
(``gateway.context.current_turn_ids``): a line logged by the handler, by the adapter sending its
reply or by a library underneath carries them all the same.

The formatting is python-json-logger's ``JsonFormatter``, not a formatter of our own: it is the
well-kept formatter for the standard ``logging`` module (exception and stack text, ``extra``
fields, values JSON cannot encode), and chatgate, aiohttp, aiogram and slack_bolt all log through
the standard module. structlog would have to be bridged to those loggers for the same lines.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from pythonjsonlogger.json import JsonFormatter

from gateway.context import current_turn_ids

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
TEXT_DATE_FORMAT = "%H:%M:%S"


class JsonLineFormatter(JsonFormatter):
    def __init__(self) -> None:
        super().__init__(
            ["levelname", "name", "message"],
            rename_fields={"levelname": "level", "name": "logger", "exc_info": "exception", "stack_info": "stack"},
            timestamp="time",  # non-ASCII text is escaped: valid JSON whatever the stream's encoding
        )

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        log_data["time"] = None  # the first key, for people reading the raw lines; filled below
        super().add_fields(log_data, record, message_dict)
        ids = current_turn_ids()
        if ids is not None:
            log_data.setdefault("session_id", ids[0])
            log_data.setdefault("turn_id", ids[1])


def log_formatter(kind: Literal["text", "json"]) -> logging.Formatter:
    if kind == "json":
        return JsonLineFormatter()
    return logging.Formatter(TEXT_FORMAT, datefmt=TEXT_DATE_FORMAT)
