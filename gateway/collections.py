"""Capsule-compatible collections (a MongoDB-like document store); the scoped key-value store
that shares their scopes is ``gateway.kv``.

How the core wires it (all constructors take callables, so collections can be declared at import
time, before the store exists):

``CollectionManager(store_getter, current_scope, *, on_change=None, write_gate=None)``
    ``store_getter() -> Store``: any object with ``.session()`` (an async context manager giving
    a ``sqlmodel`` ``AsyncSession``). Called on every operation, never at declaration.
    ``current_scope() -> ScopeIdentity | None``: who the running handler acts for; None outside a
    handler. Used by ``CollectionRef`` (what ``app.collection(...)`` returns) and ``get``.
    ``on_change(collection, reason)`` (optional, sync or async): called after every write to a
    collection whose name does not start with ``_``; ``reason`` is ``"data"``. Capsule sends a
    ``widget_update`` block from there. Errors in it are logged, never raised.

    * ``declare(name, scope="app", columns=None, *, sortable=False, filterable=False, paginate=0)
      -> CollectionRef``: ``app.collection(...)``.
    * ``scoped(identity) -> ScopedDatabase``: ``session.db`` (``session.db.notes``).
    * ``unscoped() -> DatabaseProxy``: ``app.db`` (``app.db.notes``, raw and unscoped).
    * ``await get(name, *, scope=None)``: ``app.collections.get``; ``for_identity(identity)``
      gives ``session.collections`` (``await session.collections.get(name, scope=None)``).

Every handle (``CollectionRef``, ``ScopedCollection``, ``Collection``, ``DynamicCollection``) has
Capsule's CRUD: ``insert_one/insert_many/find/find_one/update_one(upsert=)/delete_one/delete_many/
delete_rows/count``, Django-style ``filter/all/get`` queries, plus MongoDB's ``update_many``.
``CollectionRef`` and ``DynamicCollection`` also have the column schema methods (``list_columns``,
``set_columns``, ``add_column``, ``remove_column``, ``rename_column``), stored per scope value.

Scopes decide one field that is added to every filter and written into every document:
``user`` -> ``_user_id = identity.user_id``, ``owner`` -> ``_team_id = identity.owner_id or
user_id``, ``session`` -> ``_session_id = identity.session_id``; ``app`` adds nothing.

Deliberate differences from Capsule (it merges the caller's filter over the scope filter, and the
caller's document over the scope fields): here the scope always wins. A scoped handle cannot read
another scope's documents by naming ``_user_id`` in a filter, cannot insert into another scope,
and an update that writes the scope field raises ValueError. ``query.delete()`` on a sliced query
deletes exactly the rows the query selects (Capsule deletes every row matching the filter).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from gateway.query import (
    ID_FIELD,
    lookups_to_filter,
    merge_filters,
    normalise_id,
    normalise_sort,
    normalise_update,
    update_paths,
)
from gateway.store.documents import DocumentQueries, KVQueries, UpdateResult, WriteGate

__all__ = [
    "SCOPE_FIELDS",
    "VALID_SCOPES",
    "Backend",
    "Collection",
    "CollectionManager",
    "CollectionQuery",
    "CollectionRef",
    "CollectionRow",
    "CollectionSpec",
    "Column",
    "DatabaseProxy",
    "DynamicCollection",
    "IdentityCollections",
    "ScopeIdentity",
    "ScopedCollection",
    "ScopedDatabase",
    "scope_filter",
]

log = logging.getLogger(__name__)

CollectionScope = Literal["app", "user", "owner", "session"]
VALID_SCOPES: tuple[str, ...] = ("app", "user", "owner", "session")
SCOPE_FIELDS = {"user": "_user_id", "owner": "_team_id", "session": "_session_id"}
"""The document field each scope filters on (Capsule's names; owner scope uses ``_team_id``)."""

VALID_COLUMN_TYPES = frozenset(
    {"text", "number", "currency", "date", "link", "file", "email", "status", "tags", "boolean", "score"}
)  # cpsl 0.3.181 db.VALID_COLUMN_TYPES
MAX_COLLECTION_NAME = 255



class DocumentStore(Protocol):
    """The ``Store`` as collections and the key-value store use it."""

    @property
    def documents(self) -> DocumentQueries: ...

    @property
    def kv(self) -> KVQueries: ...


StoreGetter = Callable[[], DocumentStore | None]
ChangeHook = Callable[[str, str], Awaitable[None] | None]


@dataclass(frozen=True)
class Backend:
    """What every handle needs: the store, the change hook, and the SQLite write gate."""

    store_getter: StoreGetter
    on_change: ChangeHook | None = None
    gate: WriteGate = field(default_factory=WriteGate)

    def started(self) -> bool:
        """Whether the store is up (the getter may return None or raise before start)."""
        try:
            return self.store_getter() is not None
        except RuntimeError:
            return False

    def source(self, what: str) -> DocumentStore:
        store = self.store_getter()
        if store is None:
            raise RuntimeError(f"{what} is not bound yet: the store is not started.")
        return store


@dataclass(frozen=True)
class ScopeIdentity:
    """Who a scoped operation acts for. ``owner_id`` is ``UserInfo.owner_id`` (``org:<id>`` or the user)."""

    user_id: str | None = None
    owner_id: str | None = None
    session_id: str | None = None

    @classmethod
    def for_user(cls, user: Any, session_id: str | None = None) -> ScopeIdentity:
        """From a ``UserInfo`` (``id``, ``owner_id``) and the session id ("" for synthetic sessions)."""
        if user is None:
            return cls(session_id=session_id or None)
        return cls(user_id=user.id or None, owner_id=user.owner_id or None, session_id=session_id or None)


def scope_filter(scope: str, identity: ScopeIdentity | None, *, collection: str = "") -> dict[str, str]:
    """The ``{field: value}`` a scope adds to filters and documents (``{}`` for app scope).

    RuntimeError when the identity lacks what the scope needs, as Capsule's ``CollectionRef`` does.
    """
    if scope not in VALID_SCOPES:
        raise ValueError(f"scope must be one of {VALID_SCOPES}, got {scope!r}")
    if scope == "app":
        return {}
    label = f"Collection {collection!r}" if collection else "This store"
    if identity is None:
        raise RuntimeError(
            f"{label} has scope={scope!r} but no active handler context. Use it inside a "
            "@message, @action, @task, @data or @endpoint handler."
        )
    if scope == "user":
        value = identity.user_id
    elif scope == "owner":
        value = identity.owner_id or identity.user_id
    else:
        value = identity.session_id
    if not value:
        what = "an active session id" if scope == "session" else "an authenticated user context"
        raise RuntimeError(f"{label} has scope={scope!r} but no {what}.")
    return {SCOPE_FIELDS[scope]: value}


# -- declarations --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """A typed column for the collection table UI (``app.collection(columns=[...])``)."""

    key: str
    type: str = "text"
    label: str | None = None
    format: str | None = None

    def __post_init__(self) -> None:
        if not self.key or self.key.startswith("$") or "." in self.key or "\x00" in self.key:
            raise ValueError(f"invalid column key {self.key!r}")
        if self.type not in VALID_COLUMN_TYPES:
            raise ValueError(f"invalid column type {self.type!r}; use one of {sorted(VALID_COLUMN_TYPES)}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | str) -> Column:
        """A column from its dict form (``to_dict``) or a bare key (Capsule's name for ``of``)."""
        return cls.of(d)

    @classmethod
    def of(cls, value: str | Column | Mapping[str, Any]) -> Column:
        if isinstance(value, Column):
            return value
        if isinstance(value, str):
            return cls(key=value)
        if isinstance(value, Mapping):
            return cls(
                key=value["key"],
                type=value.get("type", "text"),
                label=value.get("label"),
                format=value.get("format"),
            )
        raise TypeError("columns must be strings, Column objects or column dicts")

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"key": self.key, "type": self.type}
        if self.label is not None:
            data["label"] = self.label
        if self.format is not None:
            data["format"] = self.format
        return data


@dataclass(frozen=True)
class CollectionSpec:
    """A collection as declared by ``app.collection(...)``."""

    name: str
    scope: str = "app"
    columns: tuple[Column, ...] | None = None
    sortable: bool = False
    filterable: bool = False
    paginate: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "scope": self.scope,
            "columns": None if self.columns is None else [column.to_dict() for column in self.columns],
            "sortable": self.sortable,
            "filterable": self.filterable,
            "paginate": self.paginate,
        }


def _check_collection_name(name: Any) -> str:
    if not isinstance(name, str) or not name or len(name) > MAX_COLLECTION_NAME:
        raise ValueError(f"a collection name must be a non-empty string of at most {MAX_COLLECTION_NAME} characters")
    if "$" in name or "\x00" in name:
        raise ValueError(f"invalid collection name {name!r}")
    return name


def _columns(columns: Iterable[str | Column | Mapping[str, Any]] | None) -> tuple[Column, ...] | None:
    if columns is None:
        return None
    normalised = tuple(Column.of(column) for column in columns)
    keys = [column.key for column in normalised]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate column keys in {keys!r}")
    return normalised


# -- rows and queries ----------------------------------------------------------------------------


class CollectionRow(dict[str, Any]):
    """A document as a dict, with ``id`` (alias of ``_id``) and Django-style persistence helpers."""

    def __init__(self, data: Mapping[str, Any], collection: _CollectionHandle) -> None:
        super().__init__(data)
        if ID_FIELD in self:
            self.setdefault("id", self[ID_FIELD])
        self._collection = collection

    @property
    def id(self) -> str:
        if ID_FIELD not in self:
            raise ValueError("row has no id")
        return self[ID_FIELD]

    async def update(self, patch: Mapping[str, Any]) -> dict[str, Any]:  # type: ignore[override]
        """Apply ``patch`` (plain fields or operators) to this row in the store and here."""
        result = await self._collection._update({ID_FIELD: self.id}, patch, upsert=False)
        if result.document is not None:
            self.clear()
            dict.update(self, result.document)
            self.setdefault("id", self[ID_FIELD])
        return result.as_dict()

    async def delete(self) -> dict[str, int]:
        return await self._collection.delete_one({ID_FIELD: self.id})


@dataclass(frozen=True)
class CollectionQuery:
    """A lazy Django-style query: chain ``filter/exclude/order_by/limit/offset``, then await it."""

    collection: _CollectionHandle
    filter_doc: Mapping[str, Any] | None = None
    limit_value: int = 0
    skip_value: int = 0
    sort_spec: tuple[tuple[str, int], ...] = ()

    def _with(self, **changes: Any) -> CollectionQuery:
        values: dict[str, Any] = {
            "filter_doc": self.filter_doc,
            "limit_value": self.limit_value,
            "skip_value": self.skip_value,
            "sort_spec": self.sort_spec,
        }
        values.update(changes)
        return CollectionQuery(self.collection, **values)

    def __await__(self) -> Any:
        return self.all().__await__()

    async def __aiter__(self) -> AsyncIterator[CollectionRow]:
        for row in await self.all():
            yield row

    def filter(self, **lookups: Any) -> CollectionQuery:
        """Narrow the query; conditions add up (``filter(a__gt=1).filter(a__lt=5)`` keeps both)."""
        return self._with(filter_doc=merge_filters(self.filter_doc, lookups_to_filter(**lookups)))

    def exclude(self, **lookups: Any) -> CollectionQuery:
        excluded = lookups_to_filter(**lookups)
        return self._with(filter_doc=merge_filters(self.filter_doc, {"$nor": [excluded]} if excluded else None))

    def limit(self, n: int) -> CollectionQuery:
        if int(n) < 0:
            raise ValueError("limit cannot be negative")
        return self._with(limit_value=int(n))

    def offset(self, n: int) -> CollectionQuery:
        if int(n) < 0:
            raise ValueError("offset cannot be negative")
        return self._with(skip_value=int(n))

    def order_by(self, *fields: str) -> CollectionQuery:
        """``order_by("-created", "name")``; ``id`` means ``_id``."""
        return self._with(sort_spec=tuple(normalise_sort(list(fields))))

    async def all(self) -> list[CollectionRow]:
        return await self.collection.find(
            self.filter_doc, limit=self.limit_value, skip=self.skip_value, sort=list(self.sort_spec) or None
        )

    async def first(self) -> CollectionRow | None:
        rows = await self.limit(1).all()
        return rows[0] if rows else None

    async def one(self) -> CollectionRow:
        rows = await self.limit(2).all()
        if len(rows) != 1:
            raise ValueError(f"expected exactly one row, got {len(rows) if len(rows) < 2 else 'more'}")
        return rows[0]

    async def count(self) -> int:
        if self.limit_value or self.skip_value:
            return len(await self.all())
        return await self.collection.count(self.filter_doc)

    async def delete(self) -> dict[str, int]:
        """Delete what the query selects (with limit/offset: exactly those rows)."""
        if not self.limit_value and not self.skip_value:
            return await self.collection.delete_many(self.filter_doc or {})
        rows = await self.all()
        if not rows:
            return {"deleted": 0}
        return await self.collection.delete_many({ID_FIELD: {"$in": [row.id for row in rows]}})


# -- collection handles --------------------------------------------------------------------------


class _CollectionHandle:
    """CRUD on one collection, confined to the scope ``_scope_fields()`` returns."""

    def __init__(self, name: str, backend: Backend) -> None:
        self.name = _check_collection_name(name)
        self._backend = backend

    # -- what subclasses decide

    def _scope_fields(self) -> dict[str, str]:
        return {}

    # -- plumbing

    def _source(self) -> DocumentStore:
        return self._backend.source(f"Collection {self.name!r}")

    def _scoped(self, filter: Mapping[str, Any] | None) -> tuple[dict[str, Any], dict[str, str]]:
        if filter is not None and not isinstance(filter, Mapping):
            raise ValueError(f"a filter must be a dict, got {type(filter).__name__}")
        scope = self._scope_fields()
        return merge_filters(scope, filter), scope

    def _row(self, document: Mapping[str, Any]) -> CollectionRow:
        return CollectionRow(document, self)

    def _document_for_insert(self, document: Mapping[str, Any], scope: dict[str, str]) -> dict[str, Any]:
        if not isinstance(document, Mapping):
            raise ValueError(f"a document must be a dict, got {type(document).__name__}")
        stored = dict(document)
        if "id" in stored and ID_FIELD in stored and stored["id"] == stored[ID_FIELD]:
            del stored["id"]  # the alias of a row read back from us, not a field of its own
        stored.update(scope)  # the scope always wins over what the caller wrote
        return stored

    async def _changed(self, reason: str = "data") -> None:
        hook = self._backend.on_change
        if hook is None or self.name.startswith("_"):
            return
        try:
            outcome = hook(self.name, reason)
            if inspect.isawaitable(outcome):
                await outcome
        except Exception:
            log.exception("collection change hook failed for %r", self.name)

    # -- CRUD

    async def insert_one(self, document: Mapping[str, Any]) -> CollectionRow:
        """Insert one document; returns it as stored (with ``_id`` and the ``id`` alias)."""
        scope = self._scope_fields()
        stored = await self._source().documents.insert(
            self.name, [self._document_for_insert(document, scope)], gate=self._backend.gate
        )
        await self._changed()
        return self._row(stored[0])

    async def insert_many(self, documents: Sequence[Mapping[str, Any]]) -> list[CollectionRow]:
        """Insert all documents in one transaction (all or none)."""
        if isinstance(documents, Mapping | str | bytes):
            raise ValueError("insert_many needs a list of documents")
        scope = self._scope_fields()
        prepared = [self._document_for_insert(document, scope) for document in documents]
        stored = await self._source().documents.insert(self.name, prepared, gate=self._backend.gate)
        if stored:
            await self._changed()
        return [self._row(document) for document in stored]

    async def find(
        self, filter: Mapping[str, Any] | None = None, limit: int = 0, skip: int = 0, sort: Any = None
    ) -> list[CollectionRow]:
        """Documents matching ``filter`` (MongoDB syntax); ``sort`` is ``{field: 1|-1}`` or ``"-field"``."""
        scoped, _ = self._scoped(filter)
        found = await self._source().documents.find(self.name, scoped, sort=sort, skip=skip, limit=limit)
        return [self._row(document) for document in found]

    async def find_one(self, filter: Mapping[str, Any] | None = None, *, sort: Any = None) -> CollectionRow | None:
        rows = await self.find(filter, limit=1, sort=sort)
        return rows[0] if rows else None

    raw_filter = find
    raw_get = find_one

    async def count(self, filter: Mapping[str, Any] | None = None) -> int:
        scoped, _ = self._scoped(filter)
        return await self._source().documents.count(self.name, scoped)

    async def update_one(
        self, filter: Mapping[str, Any] | None, update: Mapping[str, Any], *, upsert: bool = False
    ) -> dict[str, Any]:
        """Update the first match: ``{"matched", "modified"}`` (plus ``upserted_id`` after an upsert).

        A plain dict is a patch (``$set``); a dict of operators passes through; mixing the two or
        an empty update raises ValueError.
        """
        result = await self._update(filter, update, upsert=upsert)
        return result.as_dict()

    def _scoped_update(
        self, filter: Mapping[str, Any] | None, update: Mapping[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The scoped filter and the normalised update, refusing updates that write the scope field."""
        scoped, scope = self._scoped(filter)
        normalised = normalise_update(update)
        for path in update_paths(normalised):
            for scope_field in scope:
                if path == scope_field or path.startswith(scope_field + "."):
                    raise ValueError(f"cannot change {scope_field!r}: collection {self.name!r} is scoped by it")
        return scoped, normalised

    async def update_many(self, filter: Mapping[str, Any] | None, update: Mapping[str, Any]) -> dict[str, Any]:
        """Update every match, in one transaction: ``{"matched", "modified"}`` (MongoDB's, not Capsule's)."""
        scoped, normalised = self._scoped_update(filter, update)
        result = await self._source().documents.update_many(self.name, scoped, normalised, gate=self._backend.gate)
        if result.matched:
            await self._changed()
        return result.as_dict()

    async def _update(
        self, filter: Mapping[str, Any] | None, update: Mapping[str, Any], *, upsert: bool
    ) -> UpdateResult:
        scoped, normalised = self._scoped_update(filter, update)
        result = await self._source().documents.update_one(
            self.name, scoped, normalised, upsert=upsert, gate=self._backend.gate
        )
        if result.matched or result.upserted_id is not None:
            await self._changed()
        return result

    async def delete_one(self, filter: Mapping[str, Any] | None) -> dict[str, int]:
        scoped, _ = self._scoped(filter)
        deleted = await self._source().documents.delete_one(self.name, scoped, gate=self._backend.gate)
        if deleted:
            await self._changed()
        return {"deleted": deleted}

    async def delete_many(self, filter: Mapping[str, Any] | None) -> dict[str, int]:
        """Delete every match. ``{}`` deletes the whole collection (within this handle's scope)."""
        if filter is None:
            raise ValueError("delete_many needs a filter; pass {} to delete everything in scope")
        scoped, _ = self._scoped(filter)
        deleted = await self._source().documents.delete_many(self.name, scoped, gate=self._backend.gate)
        if deleted:
            await self._changed()
        return {"deleted": deleted}

    async def delete_rows(self, rows_or_ids: Any) -> dict[str, int]:
        """Delete rows given as rows, dicts with ``_id``/``id``, or ids."""
        if isinstance(rows_or_ids, str | bytes | Mapping) or not isinstance(rows_or_ids, Iterable):
            rows_or_ids = [rows_or_ids]
        ids: list[str] = []
        for item in rows_or_ids:
            value = item.get(ID_FIELD) or item.get("id") if isinstance(item, Mapping) else item
            value = normalise_id(value)
            if value:
                ids.append(str(value))
        if not ids:
            raise ValueError("delete_rows requires at least one row id")
        return await self.delete_many({ID_FIELD: {"$in": ids}})

    # -- Django style

    def all(self) -> CollectionQuery:
        return CollectionQuery(self)

    def filter(self, **lookups: Any) -> CollectionQuery:
        """A lazy query; see ``gateway.query.lookups_to_filter`` (keys starting with ``_`` are ignored)."""
        return CollectionQuery(self, lookups_to_filter(**lookups))

    def exclude(self, **lookups: Any) -> CollectionQuery:
        return CollectionQuery(self).exclude(**lookups)

    def order_by(self, *fields: str) -> CollectionQuery:
        return CollectionQuery(self).order_by(*fields)

    async def get(self, **lookups: Any) -> CollectionRow | None:
        """The first row matching the lookups, or None (Capsule's semantics, not Django's)."""
        return await self.filter(**lookups).first()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class Collection(_CollectionHandle):
    """``app.db.<name>``: raw and unscoped; it sees and writes every scope's documents."""


class ScopedCollection(_CollectionHandle):
    """``session.db.<name>``: confined to one identity's scope."""

    def __init__(
        self,
        name: str,
        scope: str,
        identity: ScopeIdentity,
        backend: Backend,
    ) -> None:
        super().__init__(name, backend)
        self.scope = scope
        self._fields = scope_filter(scope, identity, collection=name)

    def _scope_fields(self) -> dict[str, str]:
        return dict(self._fields)

    def __repr__(self) -> str:
        return f"ScopedCollection({self.name!r}, scope={self.scope!r}, {self._fields!r})"


COLUMNS_KV_SCOPE = "columns"
"""KV entries of this scope hold stored column schemas: key = collection, scope_id = "<scope>:<id>"."""


class _ColumnSchema(_CollectionHandle):
    """Column schema methods of ``CollectionRef`` and ``DynamicCollection``.

    A stored schema is per collection and per scope value (each user of a user-scoped collection
    has their own columns, as in Capsule); without one, the declared columns are the schema.
    """

    spec: CollectionSpec

    def _schema_key(self) -> tuple[str, str]:
        values = list(self._scope_fields().values())
        return COLUMNS_KV_SCOPE, f"{self.spec.scope}:{values[0] if values else ''}"

    async def list_columns(self) -> list[Column]:
        """The stored schema, else the declared columns (also before the store starts, as in Capsule)."""
        if not self._backend.started():
            return list(self.spec.columns or ())
        found, stored = await self._source().kv.get(*self._schema_key(), self.name)
        if found and stored:
            return [Column.of(column) for column in stored]
        return list(self.spec.columns or ())

    async def set_columns(self, columns: Iterable[str | Column | Mapping[str, Any]]) -> list[Column]:
        normalised = list(_columns(columns) or ())
        stored = [column.to_dict() for column in normalised]
        await self._source().kv.set(*self._schema_key(), self.name, stored, gate=self._backend.gate)
        await self._changed("schema")
        return normalised

    async def add_column(
        self,
        key: str,
        *,
        type: str = "text",
        label: str | None = None,
        format: str | None = None,
        default: Any = None,
        backfill: bool = False,
    ) -> list[Column]:
        """Add a column; with ``backfill``, rows in scope without the field get ``default``."""
        column = Column(key=key, type=type, label=label, format=format)
        columns = await self.list_columns()
        if any(existing.key == key for existing in columns):
            raise ValueError(f"column {key!r} already exists")
        if backfill:
            await self.update_many({key: {"$exists": False}}, {"$set": {key: default}})
        elif default is not None:
            raise ValueError("default= is only used with backfill=True")
        return await self.set_columns([*columns, column])

    async def remove_column(self, key: str, *, drop_values: bool = False) -> list[Column]:
        """Remove a column; with ``drop_values``, the field is also removed from rows in scope."""
        columns = await self.list_columns()
        if drop_values:
            await self.update_many({key: {"$exists": True}}, {"$unset": {key: ""}})
        return await self.set_columns([column for column in columns if column.key != key])

    async def rename_column(self, old_key: str, new_key: str, *, migrate_values: bool = False) -> list[Column]:
        """Rename a column; with ``migrate_values``, rows in scope have the field renamed too."""
        columns = await self.list_columns()
        if not any(column.key == old_key for column in columns):
            raise ValueError(f"column {old_key!r} does not exist")
        if any(column.key == new_key for column in columns):
            raise ValueError(f"column {new_key!r} already exists")
        renamed = [
            Column(key=new_key, type=column.type, label=column.label, format=column.format)
            if column.key == old_key
            else column
            for column in columns
        ]
        if migrate_values:
            await self.update_many({old_key: {"$exists": True}}, {"$rename": {old_key: new_key}})
        return await self.set_columns(renamed)


class DynamicCollection(_ColumnSchema, ScopedCollection):
    """What ``await session.collections.get(name, scope=...)`` returns (app scope is unscoped)."""

    def __init__(
        self,
        spec: CollectionSpec,
        identity: ScopeIdentity | None,
        backend: Backend,
    ) -> None:
        _CollectionHandle.__init__(self, spec.name, backend)
        self.scope = spec.scope
        self.spec = spec
        self._fields = scope_filter(spec.scope, identity, collection=spec.name)


class CollectionRef(_ColumnSchema):
    """What ``app.collection(name, ...)`` returns: usable anywhere once the store is up.

    App scope works anywhere. Other scopes take the identity from the running handler
    (``current_scope``) and raise RuntimeError outside one, as Capsule does.
    """

    def __init__(
        self,
        spec: CollectionSpec,
        backend: Backend,
        current_scope: Callable[[], ScopeIdentity | None],
    ) -> None:
        super().__init__(spec.name, backend)
        self.spec = spec
        self._current_scope = current_scope

    @property
    def scope(self) -> str:
        return self.spec.scope

    @property
    def columns(self) -> tuple[Column, ...] | None:
        return self.spec.columns

    def _scope_fields(self) -> dict[str, str]:
        if self.spec.scope == "app":
            return {}
        return scope_filter(self.spec.scope, self._current_scope(), collection=self.name)

    def __repr__(self) -> str:
        return f"CollectionRef({self.name!r}, scope={self.spec.scope!r})"


# -- database proxies ----------------------------------------------------------------------------


class DatabaseProxy:
    """``app.db``: ``app.db.notes`` (or ``app.db["my-notes"]``) is an unscoped ``Collection``."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._handles: dict[str, Collection] = {}

    def __getattr__(self, name: str) -> Collection:
        if name.startswith("_"):
            raise AttributeError(name)
        return self[name]

    def __getitem__(self, name: str) -> Collection:
        if name not in self._handles:
            self._handles[name] = Collection(name, self._backend)
        return self._handles[name]


class ScopedDatabase:
    """``session.db``: ``session.db.notes`` is the collection confined to this session's identity.

    Raises ValueError for app-scoped and undeclared collections (Capsule treats undeclared names
    as app scope): those are reached through ``app.db``.
    """

    def __init__(self, manager: CollectionManager, identity: ScopeIdentity) -> None:
        self._manager = manager
        self._identity = identity
        self._handles: dict[str, ScopedCollection] = {}

    def __getattr__(self, name: str) -> ScopedCollection:
        if name.startswith("_"):
            raise AttributeError(name)
        return self[name]

    def __getitem__(self, name: str) -> ScopedCollection:
        if name not in self._handles:
            spec = self._manager.spec(name)
            if spec is None or spec.scope == "app":
                raise ValueError(
                    f"Collection {name!r} has scope='app'"
                    + ("" if spec else " (it is not declared with app.collection)")
                    + f". Use app.db.{name} instead of session.db.{name}"
                )
            self._handles[name] = ScopedCollection(name, spec.scope, self._identity, self._manager.backend)
        return self._handles[name]


class IdentityCollections:
    """``session.collections``: ``await session.collections.get(name, scope=None)``."""

    def __init__(self, manager: CollectionManager, identity: ScopeIdentity | None) -> None:
        self._manager = manager
        self._identity = identity

    async def get(self, name: str, *, scope: str | None = None) -> DynamicCollection:
        return self._manager.dynamic(name, scope=scope, identity=self._identity)


class CollectionManager:
    """The app's collection declarations and the handles built from them (see the module doc)."""

    def __init__(
        self,
        store_getter: StoreGetter,
        current_scope: Callable[[], ScopeIdentity | None],
        *,
        on_change: ChangeHook | None = None,
        write_gate: WriteGate | None = None,
    ) -> None:
        self.backend = Backend(store_getter, on_change, write_gate or WriteGate())
        self.current_scope = current_scope
        self._specs: dict[str, CollectionSpec] = {}

    def declare(
        self,
        name: str,
        scope: str = "app",
        columns: Iterable[str | Column | Mapping[str, Any]] | None = None,
        *,
        sortable: bool = False,
        filterable: bool = False,
        paginate: int = 0,
    ) -> CollectionRef:
        """``app.collection(...)``. Declaring a name again replaces its columns; not its scope."""
        if scope not in VALID_SCOPES:
            raise ValueError(f"scope must be one of {VALID_SCOPES}, got {scope!r}")
        spec = CollectionSpec(
            name=_check_collection_name(name),
            scope=scope,
            columns=_columns(columns),
            sortable=sortable,
            filterable=filterable,
            paginate=int(paginate),
        )
        existing = self._specs.get(name)
        if existing is not None and existing.scope != scope:
            raise ValueError(f"collection {name!r} is already declared with scope={existing.scope!r}")
        self._specs[name] = spec
        return CollectionRef(spec, self.backend, self.current_scope)

    def spec(self, name: str) -> CollectionSpec | None:
        return self._specs.get(name)

    @property
    def specs(self) -> list[CollectionSpec]:
        return list(self._specs.values())

    def scoped(self, identity: ScopeIdentity) -> ScopedDatabase:
        return ScopedDatabase(self, identity)

    def unscoped(self) -> DatabaseProxy:
        return DatabaseProxy(self.backend)

    def for_identity(self, identity: ScopeIdentity | None) -> IdentityCollections:
        return IdentityCollections(self, identity)

    def dynamic(self, name: str, *, scope: str | None = None, identity: ScopeIdentity | None) -> DynamicCollection:
        """A handle on ``name`` in ``scope`` (required when ``name`` was not declared)."""
        declared = self._specs.get(name)
        resolved = scope or (declared.scope if declared else None)
        if resolved is None:
            raise ValueError(f"scope is required for collection {name!r} because it is not declared")
        if resolved not in VALID_SCOPES:
            raise ValueError(f"scope must be one of {VALID_SCOPES}, got {resolved!r}")
        if declared is not None and scope is not None and scope != declared.scope:
            raise ValueError(f"collection {name!r} is declared with scope={declared.scope!r}, got {scope!r}")
        spec = declared or CollectionSpec(name=_check_collection_name(name), scope=resolved)
        return DynamicCollection(spec, identity, self.backend)

    async def get(self, name: str, *, scope: str | None = None) -> DynamicCollection:
        """``await app.collections.get(name, scope=None)``, for the running handler's identity."""
        return self.dynamic(name, scope=scope, identity=self.current_scope())
