"""An attacher of a task's main process through an attach socket with conmon's framing, as a ``ProcessIO``.

conmon serves the socket for the conmon driver, crirt's ``taskv2_attach.AttachServer`` for the shim v2 driver:
SOCK_SEQPACKET, each message a client sends goes to the task's stdin (at most 8192 bytes), each message it
receives is one stream byte (2 stdout, 3 stderr) and up to 8192 bytes of output. Several clients may be
attached at once; a client that does not keep up misses output rather than slow the task down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

from crirt.errors import FailedPrecondition, NotFound
from crirt.shim.contract import ProcessIO

log = logging.getLogger(__name__)

CHUNK = 8192
"""conmon's buffer size: the most output per message after the stream byte, and the most stdin sent in one."""
STREAMS = {2: 1, 3: 2}
"""The socket's stream bytes (conmon's pipe numbers: 1 stdin, 2 stdout, 3 stderr) to ProcessIO's (1, 2)."""
QUEUE = 64
"""Messages read ahead of the consumer. Beyond that the socket fills up; conmon then stops sending output to
this attacher rather than slow the container down."""


class SocketAttach(ProcessIO):
    """One client of a task's attach socket. ``resize`` and ``wait`` are the driver's for the task."""

    def __init__(self, sock: socket.socket, task_id: str, *, stdin: bool, terminal: bool,
                 resize: Callable[[int, int], Awaitable[None]], wait: Callable[[], Awaitable[int]]) -> None:
        self._sock = sock
        self._task_id = task_id
        self._stdin = stdin
        self._terminal = terminal
        self._resize = resize
        self._wait = wait
        self._output: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue(QUEUE)
        self._ended = False
        self._receiver = asyncio.ensure_future(self._receive())

    @classmethod
    async def connect(cls, path: Path, task_id: str, *, stdin: bool, terminal: bool,
                      resize: Callable[[int, int], Awaitable[None]], wait: Callable[[], Awaitable[int]]
                      ) -> SocketAttach:
        """Connect to the socket at ``path`` (which may exceed the 108 bytes of a socket address: connected
        through the ``/proc/self/fd`` alias of its directory); FailedPrecondition when nothing answers."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        sock.setblocking(False)
        try:
            directory = os.open(path.parent, os.O_PATH | os.O_CLOEXEC)
            try:
                await asyncio.get_running_loop().sock_connect(sock, f"/proc/self/fd/{directory}/{path.name}")
            finally:
                os.close(directory)
        except OSError as exc:
            sock.close()
            raise FailedPrecondition(f"cannot attach to {task_id}: its attach socket {path} does not answer "
                                     f"({exc.strerror or exc})") from None
        except BaseException:
            sock.close()
            raise
        return cls(sock, task_id, stdin=stdin, terminal=terminal, resize=resize, wait=wait)

    async def _receive(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while message := await loop.sock_recv(self._sock, CHUNK + 1):
                stream = STREAMS.get(message[0])
                if stream is not None and len(message) > 1:
                    await self._output.put((stream, message[1:]))
        except OSError as exc:
            log.debug("attach socket of %s failed: %s", self._task_id, exc)
        finally:
            self._ended = True
            with contextlib.suppress(asyncio.QueueFull):
                self._output.put_nowait((0, b""))

    async def read_output(self) -> tuple[int, bytes]:
        if self._ended and self._output.empty():
            return 0, b""
        return await self._output.get()

    async def write_stdin(self, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        for start in range(0, len(data), CHUNK):
            if not self._stdin:
                return
            try:
                await loop.sock_sendall(self._sock, data[start:start + CHUNK])
            except OSError:  # the monitor is gone: the task has exited
                self._stdin = False

    async def close_stdin(self) -> None:
        if self._stdin:
            self._stdin = False
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_WR)

    async def resize(self, width: int, height: int) -> None:
        if not self._terminal:
            return
        try:
            await self._resize(width, height)
        except (NotFound, FailedPrecondition) as exc:  # the task has just exited; the session ends anyway
            log.debug("resize of %s skipped: %s", self._task_id, exc)

    async def wait(self) -> int:
        return await self._wait()

    async def close(self) -> None:
        self._receiver.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._receiver
        self._sock.close()
