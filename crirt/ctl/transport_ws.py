"""WebSocket transport for ``crirt ctl`` (``--transport websocket``): ``v5.channel.k8s.io``, falling back to v4.

Each binary message is a channel byte and a payload: 0 stdin, 1 stdout, 2 stderr, 3 the final status (JSON),
4 terminal size; v5's channel 255 closes a channel (stdin EOF). Port-forward uses the kubelet's WebSocket
variant: one connection per URL, the port in the ``port`` query parameter, channel 0 data and 1 errors, each
starting with the port in two bytes. WebSocket has no half-close, so a tunnel's end of sending closes it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Sequence

import aiohttp

from crirt.ctl.transport import DATA, ERROR, RESIZE, STDERR, STDIN, STDOUT, Session, Transport, TransportError, Tunnel

PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")
CLOSE = 255


class WebSocketSession(Session):
    """An exec/attach session on one WebSocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws

    async def send_stdin(self, data: bytes) -> None:
        await self._ws.send_bytes(bytes([STDIN]) + data)

    async def close_stdin(self) -> None:
        if self._ws.protocol == PROTOCOLS[0]:
            await self._ws.send_bytes(bytes([CLOSE, STDIN]))

    async def resize(self, width: int, height: int) -> None:
        await self._ws.send_bytes(bytes([RESIZE]) + json.dumps({"Width": width, "Height": height}).encode())

    async def output(self) -> AsyncIterator[tuple[int, bytes]]:
        async for message in self._ws:
            if message.type != aiohttp.WSMsgType.BINARY or not message.data:
                continue
            channel, data = message.data[0], message.data[1:]
            if channel in (STDOUT, STDERR, ERROR):
                yield channel, data


class WebSocketTunnel(Tunnel):
    """One forwarded connection on its own WebSocket (channel 0 data, 1 errors)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws

    async def send(self, data: bytes) -> None:
        await self._ws.send_bytes(bytes([0]) + data)

    async def close_send(self) -> None:
        await self._ws.close()

    async def received(self) -> AsyncIterator[tuple[int, bytes]]:
        seen: set[int] = set()
        async for message in self._ws:
            if message.type != aiohttp.WSMsgType.BINARY or not message.data:
                continue
            channel, data = message.data[0], message.data[1:]
            if channel not in seen:  # the first message of each channel is the port
                seen.add(channel)
                data = data[2:]
            if channel in (0, 1) and data:
                yield (DATA if channel == 0 else ERROR), data


class WebSocketTransport(Transport):
    """The WebSocket flavour of the CRI streaming protocols, as ``crictl --transport websocket`` speaks it."""

    name = "websocket"

    @contextlib.asynccontextmanager
    async def _connect(self, url: str, protocols: Sequence[str]) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
        """One WebSocket at ``url``; aiohttp's errors become TransportError, also those raised while it is used."""
        try:
            async with aiohttp.ClientSession() as http, http.ws_connect(url, protocols=protocols,
                                                                        max_msg_size=0) as ws:
                yield ws
        except aiohttp.WSServerHandshakeError as exc:
            raise TransportError(f"streaming server refused the session: {exc.status} {exc.message}") from None
        except aiohttp.ClientError as exc:
            raise TransportError(f"cannot reach the streaming server: {exc}") from None

    @contextlib.asynccontextmanager
    async def session(self, url: str, *, stdin: bool, tty: bool) -> AsyncIterator[Session]:
        async with self._connect(url, PROTOCOLS) as ws:
            yield WebSocketSession(ws)

    @contextlib.asynccontextmanager
    async def tunnel(self, url: str, port: int) -> AsyncIterator[Tunnel]:
        async with self._connect(f"{url}?port={port}", ("v4.channel.k8s.io",)) as ws:
            yield WebSocketTunnel(ws)
