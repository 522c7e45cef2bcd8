"""Installed adapters, found through the ``chatgate.adapters`` entry points.

A platform adapter is a package that names an :class:`AdapterSpec` in its ``pyproject.toml``::

    [project.entry-points."chatgate.adapters"]
    telegram = "adapters.telegram:spec"

chatgate's own adapters (web, Telegram, Slack) are declared the same way, so ``gateway/`` names no
platform: :func:`gateway.config.load_settings` adds each spec's settings section, ``Gateway.start``
starts the adapters whose rule says they are on, and ``Gateway.describe`` prints the others'
"off" lines.

The spec is light on purpose: a settings model, a rule and a line. The adapter class behind it,
and its platform library, are imported only when the rule switches the adapter on (importing
aiogram alone takes about two seconds, which a web-only gateway should not pay at start-up).

**A broken adapter does not stop start-up.** An entry point that fails to import, names something
that is not an ``AdapterSpec``, or whose adapter class fails to import when switched on, gives one
ERROR log line at start naming the adapter, its package and the exception; the other adapters
start without it, and ``describe`` lists it as failed. A third-party package broken by an upgrade
of its own dependencies must not take the web widget and every other platform down with it; the
line says what to fix. When the spec itself cannot be loaded, its ``[name]`` section (if the
config has one) is accepted unchecked so that the config keeps loading. (Errors *in the settings*
of a working adapter still stop start-up with one line naming the key, like every other config
error.)
"""

from __future__ import annotations

import functools
import importlib
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import BaseModel

# ``settings`` below is a loaded ``gateway.config.Settings`` (with the adapters' sections). It is
# typed ``Any``: gateway.config imports this module, and the sections are not known statically.

log = logging.getLogger("chatgate")

ENTRY_POINT_GROUP = "chatgate.adapters"
OWN_DISTRIBUTION = "chatgate"
"""The distribution whose adapters are chatgate's own (documented in config.example.toml)."""

_NAME = re.compile(r"[a-z][a-z0-9_]*")


@dataclass(frozen=True)
class AdapterSpec:
    """An installed adapter as the core sees it before importing it.

    Define it in a module that imports no platform library (the package's ``__init__.py``, kept
    light), and name it in the ``chatgate.adapters`` entry-point group under :attr:`name`.
    """

    name: str
    """The entry point's name, the settings section ``[name]`` (``settings.<name>``, variables
    ``CHATGATE_<NAME>__<KEY>``) and the first word of the adapter's start-up lines. Lowercase
    letters, digits and ``_``."""
    adapter: str
    """``"module:Class"`` of the :class:`adapters.base.Adapter`, imported only when enabled."""
    enabled: Callable[[Any], bool]
    """Whether to start the adapter, from the settings alone (its section is ``settings.<name>``)."""
    off_hint: str = ""
    """What turns a disabled adapter on, for its start-up line ``<name>: off (<off_hint>)``."""
    settings: type[BaseModel] | None = None
    """The model of the ``[name]`` section; subclass ``gateway.config.Section`` (unknown keys are
    refused, assignments validated). ``None``: the adapter has no section of its own."""
    environment: Mapping[str, str] = field(default_factory=dict)
    """Conventional environment variables read into the section, ``{"TELEGRAM_BOT_TOKEN":
    "bot_token"}``; they rank below ``CHATGATE_<NAME>__<KEY>`` and above the config file."""
    quiet_loggers: tuple[str, ...] = ()
    """Loggers of the platform library that ``chatgate run`` keeps at WARNING or above (they log
    every request at INFO)."""

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"adapter name {self.name!r}: use lowercase letters, digits and '_'")
        if ":" not in self.adapter:
            raise ValueError(f"adapter {self.adapter!r}: write it as 'module:Class'")
        if self.settings is None and self.environment:
            raise ValueError(f"adapter {self.name!r} maps environment variables but has no settings model")

    def load(self) -> type[Any]:
        """Import the adapter class."""
        module_name, _, attribute = self.adapter.partition(":")
        adapter_class: type[Any] = getattr(importlib.import_module(module_name), attribute)
        return adapter_class

    def off_line(self) -> str:
        return f"{self.name}: off ({self.off_hint})" if self.off_hint else f"{self.name}: off"


@dataclass(frozen=True)
class Installed:
    spec: AdapterSpec
    package: str
    """``"<distribution> <version>"``, for messages."""
    distribution: str


@dataclass(frozen=True)
class Broken:
    """An entry point that could not be used."""

    name: str
    package: str
    problem: str

    def log_line(self) -> str:
        return (f"adapter {self.name!r} from package {self.package} failed to load: {self.problem}; "
                f"the other adapters start without it (fix or uninstall {self.package.split(' ')[0]})")

    def start_up_line(self) -> str:
        return f"{self.name}: failed to load (package {self.package}; see the error above)"


@dataclass(frozen=True)
class Discovery:
    installed: tuple[Installed, ...]
    """In start-up order: chatgate's own first, then by package name; each package's by name
    (setuptools writes entry points sorted, so the declared order is not kept)."""
    broken: tuple[Broken, ...]


def _package(point: EntryPoint) -> tuple[str, str]:
    dist = point.dist
    if dist is None:
        return "an unknown package", ""
    return f"{dist.name} {dist.version}", dist.name


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _order(point: EntryPoint) -> tuple[bool, str, str]:
    package = _canonical(point.dist.name) if point.dist is not None else ""
    return package != OWN_DISTRIBUTION, package, point.name


def find(points: Iterable[EntryPoint]) -> Discovery:
    """Load ``points`` (entry points of the ``chatgate.adapters`` group) into specs."""
    installed: list[Installed] = []
    broken: list[Broken] = []
    taken: dict[str, str] = {}
    for point in sorted(points, key=_order):
        package, distribution = _package(point)
        try:
            spec = point.load()
        except Exception as exc:
            broken.append(Broken(point.name, package, f"{type(exc).__name__}: {exc}"))
            continue
        if not isinstance(spec, AdapterSpec):
            problem = f"{point.value} is a {type(spec).__name__}, not a gateway.plugins.AdapterSpec"
        elif spec.name != point.name:
            problem = f"the entry point is named {point.name!r} but its spec {spec.name!r}; name both the same"
        elif spec.name in taken:
            problem = f"the name {spec.name!r} is taken by the adapter from {taken[spec.name]}"
        else:
            taken[spec.name] = package
            installed.append(Installed(spec, package, _canonical(distribution)))
            continue
        broken.append(Broken(point.name, package, problem))
    return Discovery(tuple(installed), tuple(broken))


@functools.cache
def discover() -> Discovery:
    """The adapters installed in this environment (read once per process)."""
    return find(entry_points(group=ENTRY_POINT_GROUP))


def configured_adapters(settings: Any) -> list[Any]:
    """Instantiate every installed adapter whose rule enables it; log the broken ones (one line
    each) and go on without them. An adapter's constructor raising (a setting it cannot work
    with) stops start-up: that is a configuration error, named by the adapter."""
    found = discover()
    for broken in found.broken:
        log.error(broken.log_line())
    adapters: list[Any] = []
    for item in found.installed:
        spec = item.spec
        try:
            if not spec.enabled(settings):
                continue
            adapter_class = spec.load()
        except Exception as exc:
            log.error(Broken(spec.name, item.package, f"{type(exc).__name__}: {exc}").log_line())
            log.debug("adapter %r failed to load", spec.name, exc_info=True)
            continue
        adapters.append(adapter_class(settings))
    return adapters


def quiet_loggers() -> list[str]:
    """The installed adapters' ``quiet_loggers``."""
    return [name for item in discover().installed for name in item.spec.quiet_loggers]


def not_running_lines(settings: Any, running: Iterable[Any]) -> list[str]:
    """Start-up lines for the installed adapters that are not running: the "off" line of each
    disabled one, a "failed to load" line for each broken one."""
    running_classes = {type(adapter) for adapter in running}
    found = discover()
    lines: list[str] = []
    for item in found.installed:
        spec = item.spec
        try:
            on = spec.enabled(settings)
            if on and spec.load() in running_classes:
                continue
        except Exception:
            lines.append(Broken(spec.name, item.package, "").start_up_line())
            continue
        if not on:
            lines.append(spec.off_line())
    lines.extend(broken.start_up_line() for broken in found.broken)
    return lines
