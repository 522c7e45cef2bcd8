"""The web channel's compact JSON text: the widget's socket frames, the SSE ``data`` lines and
the bodies of its JSON responses (``json_response``).

Exactly ``json.dumps(value, ensure_ascii=False, separators=(",", ":"))``, made by orjson when it
is installed (``chatgate[fast]``): the same keys in the same order, non-ASCII text as UTF-8, not
escaped. Values orjson refuses (integers beyond 64 bits, a lone surrogate, keys that are not
strings, types it does not know) go to ``json`` as before. The one difference is one no client
can read anyway: a NaN or infinite float is ``null`` (``json`` wrote ``NaN``, which is not JSON).
Floats keep their value; their spelling may differ (``1e+16`` / ``1e16``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

try:
    import orjson
except ImportError:  # an optional accelerator
    orjson = None  # type: ignore[assignment]


def _json_compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


if orjson is not None:
    _refused = (TypeError, orjson.JSONEncodeError)

    def compact(value: Any) -> str:
        """``value`` as compact JSON text (see the module's docstring)."""
        try:
            return orjson.dumps(value).decode()
        except _refused:
            return _json_compact(value)

else:
    compact = _json_compact

ENCODER = "orjson" if orjson is not None else "json"


def json_response(value: Any, *, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    """``aiohttp.web.json_response`` with this module's text: compact, UTF-8, and made by orjson
    when installed (a ``send_message`` answer took 8 us through ``json.dumps``)."""
    return web.json_response(value, status=status, headers=headers, dumps=compact)
