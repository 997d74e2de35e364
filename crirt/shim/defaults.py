"""The handlers crirt serves when its configuration has no ``[runtimes]`` table: every installed plugin's
``default_handlers`` whose runtime is present on this node.

Looking costs an import of each installed plugin and a few PATH lookups; nothing is started. What is left out
(the runtime is missing, the plugin is broken, another plugin took the name) is said in one line each, for the
log: a node without gVisor simply serves no ``runsc`` handler.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points

from crirt.shim.contract import ENTRY_POINT_GROUP
from crirt.shim.registry import HandlerSpec, load_plugin_class


@dataclass(frozen=True)
class DefaultHandlers:
    """The default handlers found: those to serve, by name, and one line per handler or plugin left out."""

    enabled: dict[str, HandlerSpec] = field(default_factory=dict)
    left_out: list[str] = field(default_factory=list)


def find_default_handlers(available: Iterable[EntryPoint] | None = None) -> DefaultHandlers:
    """Ask every installed plugin (``available``: the entry points to use instead, for tests) for its default
    handlers, in plugin name order; the first plugin to offer a handler name gets it. A plugin name provided by
    several distributions is looked at once: the registry refuses it when a handler uses it."""
    found = DefaultHandlers()
    eps = entry_points(group=ENTRY_POINT_GROUP) if available is None else available
    first: dict[str, EntryPoint] = {}
    for ep in sorted(eps, key=lambda ep: ep.name):
        first.setdefault(ep.name, ep)
    for plugin, ep in first.items():
        try:
            cls = load_plugin_class(ep)
        except ValueError as exc:
            found.left_out.append(f"{exc}; its default handlers are not served")
            continue
        for name, options in cls.default_handlers.items():
            if name in found.enabled:
                found.left_out.append(f"runtime handler {name!r} of shim plugin {plugin!r} is not served: shim "
                                      f"plugin {found.enabled[name].plugin!r} serves that name")
                continue
            try:
                problem = cls.available(options)
            except Exception as exc:  # a plugin's bug must not stop crirt
                problem = f"checking for its runtime failed: {type(exc).__name__}: {exc}"
            if problem is None:
                found.enabled[name] = HandlerSpec(name, plugin, dict(options))
            else:
                found.left_out.append(f"runtime handler {name!r} (shim plugin {plugin!r}) is not served: {problem}")
    return found
