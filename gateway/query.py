"""MongoDB-style filters, update operators, sort specs and Django-style lookups over JSON documents.

Pure functions, no I/O: the collection store (``gateway/store/documents.py``) keeps documents as
JSON and uses this module to decide which documents a filter selects, what an update does to one,
and in what order results come back.

Written by hand on purpose: ``mongoquery`` only matches (no updates, no sort) and compares with
Python's ``==`` (so ``True == 1``), ``mongomock``/``montydb`` are whole fake servers. The semantics
follow MongoDB where it matters to apps:

* a dotted path (``"a.b.0.c"``) walks nested documents, list indexes, and through lists of
  documents (``{"tags.name": "x"}`` matches ``{"tags": [{"name": "x"}]}``);
* a condition on an array field matches when the array itself or any element satisfies it;
* ``{"f": None}`` matches a missing field or a null; ``$ne``/``$nin``/``$not`` match missing fields;
* comparisons (``$gt`` and friends) only compare values of the same kind (numbers with numbers,
  strings with strings...): across kinds they do not match and never raise. ``True`` is not ``1``;
* sorting orders across kinds as MongoDB does: null < numbers < strings < objects < arrays < booleans.

Embedded documents compare equal regardless of key order (MongoDB compares them in order), which
is what a Python user expects of dicts.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import functools
import itertools
import math
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, date, datetime, time
from typing import Any

__all__ = [
    "ID_FIELD",
    "SortSpec",
    "apply_update",
    "compare_values",
    "jsonable",
    "lookups_to_filter",
    "matches",
    "merge_filters",
    "normalise_id",
    "normalise_sort",
    "normalise_update",
    "sort_documents",
    "update_paths",
    "upsert_seed",
    "validate_filter",
    "values_at",
    "values_equal",
]

ID_FIELD = "_id"

SortSpec = list[tuple[str, int]]
"""A normalised sort: ``[(path, 1 | -1), ...]``, most significant key first."""

# -- the JSON value domain ---------------------------------------------------------------------


def jsonable(value: Any) -> Any:
    """Convert ``value`` to plain JSON types the way Capsule's session data does.

    datetime/date/time become ISO strings, enums their value, bytes are decoded (errors replaced),
    sets and tuples become lists, dataclasses and pydantic models dicts, non-finite floats null,
    keys strings, anything else ``str(value)``. Compiled regexes are kept (filters use them).
    Always returns new containers, so callers' objects are never aliased into stored documents.
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(item) for item in value]
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, re.Pattern):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    model_dump = getattr(value, "model_dump", None)
    if callable(model_dump):
        return jsonable(model_dump(mode="json"))
    return str(value)


_OBJECT_ID_WRAPPERS = ('ObjectId("', "ObjectId('", 'ObjectID("', "ObjectID('")
_OBJECT_ID_HEX = re.compile(r"[0-9a-fA-F]{24}")


def normalise_id(value: Any) -> Any:
    """Unwrap ``{"$oid": "..."}`` and ``ObjectId("...")`` spellings of an id, as Capsule does."""
    if isinstance(value, Mapping) and "$oid" in value:
        return normalise_id(value["$oid"])
    if isinstance(value, str):
        for prefix in _OBJECT_ID_WRAPPERS:
            quote = prefix[-1]
            inner = value[len(prefix) : -2]
            if value.startswith(prefix) and value.endswith(quote + ")") and _OBJECT_ID_HEX.fullmatch(inner):
                return inner
    return value


# -- ordering and equality ---------------------------------------------------------------------

_RANK_EMPTY_ARRAY = 0
_RANK_NULL = 1
_RANK_NUMBER = 2
_RANK_STRING = 3
_RANK_OBJECT = 4
_RANK_ARRAY = 5
_RANK_BOOL = 8
_RANK_OTHER = 9


def _rank(value: Any) -> int:
    """MongoDB's BSON type order, restricted to the JSON types documents hold."""
    if value is None:
        return _RANK_NULL
    if isinstance(value, bool):
        return _RANK_BOOL
    if isinstance(value, int | float):
        return _RANK_NUMBER
    if isinstance(value, str):
        return _RANK_STRING
    if isinstance(value, Mapping):
        return _RANK_OBJECT
    if isinstance(value, list | tuple):
        return _RANK_ARRAY
    return _RANK_OTHER


def compare_values(left: Any, right: Any) -> int:
    """Total order over JSON values: -1, 0 or 1. Never raises, whatever the two types are."""
    left_rank, right_rank = _rank(left), _rank(right)
    if left_rank != right_rank:
        return -1 if left_rank < right_rank else 1
    if left_rank in (_RANK_NUMBER, _RANK_STRING, _RANK_BOOL):
        return (left > right) - (left < right)
    if left_rank == _RANK_OBJECT:
        for (left_key, left_item), (right_key, right_item) in zip(left.items(), right.items(), strict=False):
            order = compare_values(left_key, right_key) or compare_values(left_item, right_item)
            if order:
                return order
        return (len(left) > len(right)) - (len(left) < len(right))
    if left_rank == _RANK_ARRAY:
        for left_item, right_item in zip(left, right, strict=False):
            order = compare_values(left_item, right_item)
            if order:
                return order
        return (len(left) > len(right)) - (len(left) < len(right))
    if left_rank == _RANK_OTHER:
        return compare_values(str(left), str(right))
    return 0


def values_equal(left: Any, right: Any) -> bool:
    """Equality as MongoDB sees it: ``1 == 1.0`` but ``True != 1``; dict key order is ignored."""
    left_rank, right_rank = _rank(left), _rank(right)
    if left_rank != right_rank:
        return False
    if left_rank == _RANK_OBJECT:
        return left.keys() == right.keys() and all(values_equal(left[key], right[key]) for key in left)
    if left_rank == _RANK_ARRAY:
        return len(left) == len(right) and all(values_equal(a, b) for a, b in zip(left, right, strict=True))
    return bool(left == right)


# -- paths ---------------------------------------------------------------------------------------


def _split_path(path: str) -> list[str]:
    if not isinstance(path, str) or not path or any(part == "" for part in path.split(".")):
        raise ValueError(f"invalid field path {path!r}")
    return path.split(".")


def _values_at(value: Any, parts: list[str]) -> list[Any]:
    """Every value a dotted path reaches, walking through lists of documents as MongoDB does."""
    if not parts:
        return [value]
    head, rest = parts[0], parts[1:]
    if isinstance(value, Mapping):
        return _values_at(value[head], rest) if head in value else []
    if isinstance(value, list):
        found: list[Any] = []
        if head.isdigit() and int(head) < len(value):
            found.extend(_values_at(value[int(head)], rest))
        for item in value:
            if isinstance(item, Mapping):
                found.extend(_values_at(item, parts))
        return found
    return []


def values_at(document: Mapping[str, Any], path: str) -> list[Any]:
    """The values ``path`` reaches in ``document`` (empty when the field is missing)."""
    return _values_at(document, _split_path(path))


# -- matching ------------------------------------------------------------------------------------

_LOGICAL_OPERATORS = ("$and", "$or", "$nor")
_REGEX_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE}


@functools.lru_cache(maxsize=256)
def _compile_regex(pattern: str, options: str) -> re.Pattern[str]:
    flags = 0
    for letter in options:
        if letter not in _REGEX_FLAGS:
            raise ValueError(f"unsupported $options flag {letter!r} (use i, m, s or x)")
        flags |= _REGEX_FLAGS[letter]
    try:
        return re.compile(pattern, flags)
    except re.error as exc:
        raise ValueError(f"invalid $regex {pattern!r}: {exc}") from exc


def _as_regex(pattern: Any, options: Any = "") -> re.Pattern[str]:
    if isinstance(pattern, re.Pattern):
        if options:
            return _compile_regex(pattern.pattern, str(options))
        return pattern
    if not isinstance(pattern, str):
        raise ValueError(f"$regex needs a string pattern, got {type(pattern).__name__}")
    if not isinstance(options, str):
        raise ValueError("$options must be a string such as 'i'")
    return _compile_regex(pattern, options)


def _is_operator_expression(condition: Any) -> bool:
    if not isinstance(condition, Mapping) or not condition:
        return False
    operator_keys = [key for key in condition if isinstance(key, str) and key.startswith("$")]
    if operator_keys and len(operator_keys) != len(condition):
        raise ValueError(f"a condition cannot mix operators and fields: {dict(condition)!r}")
    return bool(operator_keys)


def _any_value(candidates: list[Any], test: Callable[[Any], bool]) -> bool:
    """True when a value, or an element of an array value, passes ``test``."""
    for value in candidates:
        if test(value):
            return True
        if isinstance(value, list) and any(test(item) for item in value):
            return True
    return False


def _equals_condition(candidates: list[Any], expected: Any) -> bool:
    if isinstance(expected, re.Pattern):
        return _any_value(candidates, lambda value: isinstance(value, str) and bool(expected.search(value)))
    if expected is None and not candidates:
        return True
    return _any_value(candidates, lambda value: values_equal(value, expected))


def _comparison(expected: Any, accept: Callable[[int], bool]) -> Callable[[Any], bool]:
    def test(value: Any) -> bool:
        # Type bracketing: $gt 5 never matches a string, and comparing never raises.
        return _rank(value) == _rank(expected) and accept(compare_values(value, expected))

    return test


def _in_list(operator: str, operand: Any) -> list[Any]:
    if not isinstance(operand, list | tuple | set | frozenset):
        raise ValueError(f"{operator} needs a list, got {type(operand).__name__}")
    return list(operand)


def _match_in(candidates: list[Any], operand: Any, operator: str) -> bool:
    return any(_equals_condition(candidates, option) for option in _in_list(operator, operand))


def _match_operators(candidates: list[Any], expression: Mapping[str, Any]) -> bool:
    """Every operator of ``{"$gt": 1, "$lt": 5}`` must hold for the field's values."""
    options = expression.get("$options", "")
    if "$options" in expression and "$regex" not in expression:
        raise ValueError("$options needs a $regex beside it")
    for operator, operand in expression.items():
        if operator == "$options":
            continue
        if not _match_operator(candidates, operator, operand, options):
            return False
    return True


def _match_operator(candidates: list[Any], operator: str, operand: Any, options: Any) -> bool:
    if operator == "$eq":
        return _equals_condition(candidates, operand)
    if operator == "$ne":
        return not _equals_condition(candidates, operand)
    if operator == "$gt":
        return _any_value(candidates, _comparison(operand, lambda order: order > 0))
    if operator == "$gte":
        return _any_value(candidates, _comparison(operand, lambda order: order >= 0))
    if operator == "$lt":
        return _any_value(candidates, _comparison(operand, lambda order: order < 0))
    if operator == "$lte":
        return _any_value(candidates, _comparison(operand, lambda order: order <= 0))
    if operator == "$in":
        return _match_in(candidates, operand, operator)
    if operator == "$nin":
        return not _match_in(candidates, operand, operator)
    if operator == "$exists":
        return bool(candidates) == bool(operand)
    if operator == "$regex":
        regex = _as_regex(operand, options)
        return _any_value(candidates, lambda value: isinstance(value, str) and bool(regex.search(value)))
    if operator == "$not":
        if isinstance(operand, str | re.Pattern):
            return not _match_operator(candidates, "$regex", operand, "")
        if not _is_operator_expression(operand):
            raise ValueError("$not needs an operator expression such as {'$gt': 5} or a regex")
        return not _match_operators(candidates, operand)
    if operator == "$size":
        if isinstance(operand, bool) or not isinstance(operand, int):
            raise ValueError("$size needs an integer")
        return any(isinstance(value, list) and len(value) == operand for value in candidates)
    if operator == "$all":
        wanted = _in_list(operator, operand)
        return bool(wanted) and all(_equals_condition(candidates, item) for item in wanted)
    if operator == "$elemMatch":
        if not isinstance(operand, Mapping):
            raise ValueError("$elemMatch needs a filter document")
        return any(
            isinstance(value, list) and any(_element_matches(item, operand) for item in value) for value in candidates
        )
    raise ValueError(f"unsupported query operator {operator!r}")


def _element_matches(element: Any, condition: Mapping[str, Any]) -> bool:
    if _is_operator_expression(condition):
        return _match_operators([element], condition)
    return isinstance(element, Mapping) and matches(element, condition)


def _match_field(document: Mapping[str, Any], path: str, condition: Any) -> bool:
    candidates = values_at(document, path)
    if _is_operator_expression(condition):
        return _match_operators(candidates, condition)
    return _equals_condition(candidates, condition)


def _logical_clauses(operator: str, clauses: Any) -> list[Mapping[str, Any]]:
    if not isinstance(clauses, list | tuple) or not clauses:
        raise ValueError(f"{operator} needs a non-empty list of filters")
    for clause in clauses:
        if not isinstance(clause, Mapping):
            raise ValueError(f"{operator} entries must be filter documents, got {clause!r}")
    return list(clauses)


def matches(document: Mapping[str, Any], filter: Mapping[str, Any] | None) -> bool:
    """Whether ``document`` satisfies the MongoDB filter document ``filter`` (None or {} = all).

    Raises ValueError for a malformed filter (an unknown operator, ``$in`` without a list...),
    never for a document whose values have unexpected types.
    """
    if not filter:
        return True
    if not isinstance(filter, Mapping):
        raise ValueError(f"a filter must be a dict, got {type(filter).__name__}")
    for key, condition in filter.items():
        if not isinstance(key, str):
            raise ValueError(f"filter keys must be strings, got {key!r}")
        if key == "$and":
            if not all(matches(document, clause) for clause in _logical_clauses(key, condition)):
                return False
        elif key == "$or":
            if not any(matches(document, clause) for clause in _logical_clauses(key, condition)):
                return False
        elif key == "$nor":
            if any(matches(document, clause) for clause in _logical_clauses(key, condition)):
                return False
        elif key.startswith("$"):
            raise ValueError(f"unsupported top-level query operator {key!r}")
        elif not _match_field(document, key, condition):
            return False
    return True


def validate_filter(filter: Mapping[str, Any] | None) -> None:
    """Raise ValueError now for a malformed filter, even when no stored document would reach it.

    ``matches`` is lazy (``$and`` stops at the first false clause), so a bad operator deep inside
    a filter would otherwise surface only for some documents.
    """
    if filter is None:
        return
    if not isinstance(filter, Mapping):
        raise ValueError(f"a filter must be a dict, got {type(filter).__name__}")
    for key, condition in filter.items():
        if not isinstance(key, str):
            raise ValueError(f"filter keys must be strings, got {key!r}")
        if key in _LOGICAL_OPERATORS:
            for clause in _logical_clauses(key, condition):
                validate_filter(clause)
        elif key.startswith("$"):
            raise ValueError(f"unsupported top-level query operator {key!r}")
        else:
            _split_path(key)
            if _is_operator_expression(condition):
                _validate_operators(condition)


_VALUE_OPERATORS = frozenset({"$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$exists", "$options"})


def _validate_operators(expression: Mapping[str, Any]) -> None:
    if "$options" in expression and "$regex" not in expression:
        raise ValueError("$options needs a $regex beside it")
    for operator, operand in expression.items():
        if operator in _VALUE_OPERATORS:
            continue
        if operator in ("$in", "$nin", "$all"):
            _in_list(operator, operand)
        elif operator == "$regex":
            _as_regex(operand, expression.get("$options", ""))
        elif operator == "$not":
            if isinstance(operand, str | re.Pattern):
                _as_regex(operand)
            elif _is_operator_expression(operand):
                _validate_operators(operand)
            else:
                raise ValueError("$not needs an operator expression such as {'$gt': 5} or a regex")
        elif operator == "$size":
            if isinstance(operand, bool) or not isinstance(operand, int):
                raise ValueError("$size needs an integer")
        elif operator == "$elemMatch":
            if not isinstance(operand, Mapping):
                raise ValueError("$elemMatch needs a filter document")
            if _is_operator_expression(operand):
                _validate_operators(operand)
            else:
                validate_filter(operand)
        else:
            raise ValueError(f"unsupported query operator {operator!r}")


# -- updates ---------------------------------------------------------------------------------------

UPDATE_OPERATORS = frozenset(
    {
        "$set",
        "$unset",
        "$inc",
        "$mul",
        "$min",
        "$max",
        "$rename",
        "$push",
        "$addToSet",
        "$pull",
        "$pop",
        "$setOnInsert",
        "$currentDate",
    }
)


def normalise_update(update: Any) -> dict[str, Any]:
    """A plain dict becomes ``{"$set": update}``; an all-operator dict passes through unchanged.

    Mixing operators with plain fields, or an empty update, raises ValueError, as Capsule does.
    """
    if not isinstance(update, Mapping):
        raise ValueError(f"an update must be a dict, got {type(update).__name__}")
    if not update:
        raise ValueError("update document must not be empty")
    operator_keys = [key for key in update if isinstance(key, str) and key.startswith("$")]
    if operator_keys and len(operator_keys) != len(update):
        raise ValueError(
            "update document mixes operator keys (e.g. $set) with plain field keys: use either "
            "plain fields for a patch or operator syntax, not both"
        )
    if not operator_keys:
        return {"$set": dict(update)}
    return dict(update)


def update_paths(update: Mapping[str, Any]) -> list[str]:
    """Every field path an (operator-form) update writes, including ``$rename`` targets.

    Raises ValueError for unknown operators, malformed operands and paths that conflict (the same
    path, or a path and its parent, touched twice), as MongoDB does.
    """
    paths: list[str] = []
    for operator, fields in update.items():
        if operator not in UPDATE_OPERATORS:
            raise ValueError(f"unsupported update operator {operator!r}")
        if not isinstance(fields, Mapping):
            raise ValueError(f"{operator} needs a document of field paths, got {fields!r}")
        for path, operand in fields.items():
            _split_path(path)
            paths.append(path)
            if operator == "$rename":
                if not isinstance(operand, str):
                    raise ValueError(f"$rename target for {path!r} must be a field path string")
                _split_path(operand)
                paths.append(operand)
    ordered = sorted(paths)
    for first, second in itertools.pairwise(ordered):
        if first == second or second.startswith(first + "."):
            raise ValueError(f"update paths conflict: {first!r} and {second!r}")
    return paths


def _container_for(document: dict[str, Any], parts: list[str], *, create: bool) -> Any:
    """The dict or list that holds the last part of a path; with ``create``, made on the way."""
    node: Any = document
    for part in parts[:-1]:
        if isinstance(node, dict):
            if node.get(part) is None:
                if not create:
                    return None
                node[part] = {}
            node = node[part]
        elif isinstance(node, list) and part.isdigit():
            position = int(part)
            if position >= len(node) or node[position] is None:
                if not create:
                    return None
                node.extend([None] * (position + 1 - len(node)))
                node[position] = {}
            node = node[position]
        elif create:
            raise ValueError(f"cannot traverse {type(node).__name__} with {part!r} in {'.'.join(parts)!r}")
        else:
            return None
    if isinstance(node, dict | list):
        return node
    if create:
        raise ValueError(f"cannot create {'.'.join(parts)!r} inside a {type(node).__name__} value")
    return None


_MISSING = object()


def _get(document: dict[str, Any], path: str) -> Any:
    parts = _split_path(path)
    container = _container_for(document, parts, create=False)
    last = parts[-1]
    if isinstance(container, dict):
        return container.get(last, _MISSING)
    if isinstance(container, list) and last.isdigit() and int(last) < len(container):
        return container[int(last)]
    return _MISSING


def _set(document: dict[str, Any], path: str, value: Any) -> None:
    parts = _split_path(path)
    container = _container_for(document, parts, create=True)
    last = parts[-1]
    if isinstance(container, dict):
        container[last] = value
        return
    if not last.isdigit():
        raise ValueError(f"cannot set the field {last!r} of {path!r} on an array")
    position = int(last)
    if position >= len(container):
        container.extend([None] * (position + 1 - len(container)))
    container[position] = value


def _unset(document: dict[str, Any], path: str) -> None:
    parts = _split_path(path)
    container = _container_for(document, parts, create=False)
    last = parts[-1]
    if isinstance(container, dict):
        container.pop(last, None)
    elif isinstance(container, list) and last.isdigit() and int(last) < len(container):
        container[int(last)] = None  # MongoDB keeps array positions: $unset nulls the element


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _arithmetic(document: dict[str, Any], operator: str, path: str, operand: Any) -> None:
    if not _is_number(operand):
        raise ValueError(f"{operator} needs a number for {path!r}, got {operand!r}")
    current = _get(document, path)
    if current is _MISSING or (current is None and operator == "$inc"):
        _set(document, path, operand if operator == "$inc" else 0 * operand)
        return
    if not _is_number(current):
        raise ValueError(f"cannot apply {operator} to the non-numeric field {path!r} ({current!r})")
    _set(document, path, current + operand if operator == "$inc" else current * operand)


def _array_at(document: dict[str, Any], operator: str, path: str) -> list[Any] | None:
    current = _get(document, path)
    if current is _MISSING:
        return None
    if not isinstance(current, list):
        raise ValueError(f"{operator} needs an array at {path!r}, found {type(current).__name__}")
    return current


def _each(operand: Any) -> tuple[list[Any], Mapping[str, Any]]:
    if isinstance(operand, Mapping) and "$each" in operand:
        items = operand["$each"]
        if not isinstance(items, list):
            raise ValueError("$each needs a list")
        return list(items), operand
    return [operand], {}


def _push(document: dict[str, Any], path: str, operand: Any) -> None:
    items, modifiers = _each(operand)
    unknown = set(modifiers) - {"$each", "$position", "$slice"}
    if unknown:
        raise ValueError(f"unsupported $push modifiers {sorted(unknown)!r}")
    current = _array_at(document, "$push", path)
    array = list(current) if current is not None else []
    position = modifiers.get("$position")
    if position is None:
        array.extend(items)
    else:
        if isinstance(position, bool) or not isinstance(position, int):
            raise ValueError("$position needs an integer")
        index = position if position >= 0 else max(len(array) + position, 0)
        array[index:index] = items
    if "$slice" in modifiers:
        limit = modifiers["$slice"]
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise ValueError("$slice needs an integer")
        array = array[:limit] if limit >= 0 else array[limit:]
    _set(document, path, array)


def _add_to_set(document: dict[str, Any], path: str, operand: Any) -> None:
    items, modifiers = _each(operand)
    if set(modifiers) - {"$each"}:
        raise ValueError("$addToSet only supports the $each modifier")
    current = _array_at(document, "$addToSet", path)
    array = list(current) if current is not None else []
    for item in items:
        if not any(values_equal(existing, item) for existing in array):
            array.append(item)
    _set(document, path, array)


def _pull(document: dict[str, Any], path: str, operand: Any) -> None:
    current = _array_at(document, "$pull", path)
    if current is None:
        return
    if _is_operator_expression(operand):
        keep = [item for item in current if not _match_operators([item], operand)]
    elif isinstance(operand, Mapping):
        keep = [
            item
            for item in current
            if not (isinstance(item, Mapping) and matches(item, operand)) and not values_equal(item, operand)
        ]
    else:
        keep = [item for item in current if not values_equal(item, operand)]
    _set(document, path, keep)


def _pop(document: dict[str, Any], path: str, operand: Any) -> None:
    if operand not in (1, -1) or isinstance(operand, bool):
        raise ValueError(f"$pop needs 1 (last) or -1 (first) for {path!r}")
    current = _array_at(document, "$pop", path)
    if current:
        _set(document, path, current[:-1] if operand == 1 else current[1:])


def _min_max(document: dict[str, Any], operator: str, path: str, operand: Any) -> None:
    current = _get(document, path)
    order = compare_values(operand, current) if current is not _MISSING else 0
    if current is _MISSING or (order < 0 if operator == "$min" else order > 0):
        _set(document, path, operand)


def _rename(document: dict[str, Any], path: str, target: str) -> None:
    value = _get(document, path)
    if value is _MISSING:
        return
    _unset(document, path)
    _set(document, target, value)


def apply_update(
    document: Mapping[str, Any],
    update: Mapping[str, Any],
    *,
    inserting: bool = False,
    now: datetime | None = None,
) -> tuple[dict[str, Any], bool]:
    """Apply an update (plain patch or operators) to a copy of ``document``.

    Returns ``(new_document, modified)``; ``document`` itself is never changed. ``$setOnInsert``
    only applies when ``inserting`` (an upsert creating the document). Changing ``_id`` raises
    ValueError, as do unknown operators, conflicting paths and type errors (``$inc`` on a string).
    """
    update = normalise_update(update)
    update_paths(update)
    original = dict(document)
    result: dict[str, Any] = copy.deepcopy(original)
    moment = (now or datetime.now(UTC)).isoformat()
    for operator, fields in update.items():
        for path, raw_operand in fields.items():
            operand = jsonable(raw_operand)
            if operator == "$set" or (operator == "$setOnInsert" and inserting):
                _set(result, path, operand)
            elif operator == "$setOnInsert":
                continue
            elif operator == "$unset":
                _unset(result, path)
            elif operator in ("$inc", "$mul"):
                _arithmetic(result, operator, path, operand)
            elif operator in ("$min", "$max"):
                _min_max(result, operator, path, operand)
            elif operator == "$rename":
                _rename(result, path, operand)
            elif operator == "$push":
                _push(result, path, operand)
            elif operator == "$addToSet":
                _add_to_set(result, path, operand)
            elif operator == "$pull":
                _pull(result, path, operand)
            elif operator == "$pop":
                _pop(result, path, operand)
            elif operator == "$currentDate":
                _set(result, path, moment)
    if ID_FIELD in original and not values_equal(result.get(ID_FIELD, _MISSING), original[ID_FIELD]):
        raise ValueError("an update cannot change or remove the immutable field '_id'")
    return result, not values_equal(result, original)


def upsert_seed(filter: Mapping[str, Any] | None) -> dict[str, Any]:
    """The document an upsert starts from: the filter's equality conditions, as MongoDB does.

    ``{"name": "x", "n": {"$gt": 1}, "$and": [{"team": "t"}]}`` seeds ``{"name": "x", "team": "t"}``;
    ``{"k": {"$eq": 1}}`` seeds ``{"k": 1}``. Dotted paths create nested documents.
    """
    seed: dict[str, Any] = {}
    for key, condition in (filter or {}).items():
        if key == "$and":
            for clause in _logical_clauses(key, condition):
                for path, value in upsert_seed(clause).items():
                    _set(seed, path, value)
        elif key.startswith("$"):
            continue
        elif _is_operator_expression(condition):
            if "$eq" in condition:
                _set(seed, key, jsonable(condition["$eq"]))
        elif not isinstance(condition, re.Pattern):
            _set(seed, key, jsonable(condition))
    return seed


# -- sorting ---------------------------------------------------------------------------------------


def _direction(field: str, value: Any) -> int:
    if value in (1, -1) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, str) and value.lower() in ("asc", "ascending", "desc", "descending"):
        return 1 if value.lower().startswith("asc") else -1
    raise ValueError(f"sort direction for {field!r} must be 1 or -1, got {value!r}")


def _django_field(name: str) -> str:
    return ID_FIELD if name == "id" else name


def normalise_sort(sort: Any) -> SortSpec:
    """Accept ``{field: 1|-1}``, ``"field"``/``"-field"``, or a list of those or of pairs.

    In the Django-style string form ``id`` means ``_id`` (as ``order_by("-id")`` does in Capsule).
    """
    if sort is None or sort == "" or sort == {} or sort == []:
        return []
    if isinstance(sort, str):
        descending = sort.startswith("-")
        name = sort[1:] if descending or sort.startswith("+") else sort
        _split_path(name)
        return [(_django_field(name), -1 if descending else 1)]
    if isinstance(sort, Mapping):
        spec: SortSpec = []
        for field, value in sort.items():
            _split_path(field)
            spec.append((field, _direction(field, value)))
        return spec
    if isinstance(sort, Iterable):
        spec = []
        for item in sort:
            if isinstance(item, str):
                spec.extend(normalise_sort(item))
            elif isinstance(item, list | tuple) and len(item) == 2:
                _split_path(item[0])
                spec.append((item[0], _direction(item[0], item[1])))
            else:
                raise ValueError(f"unsupported sort entry {item!r}")
        return spec
    raise ValueError(f"unsupported sort {sort!r}")


def _sort_value(document: Mapping[str, Any], path: str, direction: int) -> Any:
    """The value a document sorts by: missing is null; an array sorts by its min (asc) or max (desc)."""
    found = values_at(document, path)
    if not found:
        return None
    flattened: list[Any] = []
    for value in found:
        if isinstance(value, list):
            if not value:
                flattened.append(_EmptyArray.INSTANCE)
            flattened.extend(value)
        else:
            flattened.append(value)
    key = functools.cmp_to_key(_compare_sort_values)
    return min(flattened, key=key) if direction > 0 else max(flattened, key=key)


class _EmptyArray(enum.Enum):
    """An empty array sorts before null, as in MongoDB."""

    INSTANCE = "[]"


def _compare_sort_values(left: Any, right: Any) -> int:
    left_empty, right_empty = left is _EmptyArray.INSTANCE, right is _EmptyArray.INSTANCE
    if left_empty or right_empty:
        return (not left_empty) - (not right_empty)
    return compare_values(left, right)


def sort_documents(documents: Iterable[Mapping[str, Any]], sort: Any) -> list[Any]:
    """A new list of ``documents`` in ``sort`` order (stable; ties keep their incoming order)."""
    spec = normalise_sort(sort)
    rows = list(documents)
    if not spec:
        return rows
    keyed = [([_sort_value(row, path, direction) for path, direction in spec], row) for row in rows]

    def compare(left: tuple[list[Any], Any], right: tuple[list[Any], Any]) -> int:
        for (_, direction), left_value, right_value in zip(spec, left[0], right[0], strict=True):
            order = _compare_sort_values(left_value, right_value)
            if order:
                return order * direction
        return 0

    keyed.sort(key=functools.cmp_to_key(compare))
    return [row for _, row in keyed]


# -- Django-style lookups ----------------------------------------------------------------------------

_LOOKUP_OPERATORS = {
    "ne": "$ne",
    "gt": "$gt",
    "gte": "$gte",
    "lt": "$lt",
    "lte": "$lte",
    "in": "$in",
    "nin": "$nin",
}
_REGEX_LOOKUPS = {"contains": ("", ""), "startswith": ("^", ""), "endswith": ("", "$")}


def lookups_to_filter(**lookups: Any) -> dict[str, Any]:
    """Compile Django-style ``field__op=value`` keywords into a MongoDB filter document.

    ``op`` is ``exact`` (the default), ``ne``, ``gt``, ``gte``, ``lt``, ``lte``, ``in``, ``nin``, or
    ``contains``/``startswith``/``endswith`` (case-insensitive regexes on the escaped value).
    ``id`` means ``_id``. Several lookups on one field combine (``age__gt=1, age__lt=9``).

    Keys that start with ``_`` are **silently ignored**, exactly as Capsule does: ``_user_id=...``
    cannot widen or narrow a scoped query through lookups. Use ``find({...})`` for such fields, and
    for nested paths (a lookup key is one field name, optionally followed by one ``__op``).
    """
    compiled: dict[str, Any] = {}
    for raw_key, raw_value in lookups.items():
        if raw_key.startswith("_"):
            continue
        parts = raw_key.split("__")
        if len(parts) > 2 or not parts[0]:
            raise ValueError(f"invalid lookup {raw_key!r}: use field or field__op")
        field = _django_field(parts[0])
        op = parts[1] if len(parts) == 2 else "exact"
        value = jsonable(raw_value)
        if field == ID_FIELD:
            value = [normalise_id(item) for item in value] if isinstance(value, list) else normalise_id(value)
        if op == "exact":
            expression: dict[str, Any] = {"$eq": value}
        elif op in _LOOKUP_OPERATORS:
            expression = {_LOOKUP_OPERATORS[op]: value}
        elif op in _REGEX_LOOKUPS:
            prefix, suffix = _REGEX_LOOKUPS[op]
            expression = {"$regex": prefix + re.escape(str(value)) + suffix, "$options": "i"}
        else:
            raise ValueError(f"unsupported lookup operator {op!r} in {raw_key!r}")
        existing = compiled.get(field)
        if existing is None:
            compiled[field] = expression["$eq"] if op == "exact" else expression
            continue
        merged = existing if isinstance(existing, dict) and _is_operator_expression(existing) else {"$eq": existing}
        if set(merged) & set(expression):
            raise ValueError(f"lookup {raw_key!r} repeats a condition on {field!r}")
        compiled[field] = {**merged, **expression}
    return compiled


def merge_filters(*filters: Mapping[str, Any] | None) -> dict[str, Any]:
    """All of ``filters`` at once: ``$and`` of the non-empty ones (or the single one, unchanged)."""
    present = [dict(item) for item in filters if item]
    if not present:
        return {}
    if len(present) == 1:
        return present[0]
    return {"$and": present}
