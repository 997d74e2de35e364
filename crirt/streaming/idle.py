"""The idle timeout of stream connections: close a connection that carried no bytes either way for too long.

The transports (crirt.streaming.spdy, crirt.streaming.websocket) get the connection's reader and writer through
thin wrappers that note the time of every read and write; a watchdog compares that with the timeout.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any


class _Reader:
    """Forwards to an asyncio.StreamReader, noting when reads return."""

    def __init__(self, inner: asyncio.StreamReader, watch: IdleWatch) -> None:
        self._inner = inner
        self._watch = watch

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def read(self, n: int = -1) -> bytes:
        data = await self._inner.read(n)
        self._watch.touch()
        return data

    async def readexactly(self, n: int) -> bytes:
        data = await self._inner.readexactly(n)
        self._watch.touch()
        return data


class _Writer:
    """Forwards to an asyncio.StreamWriter, noting every write."""

    def __init__(self, inner: asyncio.StreamWriter, watch: IdleWatch) -> None:
        self._inner = inner
        self._watch = watch

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def write(self, data: bytes) -> None:
        self._inner.write(data)
        self._watch.touch()


class IdleWatch:
    """Watches one connection; ``reader``/``writer`` are the wrapped streams to hand to the transport."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float) -> None:
        self.timeout = timeout
        self.last = time.monotonic()
        self.reader: asyncio.StreamReader = _Reader(reader, self)  # type: ignore[assignment]
        self.writer: asyncio.StreamWriter = _Writer(writer, self)  # type: ignore[assignment]

    def touch(self) -> None:
        self.last = time.monotonic()

    async def expired(self) -> None:
        """Return once the connection has been idle for the timeout."""
        while True:
            remaining = self.last + self.timeout - time.monotonic()
            if remaining <= 0:
                return
            await asyncio.sleep(remaining)
