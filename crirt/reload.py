"""Live reload: on SIGHUP crirt reads its configuration again and applies what can change while it runs.

``diff`` compares the running configuration with the new one and makes a ``Plan``: the keys applied at once
(log level and format, registries and their mirrors and credentials, image settings, the CNI settings, runtime
handlers and the default one) or the reasons the whole reload is refused. It is refused, and the running
configuration kept, when a key that needs a restart changed (``address``, ``root``, ``state``, ``grpc``,
``streaming``..., each named), or when a runtime handler that pods use would be removed or changed: their
containers are driven through the handler's shim, which a reload never swaps under them. ``Reloader`` runs
reloads one at a time and applies a plan to the running services.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pydantic import BaseModel

from crirt import logs
from crirt.config import Config, ConfigError
from crirt.images.service import ImageService
from crirt.sandboxes.service import SandboxService
from crirt.shim.registry import Handler, HandlerSpec, PluginConflict, ShimRegistry

log = logging.getLogger(__name__)

LIVE_KEYS = ("log_level", "log_format", "registries", "images", "cni", "runtimes", "default_runtime",
             "shutdown_grace_period")
"""Top-level keys a reload applies; a change to any other key needs a restart."""
SHOWN_VALUE = 80
"""Characters of an old or new value quoted in a refusal."""


@dataclass(frozen=True)
class Plan:
    """What a reload does: the live keys that changed and the handler changes, or why it is refused."""

    changed: tuple[str, ...] = ()
    added: tuple[str, ...] = ()
    replaced: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    refused: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.changed and not self.refused

    def summary(self) -> str:
        """One line naming what the reload changes."""
        parts = [f"changed {', '.join(self.changed)}"] if self.changed else ["nothing changed"]
        for verb, names in (("added", self.added), ("replaced", self.replaced), ("removed", self.removed)):
            if names:
                parts.append(f"runtime handlers {verb}: {', '.join(map(repr, names))}")
        return "; ".join(parts)


def diff(old: Config, new: Config, in_use: Mapping[str, int]) -> Plan:
    """The plan that takes the running configuration ``old`` to ``new``; ``in_use`` counts the pods of each
    runtime handler name as the pods asked for it (``""``: the default handler)."""
    refused = [f"{key}: changing it needs a restart ({_shown(old, key)} -> {_shown(new, key)})"
               for key in _differences(old, new) if key.split(".", 1)[0] not in LIVE_KEYS]
    pods: Counter[str] = Counter()
    for name, count in in_use.items():
        pods[name or old.default_runtime] += count
    added = tuple(name for name in new.runtimes if name not in old.runtimes)
    removed = tuple(name for name in old.runtimes if name not in new.runtimes)
    replaced = tuple(name for name in old.runtimes if name in new.runtimes and old.runtimes[name] != new.runtimes[name])
    refused += [f"runtimes.{name}: cannot be removed while {pods[name]} pod(s) use it; remove them first"
                for name in removed if pods[name]]
    refused += [f"runtimes.{name}: cannot be changed while {pods[name]} pod(s) use it (their containers stay on "
                "its running shim); remove them first or restart crirt" for name in replaced if pods[name]]
    if new.default_runtime != old.default_runtime and in_use.get("", 0):
        refused.append(f"default_runtime: cannot change from {old.default_runtime!r} to {new.default_runtime!r} "
                       f"while {in_use['']} pod(s) asked for the default handler")
    changed = tuple(key for key in LIVE_KEYS if getattr(old, key) != getattr(new, key))
    return Plan(changed, added, replaced, removed, tuple(refused))


def _differences(old: BaseModel, new: BaseModel, prefix: str = "") -> list[str]:
    """Dotted names of the keys whose values differ, down to the keys inside sections."""
    keys = []
    for name in type(old).model_fields:
        before, after = getattr(old, name), getattr(new, name)
        if before == after:
            continue
        if isinstance(before, BaseModel) and type(before) is type(after):
            keys += _differences(before, after, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def _shown(config: BaseModel, dotted: str) -> str:
    value: object = config
    for part in dotted.split("."):
        value = getattr(value, part)
    text = repr(str(value))
    return text if len(text) <= SHOWN_VALUE else text[: SHOWN_VALUE - 3] + "..."


class Reloader:
    """Reads the configuration again on each request (SIGHUP) and applies it to the running ``config`` and the
    services that keep parts of it; a request during a reload runs one more reload after it (an editor may save
    a file twice)."""

    def __init__(self, config: Config, sandboxes: SandboxService, images: ImageService, registry: ShimRegistry,
                 reread: Callable[[], Config]) -> None:
        self.config = config
        self.sandboxes = sandboxes
        self.images = images
        self.registry = registry
        self.reread = reread
        self._task: asyncio.Task[None] | None = None
        self._again = False

    def request(self) -> None:
        """The SIGHUP handler: start a reload, or ask for one more after the running one."""
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.get_running_loop().create_task(self._reloads())

    async def close(self) -> None:
        """Stop a reload in progress (at shutdown)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _reloads(self) -> None:
        self._again = True
        while self._again:
            self._again = False
            try:
                await self.reload()
            except Exception:
                log.exception("configuration reload failed")

    def _in_use(self) -> Counter[str]:
        return Counter(record.runtime_handler for record in self.sandboxes.records)

    async def reload(self) -> Plan | None:
        """Read the configuration and apply it, or refuse it whole; the plan, or None for an invalid file."""
        log.info("reloading the configuration (SIGHUP)")
        try:
            new = await asyncio.to_thread(self.reread)
        except ConfigError as exc:
            for line in exc.lines:
                log.error("config error: %s", line)
            log.error("configuration reload refused: the configuration is invalid; keeping the running one")
            return None
        plan = diff(self.config, new, self._in_use())
        if plan.refused or plan.empty:
            return self._report(plan)
        try:
            fresh = await self._load_handlers(new, plan)
        except PluginConflict as exc:
            return self._report(Plan(refused=(str(exc),)))
        plan = diff(self.config, new, self._in_use())  # again, at once: pods may have started meanwhile
        if plan.refused:
            await fresh.close()
            return self._report(plan)
        retired = self._apply(new, plan, fresh.handlers)
        self._report(plan)
        await retired.close()
        if "cni" in plan.changed:
            await asyncio.to_thread(self.sandboxes.ensure_default_network)
        return plan

    async def _load_handlers(self, new: Config, plan: Plan) -> ShimRegistry:
        """The handlers the plan adds or replaces, their shims loaded and asked for their features."""
        specs = [HandlerSpec(name, new.runtimes[name].shim, new.runtimes[name].options)
                 for name in (*plan.added, *plan.replaced)]
        config = self.config
        registry = await asyncio.to_thread(ShimRegistry.load, specs, new.default_runtime, config.root, config.state,
                                           calls=self.registry.calls)
        await registry.probe_features()
        return registry

    def _apply(self, new: Config, plan: Plan, fresh: dict[str, Handler]) -> ShimRegistry:
        """Switch the app to ``new`` (without awaiting: no call sees half of it); returns the handlers retired,
        as a registry of their own for closing."""
        config = self.config
        for key in plan.changed:
            setattr(config, key, getattr(new, key))
        if {"log_level", "log_format"} & set(plan.changed):
            logs.configure(config.log_level, config.log_format)
        if {"images", "registries"} & set(plan.changed):
            self.images.reconfigure(config.images, config.registries)
        if "cni" in plan.changed:
            cni = self.sandboxes.cni
            cni.bin_dirs, cni.timeout = list(config.cni.bin_dirs), config.cni.plugin_timeout
        handlers = self.registry.handlers
        retired = {name: handlers.pop(name) for name in (*plan.removed, *plan.replaced)}
        handlers.update(fresh)
        self.registry.default = config.default_runtime
        return ShimRegistry(config.default_runtime, retired)

    @staticmethod
    def _report(plan: Plan) -> Plan:
        if plan.refused:
            log.error("configuration reload refused, keeping the running configuration: %s", "; ".join(plan.refused))
        else:
            log.info("configuration reloaded: %s", plan.summary())
        return plan

