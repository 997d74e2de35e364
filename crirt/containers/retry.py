"""Retrying what must not be lost: a container's exit, and the undo of a failed CreateContainer.

A runtime call can fail for a while (a hung runtime killed at its timeout, a monitor restarting, a full disk);
neither the exit of a running container nor the removal of a half-made one may be given up because of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable, Iterator

from crirt.errors import NotFound
from crirt.shim.contract import ExitStatus

log = logging.getLogger(__name__)

FIRST_DELAY = 1.0
MAX_DELAY = 30.0


def backoff(first: float = FIRST_DELAY, most: float = MAX_DELAY) -> Iterator[float]:
    """Delays that double from ``first`` up to ``most``, forever."""
    return (min(first * 2 ** n, most) for n in itertools.count())


async def wait_for_exit(wait: Callable[[], Awaitable[ExitStatus]], what: str,
                        delays: Iterator[float] | None = None) -> ExitStatus:
    """``wait()`` until it returns the exit; a failure is logged and the wait asked again after the next delay.
    NotFound (the runtime has no such task) is the caller's to handle."""
    for delay in delays or backoff():
        try:
            return await wait()
        except NotFound:
            raise
        except Exception as exc:
            log.warning("waiting for the exit of %s failed (asking again in %.0fs): %s", what, delay, exc)
        await asyncio.sleep(delay)
    raise AssertionError("unreachable: backoff never ends")


class Janitor:
    """Cleanups that failed, retried in the background with growing delays until each succeeds."""

    def __init__(self, first: float = FIRST_DELAY * 5, most: float = MAX_DELAY * 10) -> None:
        self.first = first
        self.most = most
        self._pending: dict[str, Callable[[], Awaitable[None]]] = {}
        self._task: asyncio.Task[None] | None = None

    def add(self, key: str, cleanup: Callable[[], Awaitable[None]]) -> None:
        """Retry ``cleanup`` (replacing any earlier one for ``key``) until it returns without raising."""
        self._pending[key] = cleanup
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    @property
    def pending(self) -> list[str]:
        return sorted(self._pending)

    async def _run(self) -> None:
        for delay in backoff(self.first, self.most):
            await asyncio.sleep(delay)
            for key, cleanup in list(self._pending.items()):
                try:
                    await cleanup()
                except Exception as exc:
                    log.warning("cleaning up %s failed (trying again later): %s", key, exc)
                    continue
                log.info("cleaned up %s", key)
                if self._pending.get(key) is cleanup:
                    del self._pending[key]
            if not self._pending:
                return

    async def close(self) -> None:
        """Stop retrying (what is left is found again at the next start)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
