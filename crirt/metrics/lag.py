"""Event-loop lag: how late the loop runs a callback it was asked to run at a given time.

A task sleeps ``interval`` seconds over and over and observes how much later than asked it woke up. Anything that
keeps the loop busy (a blocking call, a long CPU-bound step, too much work at once) shows as lag, and every RPC
waits that long too. It costs one wake-up per interval; the ``[debug] loop_stall_ms`` watchdog is the tool that
then says which code blocked.
"""

from __future__ import annotations

import asyncio
import contextlib

from prometheus_client import CollectorRegistry, Histogram

LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""Seconds; a healthy loop stays under a millisecond or two."""


class LoopLag:
    """Measures the running loop's lag from a task between ``start`` and ``stop``."""

    def __init__(self, registry: CollectorRegistry | None = None, interval: float = 0.25) -> None:
        self.interval = interval
        self.lag = Histogram("crirt_event_loop_lag_seconds",
                             "Seconds the event loop ran a timer callback later than it was due.",
                             registry=CollectorRegistry() if registry is None else registry, buckets=LAG_BUCKETS)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start measuring; call from the loop to be measured."""
        self._task = asyncio.get_running_loop().create_task(self._measure(), name="crirt-loop-lag")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _measure(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.interval
            await asyncio.sleep(self.interval)
            self.lag.observe(max(0.0, loop.time() - due))
