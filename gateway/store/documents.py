"""SQL storage for collections (a MongoDB-like document store) and the scoped KV store.

A collection document is one ``DocumentRow``: the whole document as JSON (with its ``_id``
inside) plus columns that mirror the fields worth indexing: the id and the three scope fields
``_user_id``, ``_team_id`` and ``_session_id``.

**Where a filter is evaluated.** Only the collection, ``_id`` and the scope fields are pushed into
SQL (plain equality or ``$in`` of strings, at the top level or under ``$and``); the rest of the
filter is evaluated in Python by ``gateway.query.matches`` on the rows SQL returns, read in
batches in ``_id`` order. That keeps one code path with identical semantics on SQLite and
PostgreSQL (no JSON-operator dialects), and a scoped query only ever reads its own scope's rows.
When the pushed conditions are the whole filter, counting, skipping and limiting happen in SQL
too; sorting on anything but ``_id`` happens in Python over the matching rows.

**Concurrency.** Every write is a compare-and-swap on ``revision``: read the matching row,
re-read it ``FOR UPDATE`` (PostgreSQL waits for the row lock; SQLite ignores the clause), apply
the update in Python, then ``UPDATE ... WHERE revision = <read revision>``. If another writer got
there first the update touches no row and the whole read-modify-write is retried, so concurrent
``$inc`` never loses an increment, across processes too. Lock timeouts (SQLite "database is
locked") and PostgreSQL serialization failures and deadlocks are retried the same way. Within one
process, SQLite writers also queue on a ``WriteGate`` (SQLite has one writer at a time anyway), so
tasks of one process do not race each other into retries.
"""

from __future__ import annotations

import asyncio
import random
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, aclosing, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from sqlalchemy import JSON, Column, Index, UniqueConstraint, and_, delete, func, or_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import Field, SQLModel, col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from ulid import ULID

from gateway.query import (
    ID_FIELD,
    apply_update,
    jsonable,
    matches,
    normalise_id,
    normalise_sort,
    normalise_update,
    sort_documents,
    upsert_seed,
    validate_filter,
)

__all__ = [
    "SCOPE_COLUMNS",
    "ConcurrencyError",
    "DocumentQueries",
    "DocumentRow",
    "DuplicateKeyError",
    "KVQueries",
    "KVRow",
    "SessionSource",
    "UpdateResult",
    "WriteGate",
]

SCOPE_COLUMNS = {"_user_id": "user_id", "_team_id": "team_id", "_session_id": "session_id"}
"""Document scope field -> the column that mirrors it."""

MAX_ID_LENGTH = 255
SCAN_BATCH = 500
DELETE_BATCH = 100
MAX_ATTEMPTS = 200
"""Retries of one read-modify-write under contention before giving up (ConcurrencyError)."""

_POSTGRES_RETRYABLE = {"40001", "40P01", "55P03"}  # serialization_failure, deadlock, lock_not_available


class SessionSource(Protocol):
    """What the document functions need from the Store: a way to open an AsyncSession."""

    def session(self) -> AbstractAsyncContextManager[AsyncSession]: ...


class WriteGate:
    """One document/KV writer at a time in this process, on SQLite only.

    SQLite has a single writer anyway; queueing writers here instead of in SQLite's busy handler
    (which sleeps up to 100 ms between polls) makes contended read-modify-writes an order of
    magnitude faster and avoids compare-and-swap misses between tasks of one process. Other
    processes are still handled by the compare-and-swap. One lock per event loop, so a gate made
    at import time works under any loop.
    """

    def __init__(self) -> None:
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()

    def _lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        lock = self._locks.get(loop)
        if lock is None:
            lock = self._locks[loop] = asyncio.Lock()
        return lock

    @asynccontextmanager
    async def hold(self, session: AsyncSession) -> AsyncIterator[None]:
        if session.get_bind().dialect.name != "sqlite":
            yield
            return
        async with self._lock():
            yield


@asynccontextmanager
async def _writing(source: SessionSource, gate: WriteGate | None) -> AsyncIterator[AsyncSession]:
    """A session for one write attempt, behind the gate when there is one."""
    async with source.session() as session:
        if gate is None:
            yield session
        else:
            async with gate.hold(session):
                yield session


def _utcnow() -> datetime:
    return datetime.now(UTC)  # sqlmodel stores datetime fields as timezone-aware UTC


def new_document_id() -> str:
    """A ULID: 26 sortable characters, so natural order (``_id`` order) is insertion order."""
    return str(ULID())


class DocumentRow(SQLModel, table=True):
    """One document of one collection. ``doc`` is the source of truth; the rest mirrors it."""

    __tablename__ = "collection_documents"
    __table_args__ = (
        # A scoped scan is "WHERE collection = ? AND user_id = ? ORDER BY id": one index range each.
        Index("ix_collection_documents_user", "collection", "user_id", "id"),
        Index("ix_collection_documents_team", "collection", "team_id", "id"),
        Index("ix_collection_documents_session", "collection", "session_id", "id"),
    )

    collection: str = Field(primary_key=True, max_length=255)
    id: str = Field(primary_key=True, max_length=MAX_ID_LENGTH)
    user_id: str | None = Field(default=None, max_length=255)
    team_id: str | None = Field(default=None, max_length=255)
    session_id: str | None = Field(default=None, max_length=255)
    doc: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    revision: int = Field(default=1)
    created_at: datetime = Field(default_factory=_utcnow)
    updated_at: datetime = Field(default_factory=_utcnow)


class KVRow(SQLModel, table=True):
    """One KV entry. ``scope_id`` is the user id, owner id or session id ("" for app scope)."""

    __tablename__ = "kv_entries"
    __table_args__ = (UniqueConstraint("scope", "scope_id", "key", name="uq_kv_entries_scope_key"),)

    id: int | None = Field(default=None, primary_key=True)
    scope: str = Field(max_length=16)
    scope_id: str = Field(default="", max_length=255)
    key: str = Field(max_length=512)
    value: Any = Field(default=None, sa_column=Column(JSON, nullable=True))
    updated_at: datetime = Field(default_factory=_utcnow)


class DuplicateKeyError(ValueError):
    """An insert reused an ``_id`` that the collection already holds."""


class ConcurrencyError(RuntimeError):
    """A write kept losing races for ``MAX_ATTEMPTS`` attempts."""


@dataclass
class UpdateResult:
    matched: int
    modified: int
    upserted_id: str | None = None
    document: dict[str, Any] | None = field(default=None, repr=False)
    """The document after the update (None when nothing matched and nothing was upserted)."""

    def as_dict(self) -> dict[str, Any]:
        """Capsule's shape, ``{"matched", "modified"}``, plus ``upserted_id`` after an upsert."""
        result: dict[str, Any] = {"matched": self.matched, "modified": self.modified}
        if self.upserted_id is not None:
            result["upserted_id"] = self.upserted_id
        return result


# -- documents in, documents out ---------------------------------------------------------------


def prepare_document(document: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON copy of ``document`` ready to store, with a valid ``_id`` (a new ULID if absent)."""
    if not isinstance(document, Mapping):
        raise ValueError(f"a document must be a dict, got {type(document).__name__}")
    prepared: dict[str, Any] = jsonable(document)
    for key in prepared:
        if key.startswith("$"):
            raise ValueError(f"document field names cannot start with '$': {key!r}")
    if prepared.get(ID_FIELD) is None:
        prepared = {ID_FIELD: new_document_id(), **{k: v for k, v in prepared.items() if k != ID_FIELD}}
    else:
        prepared[ID_FIELD] = normalise_id(prepared[ID_FIELD])
    _check_reserved_fields(prepared)
    return prepared


def _check_reserved_fields(document: Mapping[str, Any]) -> None:
    document_id = document.get(ID_FIELD)
    if not isinstance(document_id, str) or not document_id or len(document_id) > MAX_ID_LENGTH:
        raise ValueError(f"_id must be a non-empty string of at most {MAX_ID_LENGTH} characters")
    for scope_field in SCOPE_COLUMNS:
        value = document.get(scope_field)
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{scope_field} must be a string, got {type(value).__name__}")


def _mirrored_columns(document: Mapping[str, Any]) -> dict[str, str | None]:
    return {column: document.get(scope_field) for scope_field, column in SCOPE_COLUMNS.items()}


def _new_row(collection: str, document: dict[str, Any]) -> DocumentRow:
    now = _utcnow()
    row = DocumentRow(collection=collection, id=document[ID_FIELD], doc=document, created_at=now, updated_at=now)
    for column, value in _mirrored_columns(document).items():
        setattr(row, column, value)
    return row


# -- pushing what we can into SQL ----------------------------------------------------------------


@dataclass
class _Prefilter:
    conditions: list[ColumnElement[bool]]
    complete: bool
    """True when the SQL conditions alone decide the filter (no Python evaluation needed)."""


_ID_COLUMN = col(DocumentRow.id)
_PUSHABLE_COLUMNS = {
    ID_FIELD: _ID_COLUMN,
    "_user_id": col(DocumentRow.user_id),
    "_team_id": col(DocumentRow.team_id),
    "_session_id": col(DocumentRow.session_id),
}


def _sql_prefilter(filter: Mapping[str, Any] | None) -> _Prefilter:
    prefilter = _Prefilter(conditions=[], complete=True)
    _collect_pushable(filter or {}, prefilter)
    return prefilter


def _collect_pushable(filter: Mapping[str, Any], prefilter: _Prefilter) -> None:
    for key, condition in filter.items():
        if key == "$and" and isinstance(condition, list):
            for clause in condition:
                _collect_pushable(clause, prefilter)
            continue
        column = _PUSHABLE_COLUMNS.get(key)
        pushed = column is not None and _push_condition(column, condition, prefilter)
        if not pushed:
            prefilter.complete = False


def _push_condition(column: Any, condition: Any, prefilter: _Prefilter) -> bool:
    """Push ``"value"``, ``{"$eq": "value"}`` or ``{"$in": ["a", "b"]}`` (strings only: the columns
    mirror string fields only, so SQL and ``matches`` always agree)."""
    if isinstance(condition, Mapping) and set(condition) == {"$eq"}:
        condition = condition["$eq"]
    if isinstance(condition, str):
        prefilter.conditions.append(column == condition)
        return True
    if isinstance(condition, Mapping) and set(condition) == {"$in"}:
        options = condition["$in"]
        if isinstance(options, list) and all(isinstance(option, str) for option in options):
            prefilter.conditions.append(column.in_(options))
            return True
    return False


def _normalise_filter(filter: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate a filter and coerce its values to JSON types (datetimes to ISO strings...)."""
    if filter is None:
        return {}
    if not isinstance(filter, Mapping):
        raise ValueError(f"a filter must be a dict, got {type(filter).__name__}")
    normalised: dict[str, Any] = jsonable(filter)
    if ID_FIELD in normalised and not isinstance(normalised[ID_FIELD], Mapping | list):
        normalised[ID_FIELD] = normalise_id(normalised[ID_FIELD])
    validate_filter(normalised)
    return normalised


# -- reading -------------------------------------------------------------------------------------


@dataclass
class _Found:
    id: str
    doc: Mapping[str, Any]
    revision: int


async def _scan(
    session: AsyncSession,
    collection: str,
    filter: Mapping[str, Any],
    prefilter: _Prefilter,
    *,
    descending: bool = False,
) -> AsyncGenerator[_Found, None]:
    """Matching rows in ``_id`` order, read ``SCAN_BATCH`` at a time (keyset pagination)."""
    last_id: str | None = None
    while True:
        statement = select(DocumentRow.id, DocumentRow.doc, DocumentRow.revision).where(
            DocumentRow.collection == collection, *prefilter.conditions
        )
        if last_id is not None:
            statement = statement.where(_ID_COLUMN < last_id if descending else _ID_COLUMN > last_id)
        statement = statement.order_by(_ID_COLUMN.desc() if descending else _ID_COLUMN).limit(SCAN_BATCH)
        rows = (await session.exec(statement)).all()
        for row_id, doc, revision in rows:
            if prefilter.complete or matches(doc, filter):
                yield _Found(row_id, doc, revision)
        if len(rows) < SCAN_BATCH:
            return
        last_id = rows[-1][0]


async def _first_match(session: AsyncSession, collection: str, filter: Mapping[str, Any]) -> _Found | None:
    async with aclosing(_scan(session, collection, filter, _sql_prefilter(filter))) as found:
        async for item in found:
            return item
    return None


async def _locked(session: AsyncSession, collection: str, row_id: str) -> _Found | None:
    """The row as it is now, locked for this transaction on PostgreSQL."""
    statement = (
        select(DocumentRow.doc, DocumentRow.revision)
        .where(DocumentRow.collection == collection, _ID_COLUMN == row_id)
        .with_for_update()
    )
    row = (await session.exec(statement)).first()
    return None if row is None else _Found(row_id, row[0], row[1])


# -- writing -------------------------------------------------------------------------------------


_RETRY: Any = object()
_T = TypeVar("_T")


def _is_transient(exc: DBAPIError) -> bool:
    """Lock timeouts and serialization failures: the write can simply be tried again."""
    if isinstance(exc, IntegrityError):
        return False
    code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    if code in _POSTGRES_RETRYABLE:
        return True
    message = str(exc.orig).lower()
    return "database is locked" in message or "database is busy" in message


async def _with_retries(what: str, attempt: Callable[[], Awaitable[_T]]) -> _T:
    for number in range(MAX_ATTEMPTS):
        try:
            result = await attempt()
        except DBAPIError as exc:
            if not _is_transient(exc):
                raise
            result = _RETRY
        if result is not _RETRY:
            return result
        # Jittered backoff so that racing writers spread out instead of colliding again.
        await asyncio.sleep(random.uniform(0, min(0.0005 * 2 ** min(number, 7), 0.05)))
    raise ConcurrencyError(f"{what}: gave up after {MAX_ATTEMPTS} attempts under contention")


async def _compare_and_swap(
    session: AsyncSession, collection: str, current: _Found, new_document: dict[str, Any]
) -> bool:
    statement = (
        update(DocumentRow)
        .where(
            col(DocumentRow.collection) == collection,
            _ID_COLUMN == current.id,
            col(DocumentRow.revision) == current.revision,
        )
        .values(
            doc=new_document, revision=current.revision + 1, updated_at=_utcnow(), **_mirrored_columns(new_document)
        )
        .execution_options(synchronize_session=False)
    )
    result = await session.exec(statement)
    return result.rowcount == 1


async def _insert_upsert(
    session: AsyncSession, collection: str, filter: Mapping[str, Any], update_spec: Mapping[str, Any]
) -> UpdateResult:
    seeded, _ = apply_update(upsert_seed(filter), update_spec, inserting=True)
    document = prepare_document(seeded)
    session.add(_new_row(collection, document))
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        return _RETRY  # the same _id was inserted meanwhile: now it is an update
    return UpdateResult(matched=0, modified=0, upserted_id=document[ID_FIELD], document=document)


async def _delete_revisions(session: AsyncSession, collection: str, rows: list[_Found]) -> int:
    """Delete rows only if they are still at the revision we matched them at."""
    deleted = 0
    for start in range(0, len(rows), DELETE_BATCH):
        batch = rows[start : start + DELETE_BATCH]
        at_revision = [and_(_ID_COLUMN == row.id, col(DocumentRow.revision) == row.revision) for row in batch]
        statement = (
            delete(DocumentRow)
            .where(col(DocumentRow.collection) == collection, or_(*at_revision))
            .execution_options(synchronize_session=False)
        )
        deleted += (await session.exec(statement)).rowcount
    return deleted


# -- clean-up ------------------------------------------------------------------------------------

_SCOPE_TO_COLUMN = {
    "user": col(DocumentRow.user_id),
    "owner": col(DocumentRow.team_id),
    "session": col(DocumentRow.session_id),
}


# -- KV ------------------------------------------------------------------------------------------


class DocumentQueries:
    """The documents of every collection (``gateway.collections``); ``store.documents``."""

    def __init__(self, db: SessionSource) -> None:
        self._db = db

    async def find(
        self,
        collection: str,
        filter: Mapping[str, Any] | None = None,
        *,
        sort: Any = None,
        skip: int = 0,
        limit: int = 0,
    ) -> list[dict[str, Any]]:
        """Matching documents; ``limit=0`` means all. Without a sort they come in ``_id`` order."""
        filter = _normalise_filter(filter)
        if skip < 0 or limit < 0:
            raise ValueError("skip and limit cannot be negative")
        spec = normalise_sort(sort)
        prefilter = _sql_prefilter(filter)
        by_id = spec in ([], [(ID_FIELD, 1)], [(ID_FIELD, -1)])
        descending = spec == [(ID_FIELD, -1)]
        async with self._db.session() as session:
            if by_id and prefilter.complete:
                statement = (
                    select(DocumentRow.doc)
                    .where(DocumentRow.collection == collection, *prefilter.conditions)
                    .order_by(_ID_COLUMN.desc() if descending else _ID_COLUMN)
                    .offset(skip)
                    .limit(limit or None)
                )
                return [dict(doc) for doc in (await session.exec(statement)).all()]
            found: list[dict[str, Any]] = []
            async with aclosing(_scan(session, collection, filter, prefilter, descending=descending)) as rows:
                async for item in rows:
                    found.append(dict(item.doc))
                    if by_id and limit and len(found) >= skip + limit:
                        break
        ordered = found if by_id else sort_documents(found, spec)
        return ordered[skip : skip + limit] if limit else ordered[skip:]

    async def count(self, collection: str, filter: Mapping[str, Any] | None = None) -> int:
        filter = _normalise_filter(filter)
        prefilter = _sql_prefilter(filter)
        async with self._db.session() as session:
            if prefilter.complete:
                statement = (
                    select(func.count())
                    .select_from(DocumentRow)
                    .where(DocumentRow.collection == collection, *prefilter.conditions)
                )
                return int((await session.exec(statement)).one())
            total = 0
            async for _ in _scan(session, collection, filter, prefilter):
                total += 1
            return total

    async def insert(
        self,
        collection: str,
        documents: Sequence[Mapping[str, Any]],
        *,
        gate: WriteGate | None = None,
    ) -> list[dict[str, Any]]:
        """Insert all of ``documents`` in one transaction (all or none); returns them as stored."""
        prepared = [prepare_document(document) for document in documents]
        ids = [document[ID_FIELD] for document in prepared]
        if len(set(ids)) != len(ids):
            raise DuplicateKeyError(f"the documents repeat an _id in collection {collection!r}")
        if not prepared:
            return []

        async def attempt() -> list[dict[str, Any]]:
            async with _writing(self._db, gate) as session:
                session.add_all([_new_row(collection, document) for document in prepared])
                try:
                    await session.commit()
                except IntegrityError as exc:
                    raise DuplicateKeyError(f"an _id among {ids[:5]!r} already exists in {collection!r}") from exc
            return [dict(document) for document in prepared]

        return await _with_retries(f"insert into {collection!r}", attempt)

    async def update_one(
        self,
        collection: str,
        filter: Mapping[str, Any] | None,
        update_spec: Mapping[str, Any],
        *,
        upsert: bool = False,
        gate: WriteGate | None = None,
    ) -> UpdateResult:
        """Update the first matching document (``_id`` order); with ``upsert``, insert one if none.

        An upsert starts from the filter's equality conditions (``gateway.query.upsert_seed``), then
        applies the update with ``$setOnInsert``. Two concurrent upserts of a filter without ``_id``
        may both insert, as in MongoDB without a unique index; with ``_id`` in the filter the loser
        retries as an update.
        """
        filter = _normalise_filter(filter)
        update_spec = normalise_update(update_spec)
        apply_update({}, update_spec)  # reject malformed updates before touching the database

        async def attempt() -> UpdateResult:
            async with _writing(self._db, gate) as session:
                candidate = await _first_match(session, collection, filter)
                if candidate is None:
                    if not upsert:
                        return UpdateResult(matched=0, modified=0)
                    return await _insert_upsert(session, collection, filter, update_spec)
                current = await _locked(session, collection, candidate.id)
                if current is None or not matches(current.doc, filter):
                    return _RETRY  # changed or deleted between the scan and the lock
                new_document, modified = apply_update(current.doc, update_spec)
                if not modified:
                    return UpdateResult(matched=1, modified=0, document=dict(current.doc))
                _check_reserved_fields(new_document)
                if not await _compare_and_swap(session, collection, current, new_document):
                    await session.rollback()
                    return _RETRY
                await session.commit()
                return UpdateResult(matched=1, modified=1, document=new_document)

        return await _with_retries(f"update in {collection!r}", attempt)

    async def update_many(
        self,
        collection: str,
        filter: Mapping[str, Any] | None,
        update_spec: Mapping[str, Any],
        *,
        gate: WriteGate | None = None,
    ) -> UpdateResult:
        """Update every matching document, all in one transaction (all or none on an error).

        Each row is re-read locked and re-checked before its compare-and-swap, as in
        ``update_document``; documents inserted while the update runs may be missed (as in MongoDB).
        """
        filter = _normalise_filter(filter)
        update_spec = normalise_update(update_spec)
        apply_update({}, update_spec)

        async def attempt() -> UpdateResult:
            async with _writing(self._db, gate) as session:
                candidates = [item.id async for item in _scan(session, collection, filter, _sql_prefilter(filter))]
                matched = modified = 0
                for row_id in candidates:
                    current = await _locked(session, collection, row_id)
                    if current is None or not matches(current.doc, filter):
                        continue
                    matched += 1
                    new_document, changed = apply_update(current.doc, update_spec)
                    if not changed:
                        continue
                    _check_reserved_fields(new_document)
                    if not await _compare_and_swap(session, collection, current, new_document):
                        await session.rollback()
                        return _RETRY
                    modified += 1
                await session.commit()
                return UpdateResult(matched=matched, modified=modified)

        return await _with_retries(f"update in {collection!r}", attempt)

    async def delete_one(
        self,
        collection: str, filter: Mapping[str, Any] | None, *, gate: WriteGate | None = None
    ) -> int:
        """Delete the first matching document (``_id`` order); returns 0 or 1."""
        filter = _normalise_filter(filter)

        async def attempt() -> int:
            async with _writing(self._db, gate) as session:
                candidate = await _first_match(session, collection, filter)
                if candidate is None:
                    return 0
                current = await _locked(session, collection, candidate.id)
                if current is None or not matches(current.doc, filter):
                    return _RETRY
                deleted = await _delete_revisions(session, collection, [current])
                if deleted != 1:
                    await session.rollback()
                    return _RETRY
                await session.commit()
                return 1

        return await _with_retries(f"delete from {collection!r}", attempt)

    async def delete_many(
        self,
        collection: str, filter: Mapping[str, Any] | None, *, gate: WriteGate | None = None
    ) -> int:
        """Delete every matching document; returns how many were deleted.

        When everything the filter says is in SQL this is one DELETE. Otherwise matching rows are
        deleted at the revision they matched at; rows changed meanwhile are looked at again.
        """
        filter = _normalise_filter(filter)
        prefilter = _sql_prefilter(filter)
        if prefilter.complete:

            async def delete_in_sql() -> int:
                async with _writing(self._db, gate) as session:
                    statement = (
                        delete(DocumentRow)
                        .where(col(DocumentRow.collection) == collection, *prefilter.conditions)
                        .execution_options(synchronize_session=False)
                    )
                    deleted = (await session.exec(statement)).rowcount
                    await session.commit()
                    return int(deleted)

            return await _with_retries(f"delete from {collection!r}", delete_in_sql)

        total = 0
        for _ in range(MAX_ATTEMPTS):

            async def delete_batch() -> tuple[int, bool]:
                async with _writing(self._db, gate) as session:
                    found = [item async for item in _scan(session, collection, filter, prefilter)]
                    deleted = await _delete_revisions(session, collection, found)
                    await session.commit()
                    return deleted, deleted == len(found)

            deleted, settled = await _with_retries(f"delete from {collection!r}", delete_batch)
            total += deleted
            if settled:
                return total
        raise ConcurrencyError(f"delete from {collection!r}: rows kept changing under the delete")

    async def delete_scope(
        self,
        scope: str, scope_id: str, *, gate: WriteGate | None = None
    ) -> tuple[int, int]:
        """Delete every document of every collection and every KV entry of one scope value.

        For the core to call when a session or a user is deleted (``("session", session_id)``,
        ``("user", user_id)``): returns ``(documents deleted, KV entries deleted)``.
        """
        column = _SCOPE_TO_COLUMN.get(scope)
        if column is None or not scope_id:
            raise ValueError(f"scope must be user, owner or session with a non-empty id, got {scope!r}/{scope_id!r}")

        async def attempt() -> tuple[int, int]:
            async with _writing(self._db, gate) as session:
                documents = await session.exec(delete(DocumentRow).where(column == scope_id))
                entries = await session.exec(
                    delete(KVRow).where(col(KVRow.scope) == scope, col(KVRow.scope_id) == scope_id)
                )
                await session.commit()
                return int(documents.rowcount), int(entries.rowcount)

        return await _with_retries(f"delete {scope} {scope_id!r} data", attempt)


class KVQueries:
    """The scoped key-value entries (``session.get/set``, ``app.kv``); ``store.kv``."""

    def __init__(self, db: SessionSource) -> None:
        self._db = db

    async def get(self, scope: str, scope_id: str, key: str) -> tuple[bool, Any]:
        """``(found, value)`` for one KV entry."""
        async with self._db.session() as session:
            statement = select(KVRow.value).where(KVRow.scope == scope, KVRow.scope_id == scope_id, KVRow.key == key)
            rows = (await session.exec(statement)).all()
        return (True, rows[0]) if rows else (False, None)

    async def set(
        self,
        scope: str, scope_id: str, key: str, value: Any, *, gate: WriteGate | None = None
    ) -> None:
        """Insert or replace one KV entry, atomically (``INSERT ... ON CONFLICT DO UPDATE``)."""
        stored = jsonable(value)

        async def attempt() -> None:
            async with _writing(self._db, gate) as session:
                dialect = session.get_bind().dialect.name
                values = {"scope": scope, "scope_id": scope_id, "key": key, "value": stored, "updated_at": _utcnow()}
                if dialect in ("postgresql", "sqlite"):
                    insert = (postgresql if dialect == "postgresql" else sqlite).insert(KVRow).values(**values)
                    statement = insert.on_conflict_do_update(
                        index_elements=["scope", "scope_id", "key"],
                        set_={"value": insert.excluded.value, "updated_at": insert.excluded.updated_at},
                    )
                    await session.exec(statement)
                else:  # another dialect: update, else insert (a concurrent insert retries as an update)
                    changed = await session.exec(
                        update(KVRow)
                        .where(col(KVRow.scope) == scope, col(KVRow.scope_id) == scope_id, col(KVRow.key) == key)
                        .values(value=stored, updated_at=values["updated_at"])
                    )
                    if changed.rowcount == 0:
                        session.add(KVRow(**values))
                try:
                    await session.commit()
                except IntegrityError:
                    await session.rollback()
                    return _RETRY

        await _with_retries(f"KV set {key!r}", attempt)

    async def delete(
        self,
        scope: str, scope_id: str, key: str, *, gate: WriteGate | None = None
    ) -> bool:
        """Remove one KV entry; True when it existed."""

        async def attempt() -> bool:
            async with _writing(self._db, gate) as session:
                statement = delete(KVRow).where(
                    col(KVRow.scope) == scope, col(KVRow.scope_id) == scope_id, col(KVRow.key) == key
                )
                deleted = (await session.exec(statement)).rowcount
                await session.commit()
                return bool(deleted)

        return await _with_retries(f"KV delete {key!r}", attempt)
