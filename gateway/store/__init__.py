"""The Store: the only code that speaks SQL. SQLite (WAL) by default, PostgreSQL when scaled.

A ``Store`` is the database (``gateway.store.database``) with one query object per kind of
record, each in its own module and each opening its own short transactions:

=================  ==========================================================================
``store.users``     users and the platform identities behind them (``users.py``)
``store.sessions``  sessions: address, data, title, named chat, owner (``sessions.py``)
``store.messages``  each session's history and the ratings of turns (``messages.py``)
``store.inbox``     inbound events, durable before the platform's ack (``inbox.py``)
``store.files``     what is known of stored files (``files.py``)
``store.leases``    named leases, for work one process at a time does (``leases.py``)
``store.tasks``     ``@app.task`` runs, task-card watchers, scheduler ticks (``task_tables.py``)
``store.documents`` the documents of every collection (``documents.py``)
``store.kv``        the scoped key-value entries (``documents.py``)
=================  ==========================================================================

Connected accounts have theirs in ``integrations.py``, built by the integrations service with
the credentials cipher (``IntegrationQueries(store, cipher)``).
"""

from __future__ import annotations

from gateway.store.database import Database
from gateway.store.documents import DocumentQueries, KVQueries
from gateway.store.files import FileQueries
from gateway.store.group_commit import SqliteWrites
from gateway.store.inbox import InboxQueries
from gateway.store.leases import LeaseQueries
from gateway.store.messages import MessageQueries
from gateway.store.records import FileRecord, InboxEntry, MessageRecord, SessionRecord
from gateway.store.sessions import SessionQueries
from gateway.store.statements import address_key
from gateway.store.task_tables import TaskQueries
from gateway.store.users import UserQueries

__all__ = ["FileRecord", "InboxEntry", "MessageRecord", "SessionRecord", "Store", "address_key"]


class Store(Database):
    def __init__(
        self, url: str, *, echo: bool = False, pool_size: int = 10, sqlite_writes: SqliteWrites = "loop"
    ) -> None:
        super().__init__(url, echo=echo, pool_size=pool_size, sqlite_writes=sqlite_writes)
        self.users = UserQueries(self)
        self.sessions = SessionQueries(self)
        self.messages = MessageQueries(self)
        self.inbox = InboxQueries(self)
        self.files = FileQueries(self)
        self.leases = LeaseQueries(self)
        self.tasks = TaskQueries(self)
        self.documents = DocumentQueries(self)
        self.kv = KVQueries(self)
