"""Which API key owns a REST session, and which handler it runs, remembered across requests.

``send_message`` and ``stream_message`` need only that of a session, and neither ever changes:
a session's ``owner_key`` is set when it is created, and its ``chat_name`` moves only when an
event names another handler, which a REST turn never does (it carries the session's own). So
after one read of the store a session is known here, and a message to it costs no read before it
is recorded. A session deleted since (by this process or another) is found out as the message is
recorded: the core refuses it (``UnknownSession``), the request answers 404 and the session is
forgotten here.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from adapters.base import SessionRecord

MAX_KNOWN_SESSIONS = 10_000
"""Sessions remembered at most (the least recently used are forgotten first)."""


@dataclass(frozen=True, slots=True)
class KnownSession:
    id: str
    owner_key: str | None
    chat_name: str | None


class SessionOwners:
    def __init__(self, size: int = MAX_KNOWN_SESSIONS) -> None:
        self._size = size
        self._known: OrderedDict[str, KnownSession] = OrderedDict()

    def get(self, session_id: str) -> KnownSession | None:
        known = self._known.get(session_id)
        if known is not None:
            self._known.move_to_end(session_id)
        return known

    def remember(self, record: SessionRecord) -> KnownSession:
        known = KnownSession(record.id, record.owner_key, record.chat_name)
        self._known[record.id] = known
        self._known.move_to_end(record.id)
        while len(self._known) > self._size:
            self._known.popitem(last=False)
        return known

    def forget(self, session_id: str) -> None:
        self._known.pop(session_id, None)
