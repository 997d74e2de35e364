"""The WebSocket transport of the streaming server: the RFC 6455 handshake answer, the subprotocol choice, and
Kubernetes channel framing on top of wsproto's frame layer.

Channel framing (k8s.io/apimachinery wsstream): every message carries one channel. Binary protocols put the
channel number in the first byte and the raw payload after it; the base64 protocols send text messages whose
first character is the channel digit and whose rest is the base64 payload. ``v5.channel.k8s.io`` adds channel
255: a message there closes the channel named by its one payload byte (how a v5 client says "stdin EOF").
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
from collections.abc import Iterable, Sequence

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage
from wsproto.utilities import LocalProtocolError, generate_accept_token

from crirt.streaming.channels import ERROR, STDERR, STDOUT, ClientGone, ClientStreams, Opener, execute
from crirt.streaming.http import Head, HttpError
from crirt.streaming.requests import AttachRequest, ExecRequest

log = logging.getLogger(__name__)

CLOSE_CHANNEL = 255
"""v5.channel.k8s.io: a message on this channel closes the channel named by its payload byte."""
V5 = "v5.channel.k8s.io"
BASE64_PROTOCOLS = frozenset({"v4.base64.channel.k8s.io", "base64.channel.k8s.io"})
READ_SIZE = 64 * 1024
TEXT_LIMIT = 4 * 1024 * 1024
"""Largest base64 text message accepted (binary messages are streamed, never held whole)."""
INBOX_DEPTH = 16
"""Chunks buffered per incoming channel before the socket stops reading (TCP backpressure to the client)."""
CLOSE_WAIT = 2.0
"""Seconds to wait for the client's close frame after ours before dropping the connection."""


def choose_subprotocol(offered: Sequence[str], supported: Sequence[str]) -> str | None:
    """The client's first offered subprotocol the server supports; "" when it offered none; None: no match."""
    if not offered:
        return ""
    return next((p for p in offered if p in supported), None)


def offered_subprotocols(head: Head) -> list[str]:
    """The Sec-WebSocket-Protocol values of the request, in the client's order of preference."""
    return [p.strip() for value in head.all("sec-websocket-protocol") for p in value.split(",") if p.strip()]


def accept_handshake(head: Head, supported: Sequence[str]) -> tuple[str, bytes]:
    """Check a WebSocket upgrade request; return the chosen subprotocol and the 101 response to send.

    Raises HttpError: 400 for a malformed handshake, 426 for another WebSocket version, 403 when none of the
    offered subprotocols is supported (k8s' wsstream answers so, naming both lists)."""
    if head.method != "GET":
        raise HttpError(400, "a WebSocket upgrade must use GET")
    if "upgrade" not in head.tokens("connection"):
        raise HttpError(400, "missing 'Connection: Upgrade'")
    if head.get("sec-websocket-version") != "13":
        raise HttpError(426, "only WebSocket version 13 is supported", [("Sec-WebSocket-Version", "13")])
    key = head.get("sec-websocket-key") or ""
    try:
        valid_key = len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        valid_key = False
    if not valid_key:
        raise HttpError(400, "Sec-WebSocket-Key must be 16 bytes in base64")
    offered = offered_subprotocols(head)
    protocol = choose_subprotocol(offered, supported)
    if protocol is None:
        raise HttpError(403, f"unable to negotiate protocol: requested protocol(s) are not supported: "
                             f"{', '.join(offered)}; supports {', '.join(p for p in supported if p)}")
    lines = ["HTTP/1.1 101 Switching Protocols", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Accept: {generate_accept_token(key.encode()).decode()}"]
    if protocol:
        lines.append(f"Sec-WebSocket-Protocol: {protocol}")
    return protocol, ("\r\n".join(lines) + "\r\n\r\n").encode()


class ChannelSocket:
    """One accepted WebSocket speaking a k8s channel protocol.

    ``run()`` reads until the connection ends and queues incoming payloads per channel (only the channels in
    ``readable``; b"" marks a channel's end). ``send()`` writes one message on a channel."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, protocol: str,
                 readable: Iterable[int]) -> None:
        self._reader = reader
        self._writer = writer
        self._conn = Connection(ConnectionType.SERVER)
        self.protocol = protocol
        self.base64 = protocol in BASE64_PROTOCOLS
        self.inbox: dict[int, asyncio.Queue[bytes]] = {c: asyncio.Queue(INBOX_DEPTH) for c in readable}
        self._ended: set[int] = set()  # incoming channels whose end the reader has seen
        self._eof: set[int] = set()  # incoming channels whose end is queued
        self._current: int | None = None  # channel of the binary message being received; -1: byte pending
        self._text: list[str] = []
        self._text_size = 0
        self.closed = asyncio.Event()

    async def read(self, channel: int) -> bytes:
        """The next payload chunk of an incoming channel; b"" once it ended (or the connection did)."""
        if channel in self._ended:
            return b""
        queue = self.inbox[channel]
        data = b"" if queue.empty() and self.closed.is_set() else await queue.get()
        if not data:
            self._ended.add(channel)
        return data

    async def send(self, channel: int, data: bytes) -> None:
        """Send ``data`` as one message on ``channel``; ClientGone when the connection is closed."""
        if self.base64:
            message: BytesMessage | TextMessage = TextMessage(f"{channel}{base64.b64encode(data).decode()}")
        else:
            message = BytesMessage(bytes([channel]) + data)
        await self._send(message)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Send a close frame (when still open), give the client a moment to answer, drop the connection."""
        with contextlib.suppress(ClientGone):
            await self._send(CloseConnection(code, reason))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.closed.wait(), CLOSE_WAIT)
        self._writer.close()

    async def _send(self, event: BytesMessage | TextMessage | CloseConnection | Pong) -> None:
        """Frame and write one event; ClientGone once the WebSocket or the connection is closed."""
        try:
            data = self._conn.send(event)
        except LocalProtocolError:
            raise ClientGone("the WebSocket is closed") from None
        if self._writer.is_closing():
            raise ClientGone("the connection is closed")
        self._writer.write(data)
        try:
            await self._writer.drain()
        except ConnectionError as exc:
            raise ClientGone(str(exc)) from None

    async def run(self) -> None:
        """Read frames until the client closes or the connection drops."""
        try:
            while self._conn.state in (ConnectionState.OPEN, ConnectionState.LOCAL_CLOSING):
                data = await self._reader.read(READ_SIZE)
                self._conn.receive_data(data or None)
                await self._dispatch()
                if not data:
                    break
        except (ConnectionError, ClientGone):
            pass
        finally:
            self.closed.set()
            for channel, queue in self.inbox.items():
                if channel not in self._eof:
                    with contextlib.suppress(asyncio.QueueFull):  # full: read() sees closed once drained
                        queue.put_nowait(b"")

    async def _dispatch(self) -> None:
        for event in self._conn.events():
            if isinstance(event, BytesMessage):
                await self._binary(bytes(event.data), event.message_finished)
            elif isinstance(event, TextMessage):
                await self._text_chunk(event.data, event.message_finished)
            elif isinstance(event, Ping):
                with contextlib.suppress(ClientGone):
                    await self._send(event.response())
            elif isinstance(event, CloseConnection):
                with contextlib.suppress(ClientGone):  # answer the client's close (ours needs no answer)
                    await self._send(event.response())
                if event.code not in (1000, 1001, 1005, 1006):
                    log.info("streaming WebSocket closed: %s %s", event.code, event.reason)
                self._writer.close()
                return

    async def _binary(self, data: bytes, finished: bool) -> None:
        if self._current is None or self._current == -1:
            if not data:
                self._current = None if finished else -1
                return
            self._current, data = data[0], data[1:]
        channel = self._current
        if finished:
            self._current = None
        await self._deliver(channel, data)

    async def _text_chunk(self, text: str, finished: bool) -> None:
        self._text.append(text)
        self._text_size += len(text)
        if self._text_size > TEXT_LIMIT:
            self._text, self._text_size = [], 0
            await self._send(CloseConnection(1009, f"text message over {TEXT_LIMIT} bytes"))
            return
        if not finished:
            return
        whole, self._text, self._text_size = "".join(self._text), [], 0
        if not whole:
            return
        try:
            channel, data = int(whole[0]), base64.b64decode(whole[1:], validate=True)
        except (ValueError, binascii.Error):
            await self._send(CloseConnection(1007, "a text message must be a channel digit and base64 data"))
            return
        await self._deliver(channel, data)

    async def _deliver(self, channel: int, data: bytes) -> None:
        if channel == CLOSE_CHANNEL and self.protocol == V5:
            for closed in data:
                if closed in self.inbox and closed not in self._eof:
                    self._eof.add(closed)
                    await self.inbox[closed].put(b"")
            return
        if data and channel in self.inbox and channel not in self._eof:
            await self.inbox[channel].put(data)


class _Client(ClientStreams):
    """An exec/attach client on a channel WebSocket."""

    def __init__(self, sock: ChannelSocket) -> None:
        self.sock = sock

    async def read(self, channel: int) -> bytes:
        return await self.sock.read(channel)

    async def write(self, channel: int, data: bytes) -> None:
        await self.sock.send(channel, data)

    async def end(self, channel: int) -> None:
        """Nothing to send: the status and the close frame end every channel."""

    async def gone(self) -> None:
        await self.sock.closed.wait()


async def serve_command(sock: ChannelSocket, request: ExecRequest | AttachRequest, open_target: Opener) -> None:
    """Run one exec/attach session on an accepted WebSocket, then send the status and close with 1000."""
    # The kubelet's server announces itself with an empty message on the lowest channel it writes.
    first = STDOUT if request.stdout else STDERR if request.stderr else ERROR
    try:
        await sock.send(first, b"")
    except ClientGone:
        return
    status = await execute(request, open_target, _Client(sock), sock.protocol, resize=request.tty)
    if status is None:
        return
    with contextlib.suppress(ClientGone):
        if status:
            await sock.send(ERROR, status)
    await sock.close(1000)
