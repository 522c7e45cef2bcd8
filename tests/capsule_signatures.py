"""Compare the public callables of Capsule's SDK (the installed ``cpsl`` package, read by
introspection only) with chatgate's ``gateway``: parameter names, kinds, defaults, and whether
a callable must be awaited.

``differences()`` returns one entry per mismatch, keyed ``Name``, ``Name.__init__`` or
``Name.method``; ``tests/capsule_signature_exceptions.toml`` lists the intended ones.

One rule is built in: chatgate may add parameters *after* all of Capsule's, each with a default
(``Session(..., *, runtime=None)``, ``find_one(filter=None, *, sort=None)``). Code written for
Capsule never passes them, so it cannot tell. Any other difference is a mismatch.
"""

from __future__ import annotations

import importlib
import inspect
import tomllib
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EXCEPTIONS_FILE = Path(__file__).with_name("capsule_signature_exceptions.toml")

MODULE_CLASSES = {
    # Capsule classes an app meets without importing them by name: where chatgate keeps each.
    "cpsl.db.CollectionRow": "gateway.collections.CollectionRow",
    "cpsl.db.CollectionQuery": "gateway.collections.CollectionQuery",
    "cpsl.db.Collection": "gateway.collections.Collection",
    "cpsl.db.ScopedCollection": "gateway.collections.ScopedCollection",
    "cpsl.db.DatabaseProxy": "gateway.collections.DatabaseProxy",
    "cpsl.db.ScopedDatabaseProxy": "gateway.collections.ScopedDatabase",
    "cpsl.session.SessionData": "gateway.session_data.SessionData",
    "cpsl.task_types.GlobalTaskQuery": "gateway.tasks.TaskQuery",
}


@dataclass(frozen=True)
class Difference:
    key: str
    what: str


def load(dotted: str) -> Any:
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def capsule_pairs() -> list[tuple[str, Any, Any]]:
    """(key, Capsule object, chatgate object or None) for every public callable of ``cpsl``."""
    import cpsl

    import gateway

    pairs: list[tuple[str, Any, Any]] = []
    for name in sorted(getattr(cpsl, "__all__", None) or dir(cpsl)):
        if name.startswith("_"):
            continue
        theirs = getattr(cpsl, name)
        if isinstance(theirs, types.ModuleType) or not callable(theirs):
            continue  # submodules, constants, Literal aliases
        if not (inspect.isclass(theirs) or inspect.isfunction(theirs)):
            continue
        pairs.append((name, theirs, getattr(gateway, name, None)))
    for capsule_path, gateway_path in MODULE_CLASSES.items():
        pairs.append((capsule_path.rpartition(".")[2], load(capsule_path), load(gateway_path)))
    return pairs


def _own_public_methods(cls: type) -> dict[str, Any]:
    """Public methods and properties a Capsule class defines (or inherits from Capsule code)."""
    found: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        if not klass.__module__.startswith("cpsl"):
            continue
        for name, value in vars(klass).items():
            if name.startswith("_"):
                continue
            if isinstance(value, property | staticmethod | classmethod) or inspect.isfunction(value):
                found[name] = value
    return found


def _signature(fn: Any) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None


def _describe(parameter: inspect.Parameter) -> tuple[str, str, Any]:
    default = parameter.default
    if default is not inspect.Parameter.empty and not isinstance(default, str | int | float | bool | type(None)):
        default = repr(default)  # dataclass factories and the like: compare their text
    return parameter.name, parameter.kind.name, default


def compare_callables(theirs: Any, ours: Any) -> str | None:
    """Why ``ours`` cannot stand in for ``theirs``, or None."""
    if inspect.iscoroutinefunction(theirs) != inspect.iscoroutinefunction(ours):
        return f"awaitable: cpsl {inspect.iscoroutinefunction(theirs)}, gateway {inspect.iscoroutinefunction(ours)}"
    their_sig, our_sig = _signature(theirs), _signature(ours)
    if their_sig is None or our_sig is None:
        return None if their_sig is our_sig else f"signature: cpsl {their_sig}, gateway {our_sig}"
    their_params = [_describe(p) for p in their_sig.parameters.values()]
    our_params = list(our_sig.parameters.values())
    matching = [_describe(p) for p in our_params[: len(their_params)]]
    extra = our_params[len(their_params):]
    extra_ok = all(
        p.default is not inspect.Parameter.empty
        and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        for p in extra
    )
    if matching != their_params or not extra_ok:
        return f"cpsl {their_sig} / gateway {our_sig}"
    return None


def differences() -> list[Difference]:
    found: list[Difference] = []
    for key, theirs, ours in capsule_pairs():
        if ours is None:
            found.append(Difference(key, "missing in gateway"))
            continue
        if inspect.isclass(theirs):
            if not inspect.isclass(ours):
                found.append(Difference(key, f"a class in cpsl, {type(ours).__name__} in gateway"))
                continue
            if "__init__" in vars(theirs) or hasattr(theirs, "__dataclass_fields__"):
                why = compare_callables(theirs, ours)
                if why:
                    found.append(Difference(f"{key}.__init__", why))
            for name, value in _own_public_methods(theirs).items():
                member_key = f"{key}.{name}"
                if not hasattr(ours, name):
                    found.append(Difference(member_key, "missing in gateway"))
                    continue
                if isinstance(value, property):
                    continue  # an attribute: present is enough
                why = compare_callables(getattr(theirs, name), getattr(ours, name))
                if why:
                    found.append(Difference(member_key, why))
        else:
            why = compare_callables(theirs, ours)
            if why:
                found.append(Difference(key, why))
    return found


def intended() -> dict[str, str]:
    """``key -> reason`` from the exceptions file."""
    data = tomllib.loads(EXCEPTIONS_FILE.read_text())
    return {key: str(reason) for section in data.values() for key, reason in section.items()}


if __name__ == "__main__":  # print what differs, for updating the exceptions file
    reasons = intended()
    for difference in differences():
        mark = " " if difference.key in reasons else "!"
        print(f"{mark} {difference.key}: {difference.what}")
