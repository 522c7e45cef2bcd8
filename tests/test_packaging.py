"""The runtime install (``scripts/setup`` without ``--test``) has everything the code imports.

The test extra pulls in more packages (promptrails brings httpx, for one), so a module that only
the test install happens to have would pass every other test and still break ``scripts/run``.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, packages_distributions, requires
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ("gateway", "adapters")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    return _canonical(re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0])


def _runtime_distributions() -> set[str]:
    """The declared runtime dependencies and everything they require in turn."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    todo = [_requirement_name(r) for r in pyproject["project"]["dependencies"]]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requirements = requires(name) or []
        except PackageNotFoundError:  # not for this Python (an environment marker left it out)
            continue
        for requirement in requirements:
            if "extra ==" not in requirement:
                todo.append(_requirement_name(requirement))
    return seen


def _imported_top_levels() -> dict[str, str]:
    """Top-level modules imported anywhere in the shipped packages -> one file importing it."""
    found: dict[str, str] = {}
    for package in SHIPPED:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return found


def _optional_accelerators() -> set[str]:
    """The ``fast`` extra: used when installed, never required. Their imports are guarded (a
    missing one falls back: gateway/loop.py, adapters/web/jsoncodec.py; tested both ways)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {_requirement_name(r) for r in pyproject["project"]["optional-dependencies"].get("fast", [])}


def test_every_third_party_import_is_a_runtime_dependency() -> None:
    providers = packages_distributions()
    runtime = _runtime_distributions() | _optional_accelerators()
    missing = []
    for module, where in sorted(_imported_top_levels().items()):
        if module in sys.stdlib_module_names or module in SHIPPED:
            continue
        distributions = {_canonical(d) for d in providers.get(module, [])}
        if not distributions & runtime:
            missing.append(f"{module} (imported by {where}; installed from {sorted(distributions) or 'nowhere'})")
    assert not missing, "imported but not a runtime dependency in pyproject.toml: " + ", ".join(missing)
