"""Two small caches for figures that are costly to measure and fine to serve slightly old.

``SampleCache`` reuses a value for a fixed time (stats asked twice in one collection round cost one sample).
``Refreshed`` always answers at once with the last value and, once that is older than its interval, measures
anew in the background, one measurement at a time (what containerd does for filesystem usage: measured every
10 s by a syncer, read from memory by ImageFsInfo).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class SampleCache:
    """Values by key, each reused for ``interval`` seconds after it was measured."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._items: dict[str, tuple[float, Any]] = {}

    def get(self, key: str) -> Any | None:
        item = self._items.get(key)
        return item[1] if item is not None and time.monotonic() - item[0] < self.interval else None

    def put(self, key: str, value: Any) -> Any:
        self._items[key] = (time.monotonic(), value)
        return value

    def keep_only(self, keys: set[str]) -> None:
        """Forget every key not in ``keys`` (objects that are gone)."""
        for key in [k for k in self._items if k not in keys]:
            del self._items[key]


class Refreshed(Generic[T]):
    """The last value ``measure()`` gave; re-measured in the background when older than ``interval``."""

    def __init__(self, measure: Callable[[], Awaitable[T]], interval: float) -> None:
        self.measure = measure
        self.interval = interval
        self._value: T | None = None
        self._taken = 0.0
        self._refresh: asyncio.Task[None] | None = None

    async def get(self) -> T:
        if self._value is None:  # nothing to serve yet: the first caller measures
            self._value, self._taken = await self.measure(), time.monotonic()
        elif time.monotonic() - self._taken >= self.interval and (self._refresh is None or self._refresh.done()):
            self._refresh = asyncio.get_running_loop().create_task(self._measure_again())
        return self._value

    def invalidate(self) -> None:
        """What is known changed (e.g. an image was pulled): the next ``get`` measures before it answers."""
        self._value = None

    async def _measure_again(self) -> None:
        try:
            self._value, self._taken = await self.measure(), time.monotonic()
        except Exception:
            log.exception("measuring %s failed; serving the last value", getattr(self.measure, "__name__", "?"))

    async def close(self) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresh
