"""A task's attach socket for the shim v2 driver, served by crirt with conmon's framing (the shim contract's).

A SOCK_SEQPACKET unix socket: every message a client sends goes to the task's stdin FIFO (at most 8192 bytes
per message); every chunk of output is sent to every client as messages of one stream id byte (2 stdout,
3 stderr) and up to 8192 bytes. A client that does not keep up misses output (as with conmon: the task is
never slowed down by an attacher). When a client ends its input and the task was created with
``stdin_once``, the task's stdin is closed. When the task ends, the server sends the rest of the output and
closes every connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

log = logging.getLogger(__name__)

CHUNK = 8192
STREAM_IDS = {"stdout": 2, "stderr": 3}
STDIN_BACKLOG = 1 << 20
"""Bytes of input kept while the task does not read its stdin; more is dropped."""


def frames(stream: str, chunk: bytes) -> list[bytes]:
    """The messages carrying one chunk of ``stream`` output."""
    prefix = bytes([STREAM_IDS[stream]])
    return [prefix + chunk[i:i + CHUNK] for i in range(0, len(chunk), CHUNK)]


class AttachServer:
    """Serves the attach socket at ``path`` for one task."""

    def __init__(self, path: Path, stdin: int | None, end_of_input: Callable[[], Awaitable[None]] | None) -> None:
        """``stdin``: the task's stdin FIFO (kept open by the caller), None without stdin; ``end_of_input``:
        called when a client ends its input (the task's ``stdin_once``), None to keep stdin open."""
        self.path = path
        self._stdin = stdin
        self._end_of_input = end_of_input
        self._pending = bytearray()
        self._clients: set[socket.socket] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._loop = asyncio.get_running_loop()
        path.unlink(missing_ok=True)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        directory = os.open(path.parent, os.O_PATH | os.O_CLOEXEC)
        try:  # a socket address holds 108 bytes: bind through the directory's /proc/self/fd alias
            self._sock.bind(f"/proc/self/fd/{directory}/{path.name}")
            self._sock.listen(16)
        except BaseException:
            self._sock.close()
            raise
        finally:
            os.close(directory)
        self._loop.add_reader(self._sock.fileno(), self._accept)

    def _accept(self) -> None:
        try:
            conn, _ = self._sock.accept()
        except BlockingIOError:
            return
        conn.setblocking(False)
        self._clients.add(conn)
        self._loop.add_reader(conn.fileno(), self._receive, conn)

    def _receive(self, conn: socket.socket) -> None:
        try:
            message = conn.recv(CHUNK + 1)
        except BlockingIOError:
            return
        except OSError:
            message = b""
        if message:
            self._to_stdin(message)
            return
        self._loop.remove_reader(conn.fileno())  # input ended (half-close) or the client left
        if self._end_of_input is not None:
            task = self._loop.create_task(self._end_of_input())
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            self._end_of_input = None

    def _to_stdin(self, data: bytes) -> None:
        if self._stdin is None:
            return
        if len(self._pending) + len(data) > STDIN_BACKLOG:
            log.warning("attach %s: the task does not read its stdin; dropping %d bytes", self.path, len(data))
            return
        if not self._pending:
            self._loop.add_writer(self._stdin, self._flush)
        self._pending += data

    def _flush(self) -> None:
        assert self._stdin is not None
        try:
            written = os.write(self._stdin, self._pending)
        except BlockingIOError:
            return
        except OSError:
            written = len(self._pending)  # the task is gone
        del self._pending[:written]
        if not self._pending:
            self._loop.remove_writer(self._stdin)

    def stop_input(self) -> None:
        """The task's stdin is closed: drop pending and further input."""
        if self._pending and self._stdin is not None:
            self._loop.remove_writer(self._stdin)
        self._pending.clear()
        self._stdin = None

    def output(self, stream: str, chunk: bytes) -> None:
        """Send a chunk of the task's output to every client (a listener of ``crilog.CriLog``)."""
        messages = frames(stream, chunk)
        for conn in list(self._clients):
            try:
                for message in messages:
                    conn.send(message)
            except BlockingIOError:
                continue  # this client is behind: it misses this chunk
            except OSError:
                self._drop(conn)

    def _drop(self, conn: socket.socket) -> None:
        self._clients.discard(conn)
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(conn.fileno())
        conn.close()

    def close(self) -> None:
        """Close every connection and the socket (the stdin FIFO stays the caller's)."""
        self.stop_input()
        for conn in list(self._clients):
            self._drop(conn)
        if self._sock.fileno() >= 0:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
        self.path.unlink(missing_ok=True)
        for task in self._background:
            task.cancel()
