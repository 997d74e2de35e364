"""Event-loop lag: a loop kept busy shows as a late timer."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry

from crirt.metrics.lag import LoopLag


def test_a_blocked_loop_is_observed_as_lag() -> None:
    registry = CollectorRegistry()
    lag = LoopLag(registry, interval=0.02)

    async def scenario() -> None:
        lag.start()
        await asyncio.sleep(0.1)  # a few quiet rounds
        time.sleep(0.3)  # noqa: ASYNC251 - the point: keep the loop from running anything
        await asyncio.sleep(0.1)
        await lag.stop()

    asyncio.run(scenario())
    rounds = registry.get_sample_value("crirt_event_loop_lag_seconds_count")
    assert rounds is not None and rounds >= 4
    prompt = registry.get_sample_value("crirt_event_loop_lag_seconds_bucket", {"le": "0.25"})
    assert prompt == rounds - 1  # exactly one round waited through the blocking call
    assert registry.get_sample_value("crirt_event_loop_lag_seconds_sum") >= 0.25
