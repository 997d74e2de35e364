"""The two caches of crirt.caching: a value reused within its interval, and one refreshed in the background."""

from __future__ import annotations

import asyncio

from crirt.caching import Refreshed, SampleCache


def test_sample_cache_reuses_a_value_within_its_interval_and_forgets_gone_keys() -> None:
    cache = SampleCache(interval=60)
    assert cache.get("a") is None
    assert cache.put("a", {"n": 1}) == {"n": 1}
    assert cache.get("a") == {"n": 1}
    cache.keep_only({"b"})
    assert cache.get("a") is None
    never = SampleCache(interval=0)  # 0: every call measures
    never.put("a", 1)
    assert never.get("a") is None


def test_refreshed_answers_with_the_last_value_and_measures_again_in_the_background() -> None:
    measured = []

    async def measure() -> int:
        measured.append(len(measured))
        await asyncio.sleep(0)
        return len(measured)

    async def scenario() -> None:
        fresh = Refreshed(measure, interval=0)  # always stale: every get starts one background measurement
        assert await fresh.get() == 1  # the first caller waits for the first measurement
        assert await fresh.get() == 1  # then the last value, at once, while a new one is taken
        await asyncio.sleep(0.01)
        assert await fresh.get() == 2
        steady = Refreshed(measure, interval=3600)
        first = await steady.get()
        assert await steady.get() == first  # young enough: nothing measured
        steady.invalidate()
        assert await steady.get() == first + 1  # what it measured changed: measured before answering
        await fresh.close()

    asyncio.run(scenario())
