"""An exit is never lost to a failing wait; failed cleanups are retried until they succeed."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from crirt.containers.retry import Janitor, backoff, wait_for_exit
from crirt.errors import NotFound, Unavailable
from crirt.shim.contract import ExitStatus

EXITED = ExitStatus(exit_code=3, exited_at=1)


def test_backoff_doubles_up_to_its_ceiling() -> None:
    assert list(itertools.islice(backoff(1, 5), 5)) == [1, 2, 4, 5, 5]


def test_a_failing_wait_is_asked_again_until_it_reports_the_exit() -> None:
    calls = []

    async def wait() -> ExitStatus:
        calls.append(len(calls))
        if len(calls) < 3:
            raise Unavailable("runtime timed out") if len(calls) == 1 else RuntimeError("broken handler")
        return EXITED

    assert asyncio.run(wait_for_exit(wait, "c1", iter([0.0] * 10))) == EXITED
    assert calls == [0, 1, 2]


def test_a_vanished_task_is_the_callers_to_handle() -> None:
    async def wait() -> ExitStatus:
        raise NotFound("no task c1")

    with pytest.raises(NotFound):
        asyncio.run(wait_for_exit(wait, "c1", iter([0.0])))


def test_the_janitor_retries_each_cleanup_until_it_succeeds_then_stops() -> None:
    attempts: dict[str, int] = {"a": 0, "b": 0}

    async def scenario() -> list[str]:
        janitor = Janitor(first=0.01, most=0.02)

        def cleanup(key: str, failures: int):
            async def run() -> None:
                attempts[key] += 1
                if attempts[key] <= failures:
                    raise OSError(f"{key} is busy")
            return run

        janitor.add("a", cleanup("a", 0))
        janitor.add("b", cleanup("b", 3))
        for _ in range(200):
            if not janitor.pending:
                break
            await asyncio.sleep(0.01)
        left = janitor.pending
        await janitor.close()
        return left

    assert asyncio.run(scenario()) == []
    assert attempts == {"a": 1, "b": 4}
