"""Shared downloads (Flights) and leases."""

from __future__ import annotations

import asyncio

import pytest

from crirt.images.pull import Flights, Leases


def test_callers_share_one_task_which_survives_one_caller_leaving() -> None:
    async def main() -> None:
        flights: Flights[str, int] = Flights()
        started = 0
        release = asyncio.Event()

        async def work() -> int:
            nonlocal started
            started += 1
            await release.wait()
            return 42

        first = asyncio.create_task(flights.run("k", work))
        second = asyncio.create_task(flights.run("k", work))
        await asyncio.sleep(0.01)
        first.cancel()
        await asyncio.sleep(0.01)
        release.set()
        assert await second == 42 and started == 1
        with pytest.raises(asyncio.CancelledError):
            await first

    asyncio.run(main())


def test_the_last_caller_leaving_cancels_the_work() -> None:
    async def main() -> None:
        flights: Flights[str, None] = Flights()
        cleaned = asyncio.Event()

        async def work() -> None:
            try:
                await asyncio.sleep(3600)
            finally:
                cleaned.set()

        caller = asyncio.create_task(flights.run("k", work))
        await asyncio.sleep(0.01)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        assert cleaned.is_set()  # the work finished cleaning up before the caller's cancellation returned

    asyncio.run(main())


def test_a_caller_arriving_while_abandoned_work_cleans_up_restarts_it() -> None:
    async def main() -> None:
        flights: Flights[str, int] = Flights()
        runs: list[str] = []
        cleaning = asyncio.Event()

        async def work() -> int:
            runs.append("start")
            try:
                if len(runs) == 1:
                    await asyncio.sleep(3600)
                return 42
            finally:
                if len(runs) == 1:
                    cleaning.set()
                    await asyncio.sleep(0.05)  # cleaning up after the cancellation takes a while
                runs.append("end")

        first = asyncio.create_task(flights.run("k", work))
        await asyncio.sleep(0.01)
        first.cancel()
        await cleaning.wait()
        second = asyncio.create_task(flights.run("k", work))  # joins while the cancelled work cleans up
        assert await second == 42
        assert runs == ["start", "end", "start", "end"]  # restarted, and only after the old work ended
        with pytest.raises(asyncio.CancelledError):
            await first

    asyncio.run(main())


def test_leases_count_holders() -> None:
    leases = Leases()
    with leases.scope() as one, leases.scope() as two:
        one.add("a", "b")
        two.add("b")
        assert "a" in leases and "b" in leases
    assert "a" not in leases and "b" not in leases
