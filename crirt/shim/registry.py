"""Finds shim plugins through entry points and builds the table of RuntimeClass handlers.

A plugin that is missing, fails to import, or was written for another contract major version never stops
crirt: its handlers are listed as broken, with the reason, in the log and in ``Status``. The one exception is a
configured plugin name that several installed distributions provide: which one would run is undefined, so
crirt refuses to start (``PluginConflict``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

from crirt.errors import FailedPrecondition, InvalidArgument
from crirt.metrics.runtime import RuntimeMetrics
from crirt.shim.contract import API_VERSION, ENTRY_POINT_GROUP, HandlerFeatures, Shim, ShimContext

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HandlerSpec:
    """A configured handler: its name, the plugin it names, and the options for that plugin."""

    name: str
    plugin: str
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Handler:
    """A handler as loaded: a live shim, or the reason why there is none."""

    name: str
    plugin: str
    shim: Shim | None = None
    problem: str | None = None
    features: HandlerFeatures = field(default_factory=HandlerFeatures)


def _describe_entry_point(ep: EntryPoint) -> str:
    dist = ep.dist
    return f"{dist.name} {dist.version}" if dist is not None else ep.value


def _major(version: str) -> str:
    return version.split(".", 1)[0]


class PluginConflict(Exception):
    """Several installed distributions provide a plugin name the config uses; crirt cannot choose one."""


def load_plugin_class(ep: EntryPoint) -> type[Shim]:
    """Import one plugin's class and check it against the contract; raise ValueError saying what is wrong."""
    where = _describe_entry_point(ep)
    try:
        cls = ep.load()
    except Exception as exc:  # a broken plugin must not take the daemon down
        raise ValueError(f"shim plugin {ep.name!r} ({where}) failed to import: {type(exc).__name__}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Shim)):
        raise ValueError(f"shim plugin {ep.name!r} ({where}): {ep.value} is not a crirt.shim.Shim subclass")
    declared = getattr(cls, "api_version", None)
    if not isinstance(declared, str):
        raise ValueError(f"shim plugin {ep.name!r} ({where}) declares no api_version")
    if _major(declared) != _major(API_VERSION):
        raise ValueError(f"shim plugin {ep.name!r} ({where}) is built for shim API {declared}, "
                         f"but crirt {_crirt_version()} speaks shim API {API_VERSION}")
    return cls


def _crirt_version() -> str:
    from crirt import __version__

    return __version__


@dataclass
class ShimRegistry:
    """The RuntimeClass handlers crirt serves, by name; ``""`` resolves to the default handler."""

    default: str
    handlers: dict[str, Handler]
    calls: RuntimeMetrics | None = None
    """Where the shims' task calls are timed (``None``: not timed); handlers added later use it too."""

    @classmethod
    def load(
        cls,
        specs: Iterable[HandlerSpec],
        default: str,
        root: Path,
        state: Path,
        available: Iterable[EntryPoint] | None = None,
        calls: RuntimeMetrics | None = None,
    ) -> ShimRegistry:
        """Load every plugin the specs name (once each) and instantiate one shim per handler; raise
        ``PluginConflict`` if a named plugin is provided by more than one distribution. With ``calls``, every
        shim's task methods are timed there."""
        specs = list(specs)
        found: dict[str, list[EntryPoint]] = {}
        for ep in entry_points(group=ENTRY_POINT_GROUP) if available is None else available:
            found.setdefault(ep.name, []).append(ep)
        _refuse_conflicts(specs, found)
        classes: dict[str, type[Shim] | str] = {}
        handlers: dict[str, Handler] = {}
        for spec in specs:
            if spec.plugin not in classes:
                classes[spec.plugin] = _load_or_reason(spec.plugin, found)
            handler = Handler(spec.name, spec.plugin)
            plugin = classes[spec.plugin]
            if isinstance(plugin, str):
                handler.problem = plugin
            else:
                context = ShimContext(handler=spec.name, root=root / "shims" / spec.name,
                                      state=state / "shims" / spec.name)
                try:
                    shim = plugin(context, spec.options)
                    handler.shim = shim if calls is None else calls.wrap(spec.name, shim)
                except Exception as exc:
                    handler.problem = f"handler {spec.name!r}: shim plugin {spec.plugin!r} rejected its options: {exc}"
            if handler.problem:
                log.error("runtime handler %r is unavailable: %s", spec.name, handler.problem)
            handlers[spec.name] = handler
        return cls(default, handlers, calls)

    async def probe_features(self) -> None:
        """Ask every live shim for its features; a shim that fails here is marked broken."""
        for handler in self.handlers.values():
            if handler.shim is None:
                continue
            try:
                handler.features = await handler.shim.features()
            except Exception as exc:
                handler.problem = f"shim plugin {handler.plugin!r} failed to report features: {exc}"
                log.exception("runtime handler %r is unavailable", handler.name)

    def resolve(self, name: str) -> Shim:
        """The shim serving handler ``name``; INVALID_ARGUMENT if unknown, FAILED_PRECONDITION if broken."""
        handler = self.handlers.get(name or self.default)
        if handler is None:
            known = ", ".join(repr(n) for n in sorted(self.handlers))
            raise InvalidArgument(f"unknown runtime handler {name!r}; configured handlers: {known} "
                                  f"(and '' for the default, {self.default!r})")
        if handler.shim is None or handler.problem:
            raise FailedPrecondition(f"runtime handler {handler.name!r} is unavailable: {handler.problem}")
        return handler.shim

    def features(self, name: str) -> HandlerFeatures:
        """What handler ``name`` (``""``: the default) reported at boot, as Status shows it; none for an unknown
        handler."""
        handler = self.handlers.get(name or self.default)
        return handler.features if handler is not None else HandlerFeatures()

    @property
    def problems(self) -> list[str]:
        return [h.problem for h in self.handlers.values() if h.problem]

    def default_ready(self) -> bool:
        handler = self.handlers.get(self.default)
        return handler is not None and handler.shim is not None and not handler.problem

    async def close(self) -> None:
        for handler in self.handlers.values():
            if handler.shim is not None:
                try:
                    await handler.shim.close()
                except Exception:
                    log.exception("closing runtime handler %r failed", handler.name)


def _refuse_conflicts(specs: list[HandlerSpec], found: Mapping[str, list[EntryPoint]]) -> None:
    """Raise ``PluginConflict`` naming every distribution of each configured plugin name provided twice."""
    lines = []
    for plugin in dict.fromkeys(spec.plugin for spec in specs):
        eps = found.get(plugin, [])
        if len(eps) > 1:
            handlers = ", ".join(repr(spec.name) for spec in specs if spec.plugin == plugin)
            providers = " and ".join(_describe_entry_point(ep) for ep in eps)
            lines.append(f"shim plugin {plugin!r} (used by runtime handler {handlers}) is provided by more than one "
                         f"package: {providers}; uninstall all but one")
    if lines:
        raise PluginConflict("; ".join(lines))


def _load_or_reason(plugin: str, found: Mapping[str, list[EntryPoint]]) -> type[Shim] | str:
    eps = found.get(plugin)
    if not eps:
        installed = ", ".join(sorted(found)) or "none"
        return (f"shim plugin {plugin!r} is not installed (no entry point {plugin!r} in group "
                f"{ENTRY_POINT_GROUP!r}; installed plugins: {installed})")
    try:
        return load_plugin_class(eps[0])
    except ValueError as exc:
        return str(exc)
