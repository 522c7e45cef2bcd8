"""The layering holds itself: no import cycle anywhere in ``gateway/`` or ``adapters/``.

Counted with ``TYPE_CHECKING`` imports and imports inside functions (grimp, import-linter's
graph): a cycle that only type checkers see is still two modules that cannot be read apart.
The other contracts (the core never imports an adapter, adapters never import each other) are
import-linter's, run by ``scripts/test`` (``pyproject.toml`` has them)."""

from __future__ import annotations

import grimp


def strongly_connected(graph: grimp.ImportGraph) -> list[list[str]]:
    """Tarjan's algorithm over the module graph: every set of modules that import each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_no_import_cycles_in_gateway_or_adapters() -> None:
    graph = grimp.build_graph("gateway", "adapters", exclude_type_checking_imports=False)
    cycles = strongly_connected(graph)
    details = []
    for cycle in cycles:
        for importer in cycle:
            for imported in sorted(graph.find_modules_directly_imported_by(importer)):
                if imported in cycle:
                    lines = graph.get_import_details(importer=importer, imported=imported)
                    details.append(f"{importer} -> {imported} (line {lines[0]['line_number'] if lines else '?'})")
    assert cycles == [], "import cycles:\n" + "\n".join(details)


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = grimp.ImportGraph()
    for module in ("pkg", "pkg.a", "pkg.b", "pkg.c"):
        graph.add_module(module)
    graph.add_import(importer="pkg.a", imported="pkg.b")
    graph.add_import(importer="pkg.b", imported="pkg.a")
    graph.add_import(importer="pkg.b", imported="pkg.c")
    assert strongly_connected(graph) == [["pkg.a", "pkg.b"]]


# -- the door ---------------------------------------------------------------------------------

PUBLIC_CORE = ("gateway.types", "gateway.markdown", "gateway.config")
"""What an adapter may import from the core besides the door: the public value types, the one
Markdown parse every renderer shares, and the settings vocabulary an adapter's section extends."""

COMPOSITION = {"adapters.web.testing"}
"""Modules that build a whole gateway (a loopback test harness), as ``gateway.cli`` does."""


def test_adapters_import_only_the_door_and_the_public_types() -> None:
    graph = grimp.build_graph("gateway", "adapters", exclude_type_checking_imports=False)
    crossings = []
    for importer in sorted(graph.modules):
        if not importer.startswith("adapters.") or importer == "adapters.base" or importer in COMPOSITION:
            continue
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            if imported.startswith("gateway") and not imported.startswith(PUBLIC_CORE):
                crossings.append(f"{importer} -> {imported}")
    assert crossings == [], "adapters reaching past adapters/base.py:\n" + "\n".join(crossings)
