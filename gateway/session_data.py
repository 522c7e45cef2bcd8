"""``session.data``: a dict that knows which top-level keys a turn changed, nested edits included.

Capsule marks the whole dict dirty; chatgate records *which* top-level keys changed so the store
can merge them into the saved document key by key: two handlers of one session that write
different keys both keep their writes (last writer wins per key, as in Capsule's conflict retry).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import math
from collections.abc import Callable, Iterable
from typing import Any

from pydantic import BaseModel


def to_json_value(value: Any) -> Any:
    """Coerce a value to plain JSON types the way Capsule does when it saves ``data``."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): to_json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_json_value(v) for v in value]
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return to_json_value(value.value)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="replace")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_json_value(dataclasses.asdict(value))
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return str(value)


class _Tracked:
    """Mixin: report a mutation to every owner: the top-level keys of ``session.data`` and the
    containers it sits in. A value put in a second place (``data["log"].append(data["draft"])``)
    reports to both, so a later edit through either is saved under both keys."""

    _owners: list[Callable[[], None]]

    def _adopt(self, notify: Callable[[], None]) -> None:
        if notify not in self._owners:
            self._owners.append(notify)

    def _notify(self) -> None:
        for owner in list(self._owners):
            owner()


class TrackedList(list, _Tracked):
    def __init__(self, items: Iterable[Any], notify: Callable[[], None]) -> None:
        self._owners = [notify]
        super().__init__(_wrap(v, self._notify) for v in items)

    def _changed(self) -> None:
        self._notify()

    def append(self, value: Any) -> None:
        super().append(_wrap(value, self._notify))
        self._changed()

    def extend(self, values: Iterable[Any]) -> None:
        super().extend(_wrap(v, self._notify) for v in values)
        self._changed()

    def insert(self, index: Any, value: Any) -> None:
        super().insert(index, _wrap(value, self._notify))
        self._changed()

    def __setitem__(self, index: Any, value: Any) -> None:
        if isinstance(index, slice):
            super().__setitem__(index, [_wrap(v, self._notify) for v in value])
        else:
            super().__setitem__(index, _wrap(value, self._notify))
        self._changed()

    def __delitem__(self, index: Any) -> None:
        super().__delitem__(index)
        self._changed()

    def __iadd__(self, values: Iterable[Any]) -> TrackedList:  # type: ignore[misc]
        self.extend(values)
        return self

    def __imul__(self, times: Any) -> TrackedList:  # type: ignore[misc]
        super().__imul__(times)
        self._changed()
        return self

    def pop(self, index: Any = -1) -> Any:
        value = super().pop(index)
        self._changed()
        return value

    def remove(self, value: Any) -> None:
        super().remove(value)
        self._changed()

    def clear(self) -> None:
        super().clear()
        self._changed()

    def sort(self, *args: Any, **kwargs: Any) -> None:
        super().sort(*args, **kwargs)
        self._changed()

    def reverse(self) -> None:
        super().reverse()
        self._changed()


class TrackedDict(dict, _Tracked):
    def __init__(self, items: dict[str, Any], notify: Callable[[], None]) -> None:
        self._owners = [notify]
        super().__init__({k: _wrap(v, self._notify) for k, v in items.items()})

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, _wrap(value, self._notify))
        self._notify()

    def __delitem__(self, key: Any) -> None:
        super().__delitem__(key)
        self._notify()

    def pop(self, *args: Any) -> Any:
        value = super().pop(*args)
        self._notify()
        return value

    def popitem(self) -> Any:
        value = super().popitem()
        self._notify()
        return value

    def setdefault(self, key: Any, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            super().__setitem__(key, _wrap(value, self._notify))
        self._notify()

    def __ior__(self, other: Any) -> TrackedDict:  # type: ignore[misc]
        self.update(other)
        return self

    def clear(self) -> None:
        super().clear()
        self._notify()


def _wrap(value: Any, notify: Callable[[], None]) -> Any:
    if isinstance(value, _Tracked):
        value._adopt(notify)
        return value
    if isinstance(value, dict):
        return TrackedDict(value, notify)
    if isinstance(value, list):
        return TrackedList(value, notify)
    return value


class SessionData(dict):
    """Persistent per-session state. Mutate it like a dict; it is saved after the handler."""

    def __init__(self, initial: dict[str, Any] | None = None) -> None:
        super().__init__()
        self._changed: set[str] = set()
        self._removed: set[str] = set()
        self._flush: Callable[[], Any] | None = None
        self._notifiers: dict[str, Callable[[], None]] = {}
        for key, value in (initial or {}).items():
            super().__setitem__(key, _wrap(value, self._notifier(key)))

    def _notifier(self, key: str) -> Callable[[], None]:
        """One callback per key (so a value re-stored under its key is not told twice)."""
        notify = self._notifiers.get(key)
        if notify is None:
            def notify() -> None:
                if key in self:  # an old value edited after its key was deleted changes nothing
                    self._mark(key)

            self._notifiers[key] = notify
        return notify

    def _mark(self, key: str) -> None:
        self._changed.add(key)
        self._removed.discard(key)

    @property
    def dirty(self) -> bool:
        return bool(self._changed or self._removed)

    def take_changes(self) -> tuple[dict[str, Any], set[str]]:
        """The JSON form of every changed key and the removed keys; resets the tracking."""
        changed = {k: to_json_value(super(SessionData, self).__getitem__(k)) for k in self._changed if k in self}
        removed = set(self._removed)
        self._changed.clear()
        self._removed.clear()
        return changed, removed

    def restore_changes(self, changed: dict[str, Any], removed: set[str]) -> None:
        """Put changes back after a failed save, so the next save retries them."""
        self._changed.update(changed)
        self._removed.update(removed)

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, _wrap(value, self._notifier(key)))
        self._mark(key)

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        self._changed.discard(key)
        self._removed.add(key)

    def pop(self, *args: Any) -> Any:
        """``dict.pop(key[, default])``, recording the removal (Capsule's signature: ``*args``)."""
        if not args:
            raise TypeError("pop expected at least 1 argument, got 0")
        key = args[0]
        present = key in self
        value = super().pop(*args)
        if present:
            self._changed.discard(key)
            self._removed.add(key)
        return value

    def popitem(self) -> tuple[str, Any]:
        key, value = super().popitem()
        self._changed.discard(key)
        self._removed.add(key)
        return key, value

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def __ior__(self, other: Any) -> SessionData:  # type: ignore[misc]
        self.update(other)
        return self

    def clear(self) -> None:
        for key in list(self):
            del self[key]

    async def set(self, key: str, value: Any) -> Any:
        """Capsule's async setter: marks the key changed; saved with the turn."""
        self[key] = value
        return value

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(to_json_value(dict(self))))
