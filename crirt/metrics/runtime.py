"""Runtime-call metrics: how long each call crirt makes into a handler's shim plugin takes, and how often it fails.

The shim registry wraps every shim it builds in a ``MeteredShim``, so every plugin (whatever driver it uses) is
measured at the one place crirt calls it, and no caller changes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, cast

from prometheus_client import CollectorRegistry, Counter, Histogram

from crirt.metrics.instruments import LATENCY_BUCKETS, timed
from crirt.shim.contract import Shim

TIMED_OPERATIONS = frozenset({
    "create", "start", "kill", "delete", "state", "exec_sync", "exec_interactive", "attach", "resize", "update",
    "stats", "stats_many", "reopen_log",
})
"""The task methods that are timed. ``wait`` (it lasts until the task exits), ``features`` and ``close`` (once
each per daemon) are not."""


class RuntimeMetrics:
    """Latency and failures of calls into the shims, by handler and operation (the contract's method name)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = CollectorRegistry() if registry is None else registry
        self.duration = Histogram("crirt_runtime_call_duration_seconds",
                                  "Seconds a call into a runtime handler's shim took.", ["handler", "operation"],
                                  registry=registry, buckets=LATENCY_BUCKETS)
        self.failures = Counter("crirt_runtime_call_failures", "Calls into a runtime handler's shim that failed.",
                                ["handler", "operation"], registry=registry)

    def call(self, handler: str, operation: str) -> contextlib.AbstractContextManager[None]:
        """Time one call and count it as failed if it raises."""
        return timed(self.duration, self.failures, handler, operation)

    def wrap(self, handler: str, shim: Shim) -> Shim:
        """``shim`` with its task methods timed under ``handler``; it answers everything else as itself."""
        for operation in TIMED_OPERATIONS:  # zeros from the start, so a failure rate has a series to rise from
            self.failures.labels(handler, operation)
        return cast(Shim, MeteredShim(shim, handler, self))


class MeteredShim:
    """A shim seen through ``RuntimeMetrics``: the methods in ``TIMED_OPERATIONS`` are timed, every other attribute
    (features, class settings such as ``needs_infra_container``) is the wrapped shim's own."""

    def __init__(self, shim: Shim, handler: str, metrics: RuntimeMetrics) -> None:
        self._shim = shim
        self._handler = handler
        self._metrics = metrics

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._shim, name)
        if name not in TIMED_OPERATIONS:
            return attribute
        method = cast(Callable[..., Awaitable[Any]], attribute)

        async def measured(*args: Any, **kwargs: Any) -> Any:
            with self._metrics.call(self._handler, name):
                return await method(*args, **kwargs)

        return measured
