"""Exits as events: one inotify watch on a directory where monitors write one file per finished task.

conmon writes ``<exit dir>/<container id>`` when a container ends (a temporary file renamed into place). One
``ExitWatcher`` per driver watches that directory and wakes whoever waits for that id, so an idle node costs
nothing per container: no task polls a file or ``/proc``. What the kernel could not report (a full inotify
queue, a monitor killed before it wrote the file) is caught by a slow sweep that asks the driver about every
awaited id, every ``sweep_interval`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_Q_OVERFLOW = 0x00004000
_EVENT = struct.Struct("iIII")
"""struct inotify_event: wd, mask, cookie, len; then ``len`` bytes of NUL-padded name."""

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def parse_events(buffer: bytes) -> list[tuple[int, str]]:
    """(mask, name) of each ``struct inotify_event`` in what one read of an inotify descriptor returned."""
    events = []
    offset = 0
    while offset + _EVENT.size <= len(buffer):
        _, mask, _, length = _EVENT.unpack_from(buffer, offset)
        offset += _EVENT.size
        name = buffer[offset:offset + length].split(b"\0", 1)[0].decode(errors="replace")
        offset += length
        events.append((mask, name))
    return events


class Inotify:
    """A non-blocking inotify descriptor watching one directory for files written or moved into it."""

    def __init__(self, directory: Path) -> None:
        self.fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_init1: {os.strerror(ctypes.get_errno())}")
        if _libc.inotify_add_watch(self.fd, os.fsencode(directory), IN_CLOSE_WRITE | IN_MOVED_TO) < 0:
            errno = ctypes.get_errno()
            os.close(self.fd)
            raise OSError(errno, f"inotify_add_watch {directory}: {os.strerror(errno)}")

    def read(self) -> list[tuple[int, str]]:
        """The events queued so far (none when there are none)."""
        try:
            return parse_events(os.read(self.fd, 65536))
        except BlockingIOError:
            return []

    def close(self) -> None:
        os.close(self.fd)


class ExitWatcher(Generic[T]):
    """Wakes the waiters of an id when a file of that name appears in ``directory``.

    ``check(id)`` is the driver's full look at one task: the exit (a ``T``) when it is known, None while the
    task runs; it may raise (NotFound for a task that vanished), which the waiters of that id then receive.
    It runs once when a wait begins (the file may already be there), on every event for the id, and for
    every awaited id on each sweep.
    """

    def __init__(self, directory: Path, check: Callable[[str], Awaitable[T | None]],
                 sweep_interval: float = 30.0) -> None:
        self.directory = directory
        self.check = check
        self.sweep_interval = sweep_interval
        self._waiters: dict[str, set[asyncio.Future[T]]] = {}
        self._inotify: Inotify | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._checks: set[asyncio.Task[None]] = set()

    @property
    def awaited(self) -> int:
        """How many ids have a waiter now."""
        return len(self._waiters)

    async def wait(self, task_id: str) -> T:
        """Wait until ``check(task_id)`` reports an exit, and return it."""
        self._start()
        assert self._loop is not None
        future: asyncio.Future[T] = self._loop.create_future()
        self._waiters.setdefault(task_id, set()).add(future)
        try:
            self._recheck(task_id)  # the watch exists now: anything written later is an event
            return await future
        finally:
            waiters = self._waiters.get(task_id)
            if waiters is not None:
                waiters.discard(future)
                if not waiters:
                    del self._waiters[task_id]

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        self.close()  # a new event loop (tests, or a restarted server in one process): start afresh
        self._waiters.clear()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._inotify = Inotify(self.directory)
        self._loop = loop
        loop.add_reader(self._inotify.fd, self._on_events)
        self._sweeper = loop.create_task(self._sweep())

    def _on_events(self) -> None:
        assert self._inotify is not None
        for mask, name in self._inotify.read():
            if mask & IN_Q_OVERFLOW:
                log.warning("inotify queue on %s overflowed; checking every awaited task", self.directory)
                for task_id in list(self._waiters):
                    self._recheck(task_id)
            elif name in self._waiters:
                self._recheck(name)

    def _recheck(self, task_id: str) -> None:
        """Run ``check`` for one id in the background and hand its answer to the id's waiters."""
        assert self._loop is not None
        task = self._loop.create_task(self._settle(task_id))
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    async def _settle(self, task_id: str) -> None:
        try:
            status = await self.check(task_id)
        except Exception as exc:  # handed to the waiters, whose caller decides
            for future in self._waiters.get(task_id, ()):
                if not future.done():
                    future.set_exception(exc)
            return
        if status is not None:
            for future in self._waiters.get(task_id, ()):
                if not future.done():
                    future.set_result(status)

    async def _sweep(self) -> None:
        """Every ``sweep_interval`` seconds, check every awaited id: what no event reported is found here."""
        while True:
            await asyncio.sleep(self.sweep_interval)
            for task_id in list(self._waiters):
                await self._settle(task_id)

    def close(self) -> None:
        """Stop watching; waiters still waiting are left to their callers (crirt stops watching at exit)."""
        for task in [*self._checks, *([self._sweeper] if self._sweeper is not None else [])]:
            with contextlib.suppress(RuntimeError):  # its loop may be closed already
                task.cancel()
        self._sweeper = None
        self._checks.clear()
        if self._inotify is not None:
            if self._loop is not None and not self._loop.is_closed():
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(self._inotify.fd)
            self._inotify.close()
            self._inotify = None
        self._loop = None
