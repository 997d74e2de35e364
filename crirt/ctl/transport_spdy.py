"""SPDY/3.1 transport for ``crirt ctl`` (``--transport spdy``, the default, as with crictl and kubectl).

Exec/attach (``v4.channel.k8s.io``): the client opens one stream per channel, named by its ``streamtype`` header,
in client-go's order: ``error``, ``stdin``, ``stdout``, then ``stderr`` or, with a tty, ``resize``. Stdin's
half-close is EOF; the server half-closes stdout/stderr at the end and writes the v4 status on ``error``.
Port-forward (``portforward.k8s.io``): one connection per URL, carrying an ``error`` stream (half-closed at once:
only the server writes on it) and a ``data`` stream, both with the ``port`` and ``requestid`` headers.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator

from crirt.ctl.spdy_client import SpdyClient, connect
from crirt.ctl.transport import DATA, ERROR, RESIZE, STDERR, STDIN, STDOUT, Session, Transport, TransportError, Tunnel

EXEC_PROTOCOL = "v4.channel.k8s.io"
PORT_FORWARD_PROTOCOL = "portforward.k8s.io"
STREAM_TYPES = {ERROR: "error", STDIN: "stdin", STDOUT: "stdout", STDERR: "stderr", RESIZE: "resize"}


async def _until_ended(client: SpdyClient, channels: dict[int, int], error: int) -> AsyncIterator[tuple[int, bytes]]:
    """(channel, bytes) received on the streams ``channels`` maps ({stream id: channel}), until all of them ended
    or, once the ``error`` stream ended, the connection did (an attach's output streams are never closed).

    Raises TransportError if the connection ends before the error stream: the server broke off the session.
    """
    pending = set(channels)
    async with contextlib.aclosing(client.frames()) as frames:
        async for frame in frames:
            channel = channels.get(frame.stream_id)
            if channel is None:
                continue
            if frame.data:
                yield channel, frame.data
            if frame.ended:
                pending.discard(frame.stream_id)
                if not pending:
                    return
    if error in pending:
        raise TransportError("the streaming server closed the connection before the session ended")


class SpdySession(Session):
    """An exec/attach session: one SPDY stream per channel."""

    def __init__(self, client: SpdyClient, streams: dict[int, int]) -> None:
        self._client = client
        self._streams = streams  # channel -> stream id

    async def send_stdin(self, data: bytes) -> None:
        await self._client.send(self._streams[STDIN], data)

    async def close_stdin(self) -> None:
        await self._client.send(self._streams[STDIN], b"", fin=True)

    async def resize(self, width: int, height: int) -> None:
        await self._client.send(self._streams[RESIZE], json.dumps({"Width": width, "Height": height}).encode())

    def output(self) -> AsyncIterator[tuple[int, bytes]]:
        incoming = {stream_id: channel for channel, stream_id in self._streams.items()
                    if channel in (STDOUT, STDERR, ERROR)}
        return _until_ended(self._client, incoming, self._streams[ERROR])


class SpdyTunnel(Tunnel):
    """One forwarded connection: a data stream and the error stream beside it."""

    def __init__(self, client: SpdyClient, data: int, error: int) -> None:
        self._client = client
        self._data = data
        self._error = error

    async def send(self, data: bytes) -> None:
        await self._client.send(self._data, data)

    async def close_send(self) -> None:
        await self._client.send(self._data, b"", fin=True)

    def received(self) -> AsyncIterator[tuple[int, bytes]]:
        return _until_ended(self._client, {self._data: DATA, self._error: ERROR}, self._error)


class SpdyTransport(Transport):
    """The SPDY/3.1 flavour of the CRI streaming protocols, as the kubelet, kubectl and crictl speak it."""

    name = "spdy"

    @contextlib.asynccontextmanager
    async def session(self, url: str, *, stdin: bool, tty: bool) -> AsyncIterator[Session]:
        client = await connect(url, (EXEC_PROTOCOL,))
        try:
            channels = [ERROR, *([STDIN] if stdin else []), STDOUT, RESIZE if tty else STDERR]
            yield SpdySession(client, {c: client.open_stream({"streamType": STREAM_TYPES[c]}) for c in channels})
        finally:
            await client.close()

    @contextlib.asynccontextmanager
    async def tunnel(self, url: str, port: int) -> AsyncIterator[Tunnel]:
        client = await connect(url, (PORT_FORWARD_PROTOCOL,))
        try:
            headers = {"port": str(port), "requestID": "0"}
            error = client.open_stream({"streamType": "error", **headers})
            await client.send(error, b"", fin=True)
            yield SpdyTunnel(client, client.open_stream({"streamType": "data", **headers}), error)
        finally:
            await client.close()
