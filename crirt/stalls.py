"""A debug watchdog for event-loop stalls: anything that keeps the loop from running callbacks for too long.

A thread asks the loop to run a tiny callback every half threshold. When the loop has not run it for
``threshold`` seconds, the thread takes the stack the loop's thread is executing right then (the code that
blocks it), logs it, and keeps it for Status' verbose info (``loopStalls``) together with how long the stall
lasted in the end. Off by default (``[debug] loop_stall_ms``): the probing costs a little CPU.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass
class Stall:
    """One stall: how long the loop ran no callback, and the loop thread's stack when it passed the threshold."""

    seconds: float
    stack: list[str]
    at: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, object]:
        return {"ms": round(self.seconds * 1000, 1), "at": self.at, "stack": self.stack}


class StallWatch:
    """Watches one event loop from a daemon thread; keeps the last ``keep`` stalls."""

    def __init__(self, threshold: float, keep: int = 100) -> None:
        self.threshold = threshold
        self.stalls: collections.deque[Stall] = collections.deque(maxlen=keep)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._answered = 0.0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start watching ``loop``; call from the loop's own thread."""
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._answered = time.monotonic()
        self._thread = threading.Thread(target=self._watch, name="crirt-stall-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _answer(self) -> None:
        self._answered = time.monotonic()

    def _watch(self) -> None:
        assert self._loop is not None
        current: Stall | None = None
        asked = self._answered  # as if a first probe had been answered: the first round sends one
        while not self._stop.wait(self.threshold / 2):
            now = time.monotonic()
            if self._answered >= asked:  # the loop ran the last probe: ask again
                if current is not None:
                    current.seconds = self._answered - asked
                    current = None
                asked = now
                try:
                    self._loop.call_soon_threadsafe(self._answer)
                except RuntimeError:  # the loop is closed
                    return
            elif current is None and now - asked >= self.threshold:
                frame = sys._current_frames().get(self._loop_thread)
                stack = traceback.format_stack(frame) if frame is not None else []
                current = Stall(now - asked, [line.rstrip() for line in stack])
                self.stalls.append(current)
                log.warning("event loop stalled for more than %.0f ms in:\n%s", self.threshold * 1000,
                            "".join(stack[-12:]))
            elif current is not None:
                current.seconds = now - asked

    def report(self) -> list[dict[str, object]]:
        return [stall.as_dict() for stall in self.stalls]
