"""The loop-stall watchdog: a blocking call on the loop is reported with its stack; an idle loop is not."""

from __future__ import annotations

import asyncio
import time

from crirt.stalls import StallWatch


def _block_the_loop_for(seconds: float) -> None:
    time.sleep(seconds)  # what a blocking disk sync or /proc scan on the loop looks like


def test_a_blocking_call_is_reported_with_its_stack_and_duration() -> None:
    watch = StallWatch(threshold=0.1)

    async def scenario() -> None:
        watch.start(asyncio.get_running_loop())
        await asyncio.sleep(0.3)  # idle: the loop answers every probe
        assert watch.report() == []
        _block_the_loop_for(0.5)
        await asyncio.sleep(0.3)  # let the watchdog see the loop answer again

    asyncio.run(scenario())
    watch.stop()
    [stall] = watch.report()
    assert any("_block_the_loop_for" in line for line in stall["stack"]), stall["stack"]
    assert 300 <= stall["ms"] <= 1500  # the stall's full length, measured after it ended
