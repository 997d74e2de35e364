"""The Kubernetes port-forward protocols: TCP connections into a pod's network namespace.

SPDY (``portforward.k8s.io``): for every connection the client opens two streams with the same ``requestid``
and ``port`` headers, ``streamtype: error`` and ``streamtype: data``. Data streams carry the connection's bytes
both ways; if forwarding fails, the error stream carries the message. Many ports and connections share one
SPDY connection. WebSocket (the kubelet's ``v4.channel.k8s.io`` variant): the ports come from the URL's
``port`` query parameters, each port gets one connection on channels 2i (data) and 2i+1 (error), and the first
message the server sends on each channel is the port as two little-endian bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from crirt.errors import CrirtError
from crirt.streaming.channels import ClientGone
from crirt.streaming.requests import PortForwardRequest
from crirt.streaming.websocket import ChannelSocket

log = logging.getLogger(__name__)

SPDY_PROTOCOLS = ("portforward.k8s.io",)
WEBSOCKET_PROTOCOLS = ("v4.channel.k8s.io", "v4.base64.channel.k8s.io")
READ_SIZE = 64 * 1024

Dial = Callable[[str, int], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


class Pipe(Protocol):
    """The client's end of one forwarded connection: a SPDY data stream or a WebSocket data channel."""

    async def read(self) -> bytes: ...
    async def write(self, data: bytes) -> None: ...
    async def close(self) -> None: ...


def check_port(request: PortForwardRequest, text: str | None) -> int:
    """The port a stream names; ValueError with the client-facing message when it is missing or not allowed."""
    if not text:
        raise ValueError("missing the port header")
    try:
        port = int(text)
    except ValueError:
        raise ValueError(f"invalid port {text!r}") from None
    if not 0 < port <= 0xFFFF:
        raise ValueError(f"invalid port {port}: must be 1..65535")
    if request.ports and port not in request.ports:
        raise ValueError(f"port {port} was not requested (requested: {', '.join(map(str, request.ports))})")
    return port


async def forward(pipe: Pipe, dial: Dial, sandbox_id: str, port: int) -> str | None:
    """Connect to ``port`` in the pod and copy both ways until the pod's side ends; the error message, if any.

    The client's EOF half-closes the TCP connection (the pod may still answer); the pod's EOF ends the pipe."""
    try:
        reader, writer = await dial(sandbox_id, port)
    except (CrirtError, OSError) as exc:
        return f"error forwarding port {port} to pod {sandbox_id}: {exc}"

    async def upstream() -> None:
        while data := await pipe.read():
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    up = asyncio.ensure_future(upstream())
    try:
        while data := await reader.read(READ_SIZE):
            await pipe.write(data)
        await pipe.close()
        return None
    except (ConnectionError, ClientGone) as exc:
        log.debug("port-forward to %s:%d ended: %s", sandbox_id, port, exc)
        return None
    finally:
        up.cancel()
        await asyncio.gather(up, return_exceptions=True)
        writer.close()


# ---- SPDY ---------------------------------------------------------------------------------------------------


class _StreamPipe:
    """A SPDY data stream as a Pipe; its write errors become ClientGone."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    async def read(self) -> bytes:
        data: bytes = await self.stream.read()
        return data

    async def write(self, data: bytes) -> None:
        try:
            await self.stream.write(data)
        except Exception as exc:  # the session's StreamClosedError, or the connection's error
            raise ClientGone(str(exc)) from None

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.stream.close()


@dataclass
class _Pair:
    """The two streams of one forwarded connection, as they arrive."""

    request_id: str
    data: Any = None
    error: Any = None
    timer: asyncio.TimerHandle | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class SpdyPortForward:
    """Serves the port-forward streams of one SPDY session until it ends."""

    def __init__(self, session: Any, request: PortForwardRequest, dial: Dial, creation_timeout: float) -> None:
        self.session = session
        self.request = request
        self.dial = dial
        self.creation_timeout = creation_timeout
        self.pairs: dict[str, _Pair] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        try:
            while (stream := await self.session.accept()) is not None:
                await self._stream(stream)
        finally:
            for pair in self.pairs.values():
                if pair.timer is not None:
                    pair.timer.cancel()
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _stream(self, stream: Any) -> None:
        kind = stream.headers.get("streamtype", "")
        if kind not in ("data", "error"):
            log.info("port-forward: refusing a stream of type %r", kind)
            await stream.reset()
            return
        # Clients older than requestid pair streams by id: error N, data N+2.
        request_id = stream.headers.get("requestid") or str(stream.stream_id - (2 if kind == "data" else 0))
        pair = self.pairs.get(request_id)
        if pair is None:
            pair = self.pairs[request_id] = _Pair(request_id)
            pair.timer = asyncio.get_running_loop().call_later(self.creation_timeout, self._expire, request_id)
        if getattr(pair, kind) is not None:
            log.info("port-forward: a second %s stream for request %s", kind, request_id)
            await stream.reset()
            return
        await stream.reply()
        setattr(pair, kind, stream)
        if pair.data is not None and pair.error is not None:
            del self.pairs[request_id]
            if pair.timer is not None:
                pair.timer.cancel()
            task = asyncio.create_task(self._forward(pair))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def _expire(self, request_id: str) -> None:
        """A pair whose second stream never came: tell the client on the error stream, drop both."""
        pair = self.pairs.pop(request_id, None)
        if pair is None:
            return
        task = asyncio.ensure_future(self._fail(pair, f"timed out waiting for the streams of request {request_id}"))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _fail(self, pair: _Pair, message: str) -> None:
        with contextlib.suppress(Exception):
            if pair.error is not None:
                await pair.error.write(message.encode())
                await pair.error.close()
            if pair.data is not None:
                await pair.data.reset()

    async def _forward(self, pair: _Pair) -> None:
        try:
            port = check_port(self.request, pair.data.headers.get("port"))
        except ValueError as exc:
            await self._fail(pair, str(exc))
            return
        problem = await forward(_StreamPipe(pair.data), self.dial, self.request.sandbox_id, port)
        with contextlib.suppress(Exception):
            if problem is not None:
                log.info("port-forward: %s", problem)
                await pair.error.write(problem.encode())
                await pair.data.close()
            await pair.error.close()


# ---- WebSocket ------------------------------------------------------------------------------------------------


class _ChannelPipe:
    """One data channel of a port-forward WebSocket as a Pipe."""

    def __init__(self, sock: ChannelSocket, channel: int) -> None:
        self.sock = sock
        self.channel = channel

    async def read(self) -> bytes:
        return await self.sock.read(self.channel)

    async def write(self, data: bytes) -> None:
        await self.sock.send(self.channel, data)

    async def close(self) -> None:
        """The connection's end is the WebSocket's end."""


def websocket_ports(request: PortForwardRequest, query: dict[str, list[str]]) -> list[int]:
    """The ports of a WebSocket port-forward: the URL's ``port`` parameters (else the CRI request's)."""
    texts = [p for value in query.get("port", []) for p in value.split(",") if p]
    if not texts:
        if not request.ports:
            raise ValueError('query parameter "port" is required')
        return list(request.ports)
    return [check_port(request, text) for text in texts]


async def serve_websocket(sock: ChannelSocket, request: PortForwardRequest, ports: list[int], dial: Dial) -> None:
    """Forward one connection per port over an accepted WebSocket; close it when they all ended."""

    async def one(index: int, port: int) -> None:
        data, error = 2 * index, 2 * index + 1
        problem = await forward(_ChannelPipe(sock, data), dial, request.sandbox_id, port)
        if problem is not None:
            log.info("port-forward: %s", problem)
            await sock.send(error, problem.encode())

    try:
        for index, port in enumerate(ports):
            prefix = struct.pack("<H", port)
            await sock.send(2 * index, prefix)
            await sock.send(2 * index + 1, prefix)
    except ClientGone:
        return
    work = asyncio.gather(*(one(i, p) for i, p in enumerate(ports)))
    gone = asyncio.ensure_future(sock.closed.wait())
    try:
        await asyncio.wait([work, gone], return_when=asyncio.FIRST_COMPLETED)
    finally:
        work.cancel()
        gone.cancel()
        await asyncio.gather(work, gone, return_exceptions=True)
    if not sock.closed.is_set():
        await sock.close(1000)
