"""Copies a task's output FIFOs into a CRI-format container log (as conmon does for the conmon driver) and to
listeners such as an attach socket.

Each chunk read from a stream becomes log lines ``<RFC 3339 time, ns, UTC> <stream> <tag> <text>``: tag ``F``
for a line that ended in a newline, ``P`` for the partial tail of a chunk (the rest of the line follows in
the next entry). The kubelet and ``crictl logs`` join P entries with the following F entry.

The FIFOs are opened read-write and non-blocking: a FIFO open for writing by its reader never reports end of
file, so the copier keeps working while the runtime closes and reopens its end, and a crirt that restarts
simply opens the same FIFOs again (whatever was written meanwhile waits in the pipe).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

READ_SIZE = 65536


def timestamp(ns: int) -> str:
    """``ns`` (unix nanoseconds) as the CRI log's RFC 3339 time, e.g. ``2016-10-06T00:17:09.669794202Z``."""
    seconds, fraction = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{fraction:09d}Z"


def format_chunk(stream: str, data: bytes, ns: int) -> bytes:
    """The log lines for one chunk of ``stream`` output read at ``ns``."""
    prefix = f"{timestamp(ns)} {stream} ".encode()
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the chunk ended with a newline
    out = [prefix + b"F " + line + b"\n" for line in lines]
    if tail:
        out.append(prefix + b"P " + tail + b"\n")
    return b"".join(out)


def open_fifo(path: Path) -> int:
    """Open a FIFO for reading without blocking and without ever seeing end of file (see the module doc)."""
    return os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)


def read_available(fd: int) -> bytes:
    """Everything the FIFO holds right now (b"" if nothing)."""
    chunks = []
    while True:
        try:
            chunk = os.read(fd, READ_SIZE)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


class FifoReader:
    """Calls ``sink`` with each chunk read from a FIFO, from the event loop, until closed."""

    def __init__(self, path: Path, sink: Callable[[bytes], None]) -> None:
        self.fd = open_fifo(path)
        self._sink = sink
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        try:
            chunk = os.read(self.fd, READ_SIZE)
        except BlockingIOError:
            return
        if chunk:
            self._sink(chunk)

    def drain(self) -> None:
        """Pass on what the FIFO holds right now."""
        if self.fd >= 0 and (rest := read_available(self.fd)):
            self._sink(rest)

    def close(self, drain: bool = True) -> None:
        """Stop reading; with ``drain`` first pass on what the FIFO still holds."""
        if self.fd < 0:
            return
        self._loop.remove_reader(self.fd)
        if drain and (rest := read_available(self.fd)):
            self._sink(rest)
        os.close(self.fd)
        self.fd = -1


class Capture:
    """Collects what a FIFO delivers, keeping at most ``limit`` bytes (an exec's output)."""

    def __init__(self, path: Path, limit: int) -> None:
        self.data = bytearray()
        self.limit = limit
        self.reader = FifoReader(path, self._add)

    def _add(self, chunk: bytes) -> None:
        self.data += chunk[: max(self.limit - len(self.data), 0)]

    def close(self) -> bytes:
        """Stop reading (after what the FIFO still holds); the output kept."""
        self.reader.close()
        return bytes(self.data)


class CriLog:
    """A task's output: copies its stdout and stderr FIFOs (either may be absent) into the CRI log at
    ``log_path`` (if any) and to every listener (``listeners``: called with the stream name and the chunk,
    e.g. an attach socket); ``reopen`` starts a new log file (ReopenContainerLog)."""

    def __init__(self, log_path: Path | None, stdout: Path | None, stderr: Path | None) -> None:
        self.log_path = log_path
        self.listeners: list[Callable[[str, bytes], None]] = []
        self._file = self._open()
        self._readers: list[FifoReader] = []
        try:
            for stream, path in (("stdout", stdout), ("stderr", stderr)):
                if path is not None:
                    self._readers.append(FifoReader(path, self._writer(stream)))
        except BaseException:
            self.close(drain=False)
            raise

    def _open(self) -> int:
        if self.log_path is None:
            return -1
        return os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def _writer(self, stream: str) -> Callable[[bytes], None]:
        def write(chunk: bytes) -> None:
            if self._file >= 0:
                try:
                    os.write(self._file, format_chunk(stream, chunk, time.time_ns()))
                except OSError as exc:  # a full disk must not stop the copier (the pipe would fill up)
                    log.warning("writing container log %s: %s", self.log_path, exc)
            for listener in list(self.listeners):
                listener(stream, chunk)
        return write

    def reopen(self) -> None:
        """Start a new log file at ``log_path`` (after the kubelet rotated the old one away)."""
        try:
            fresh = self._open()
        except OSError as exc:
            log.warning("reopening container log %s: %s", self.log_path, exc)
            return
        if self._file >= 0:
            os.close(self._file)
        self._file = fresh

    def drain(self) -> None:
        """Pass on everything the FIFOs hold right now (the task has ended: nothing more is coming)."""
        for reader in self._readers:
            reader.drain()

    def close(self, drain: bool = True) -> None:
        """Stop copying (with ``drain``, after writing what the FIFOs still hold) and close the log."""
        for reader in self._readers:
            reader.close(drain)
        self._readers.clear()
        if self._file >= 0:
            with contextlib.suppress(OSError):
                os.close(self._file)
            self._file = -1
