"""The streaming server on a loopback port with an in-test target: tokens, upgrades, WebSocket channels.

The real targets (containers, pods) and independent clients are in tests/integration/streaming; here the
target is a small echo process so the HTTP and channel handling can be checked on their own."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import struct
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from support import registry
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage

from crirt.config import StreamingConfig
from crirt.errors import FailedPrecondition
from crirt.shim.contract import ProcessIO
from crirt.streaming.requests import AttachRequest, ExecRequest, PortForwardRequest
from crirt.streaming.server import StreamingServer

pytestmark = pytest.mark.anyio
V5, V4 = "v5.channel.k8s.io", "v4.channel.k8s.io"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class EchoTarget(ProcessIO):
    """Echoes stdin to stdout; at stdin EOF says "bye" on stderr and exits with 3."""

    def __init__(self) -> None:
        self.output: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()
        self.exited = asyncio.Event()
        self.sizes: list[tuple[int, int]] = []
        self.closed = False

    async def write_stdin(self, data: bytes) -> None:
        await self.output.put((1, data))

    async def close_stdin(self) -> None:
        await self.output.put((2, b"bye"))
        await self.output.put((0, b""))
        self.exited.set()

    async def read_output(self) -> tuple[int, bytes]:
        return await self.output.get()

    async def resize(self, width: int, height: int) -> None:
        self.sizes.append((width, height))

    async def wait(self) -> int:
        await self.exited.wait()
        return 3

    async def close(self) -> None:
        self.closed = True


class Backend:
    def __init__(self) -> None:
        self.targets: list[EchoTarget] = []
        self.refuse = False

    async def open_target(self, request: ExecRequest | AttachRequest) -> ProcessIO:
        if self.refuse:
            raise FailedPrecondition(f"container {request.container_id} is not running")
        self.targets.append(EchoTarget())
        return self.targets[-1]

    async def dial(self, sandbox_id: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", port)


@pytest.fixture
async def server() -> AsyncIterator[StreamingServer]:
    server = StreamingServer(StreamingConfig(idle_timeout=5, stream_creation_timeout=2), Backend())
    await server.start()
    yield server
    await server.close()


async def eventually(predicate: Callable[[], bool], seconds: float = 5) -> bool:
    for _ in range(int(seconds / 0.05)):
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return predicate()


def exec_url(server: StreamingServer, stdin: bool = True, tty: bool = False) -> str:
    return server.url(ExecRequest("c1", ("cat",), tty=tty, stdin=stdin, stdout=True, stderr=not tty))


async def raw(server: StreamingServer, head: str) -> tuple[int, str]:
    """Send a request head on a fresh connection; the response's status and body."""
    host, port = server.base_url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(head.encode())
    response = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    status_line, _, rest = response.decode().partition("\r\n")
    return int(status_line.split()[1]), rest.partition("\r\n\r\n")[2]


def spdy_head(url: str, *versions: str, connection: str = "Upgrade") -> str:
    path = url.split("/", 3)[3]
    offers = "".join(f"X-Stream-Protocol-Version: {v}\r\n" for v in versions)
    return f"POST /{path} HTTP/1.1\r\nHost: x\r\nConnection: {connection}\r\nUpgrade: SPDY/3.1\r\n{offers}\r\n"


async def test_v5_exec_echoes_stdin_and_reports_the_exit_code(server: StreamingServer) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(exec_url(server), protocols=(V5, V4)) as ws:
        assert ws.protocol == V5
        assert (await ws.receive_bytes(timeout=5)) == b"\x01"  # the empty "ready" message on stdout
        await ws.send_bytes(b"\x00hello")
        assert (await ws.receive_bytes(timeout=5)) == b"\x01hello"
        await ws.send_bytes(b"\xff\x00")  # v5: close stdin
        assert (await ws.receive_bytes(timeout=5)) == b"\x02bye"
        status = await ws.receive_bytes(timeout=5)
        assert status[0] == 3
        assert json.loads(status[1:])["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]
        closing = await ws.receive(timeout=5)
        assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 1000
    assert server.backend.targets[0].closed  # type: ignore[attr-defined]


async def test_base64_protocol_and_resize(server: StreamingServer) -> None:
    url = exec_url(server, tty=True)
    async with aiohttp.ClientSession() as http, http.ws_connect(url, protocols=("v4.base64.channel.k8s.io",)) as ws:
        assert (await ws.receive_str(timeout=5)) == "1"
        await ws.send_str("4" + base64.b64encode(b'{"Width":100,"Height":33}').decode())
        await ws.send_str("0" + base64.b64encode(b"hi").decode())
        message = await ws.receive_str(timeout=5)
        assert message[0] == "1" and base64.b64decode(message[1:]) == b"hi"
    target = server.backend.targets[0]  # type: ignore[attr-defined]
    assert target.sizes == [(100, 33)]
    assert await eventually(lambda: target.closed), "the client left: the session must close its target"


async def test_a_token_works_once(server: StreamingServer) -> None:
    url = exec_url(server)
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(url, protocols=(V5,)) as ws:
            await ws.receive_bytes(timeout=5)
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await http.ws_connect(url, protocols=(V5,))
        assert caught.value.status == 404


async def test_unknown_subprotocol_is_refused(server: StreamingServer) -> None:
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await http.ws_connect(exec_url(server), protocols=("v9.channel.k8s.io",))
        assert caught.value.status == 403
    assert not server.backend.targets  # type: ignore[attr-defined]


async def test_a_failing_target_ends_with_an_error_status(server: StreamingServer) -> None:
    server.backend.refuse = True  # type: ignore[attr-defined]
    async with aiohttp.ClientSession() as http, http.ws_connect(exec_url(server), protocols=(V4,)) as ws:
        await ws.receive_bytes(timeout=5)
        status = json.loads((await ws.receive_bytes(timeout=5))[1:])
        assert status["status"] == "Failure" and "c1 is not running" in status["message"]


async def test_http_errors(server: StreamingServer) -> None:
    assert (await raw(server, "GET /exec/nope HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n"))[0] == 404
    assert (await raw(server, "GET /other HTTP/1.1\r\nHost: x\r\n\r\n"))[0] == 404
    assert (await raw(server, "this is not http\r\n\r\n"))[0] == 400
    assert (await raw(server, f"DELETE /{exec_url(server).split('/', 3)[3]} HTTP/1.1\r\nHost: x\r\n\r\n"))[0] == 405
    status, body = await raw(server, f"GET /{exec_url(server).split('/', 3)[3]} HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 400 and "unable to upgrade" in body
    status, body = await raw(server, spdy_head(exec_url(server), "v9.channel.k8s.io"))
    assert status == 403 and "unable to negotiate protocol" in body
    status, body = await raw(server, spdy_head(exec_url(server), V4, connection="keep-alive"))
    assert status == 400
    wrong_kind = server.url(AttachRequest("c1", tty=False, stdin=False, stdout=True, stderr=False))
    wrong_kind = wrong_kind.replace("/attach/", "/exec/")
    assert (await raw(server, spdy_head(wrong_kind, V4)))[0] == 404


async def test_an_expired_token_is_404() -> None:
    server = StreamingServer(StreamingConfig(token_ttl=0.2), Backend())
    await server.start()
    try:
        url = exec_url(server)
        await asyncio.sleep(0.3)
        assert (await raw(server, spdy_head(url, V4)))[0] == 404
    finally:
        await server.close()


async def test_an_idle_connection_is_closed() -> None:
    server = StreamingServer(StreamingConfig(idle_timeout=0.5), Backend())
    await server.start()
    try:
        async with aiohttp.ClientSession() as http, http.ws_connect(exec_url(server), protocols=(V5,),
                                                                    autoping=False) as ws:
            await ws.receive_bytes(timeout=5)
            message = await ws.receive(timeout=5)
            assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert await eventually(lambda: server.backend.targets[0].closed)  # type: ignore[attr-defined]
    finally:
        await server.close()


async def test_websocket_port_forward(server: StreamingServer) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.read(100)
        writer.write(b"pong:" + request)
        writer.close()

    echo = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = echo.sockets[0].getsockname()[1]
    url = server.url(PortForwardRequest("pod", ())) + f"?port={port}"
    try:
        async with aiohttp.ClientSession() as http, http.ws_connect(url, protocols=(V4,)) as ws:
            prefix = struct.pack("<H", port)
            assert {await ws.receive_bytes(timeout=5), await ws.receive_bytes(timeout=5)} \
                == {b"\x00" + prefix, b"\x01" + prefix}
            await ws.send_bytes(b"\x00ping")
            assert (await ws.receive_bytes(timeout=5)) == b"\x00pong:ping"
            closing = await ws.receive(timeout=5)
            assert closing.type == aiohttp.WSMsgType.CLOSE
    finally:
        echo.close()
        await echo.wait_closed()


async def closes_within(server: StreamingServer, head: str, seconds: float) -> bytes:
    """Send ``head``, then nothing; everything the server sent before closing (TimeoutError if it never does)."""
    host, port = server.base_url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(head.encode())
    try:
        return await asyncio.wait_for(reader.read(), seconds)
    finally:
        writer.close()


async def test_a_spdy_client_that_opens_no_streams_is_dropped() -> None:
    server = StreamingServer(StreamingConfig(stream_creation_timeout=0.5), Backend())
    await server.start()
    try:
        answer = await closes_within(server, spdy_head(exec_url(server), V4), 5)
        assert answer.startswith(b"HTTP/1.1 101 ") and b"X-Stream-Protocol-Version: v4.channel.k8s.io" in answer
        assert not server.backend.targets  # type: ignore[attr-defined]
        assert (await closes_within(server, "GET /exec/", 5)).startswith(b"HTTP/1.1 408 ")  # head never ends
    finally:
        await server.close()


async def test_closing_the_server_ends_running_sessions(server: StreamingServer) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(exec_url(server), protocols=(V5,)) as ws:
        await ws.receive_bytes(timeout=5)
        await eventually(lambda: bool(server.backend.targets))  # type: ignore[attr-defined]
        await server.close()
        assert (await ws.receive(timeout=5)).type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert server.backend.targets[0].closed  # type: ignore[attr-defined]


async def test_tls(tmp_path: Path) -> None:
    ca = registry.TestCA(tmp_path / "ca")
    cert, key = ca.issue("streaming", server=True)
    server = StreamingServer(StreamingConfig(tls_cert_file=cert, tls_key_file=key), Backend())
    await server.start()
    try:
        url = exec_url(server)
        assert url.startswith("https://127.0.0.1:")
        trusted = ssl.create_default_context(cafile=str(ca.cert_file))
        async with aiohttp.ClientSession() as http, http.ws_connect(url, protocols=(V5,), ssl=trusted) as ws:
            assert (await ws.receive_bytes(timeout=5)) == b"\x01"
            await ws.send_bytes(b"\x00over tls")
            assert (await ws.receive_bytes(timeout=5)) == b"\x01over tls"
    finally:
        await server.close()


async def test_fragmented_messages_pings_and_oversized_text(server: StreamingServer) -> None:
    """Frames a browser-grade client may send: a binary message split over frames (the channel byte alone in
    the first), a ping between them; then a base64 text message past the limit closes with 1009."""
    async def session(url: str, protocol: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, Connection]:
        host, port = server.base_url.removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(f"GET /{url.split('/', 3)[3]} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                     f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     f"Sec-WebSocket-Protocol: {protocol}\r\n\r\n".encode())
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101 ")
        return reader, writer, Connection(ConnectionType.CLIENT)

    async def events(reader: asyncio.StreamReader, conn: Connection, count: int) -> list[object]:
        seen: list[object] = []
        while len(seen) < count:
            conn.receive_data(await asyncio.wait_for(reader.read(65536), 5) or None)
            seen.extend(conn.events())
        return seen

    reader, writer, conn = await session(exec_url(server), V5)
    assert [e.data for e in await events(reader, conn, 1)] == [b"\x01"]  # type: ignore[attr-defined]
    writer.write(conn.send(BytesMessage(b"\x00", message_finished=False)))
    writer.write(conn.send(Ping(b"p")))
    writer.write(conn.send(BytesMessage(b"split ", message_finished=False)))
    writer.write(conn.send(BytesMessage(b"message")))
    seen: list[object] = []
    while b"".join(e.data[1:] for e in seen if isinstance(e, BytesMessage)) != b"split message":
        seen += await events(reader, conn, 1)
    assert any(isinstance(e, Pong) and e.payload == b"p" for e in seen)
    writer.close()

    reader, writer, conn = await session(exec_url(server), "v4.base64.channel.k8s.io")
    await events(reader, conn, 1)
    writer.write(conn.send(TextMessage("0" + "A" * (5 * 1024 * 1024))))
    closing = [e for e in await events(reader, conn, 1) if isinstance(e, CloseConnection)]
    assert closing and closing[0].code == 1009
    writer.close()


async def test_an_idle_spdy_connection_is_closed() -> None:
    server = StreamingServer(StreamingConfig(idle_timeout=0.5, stream_creation_timeout=30), Backend())
    await server.start()
    try:
        started = asyncio.get_running_loop().time()
        answer = await closes_within(server, spdy_head(exec_url(server), V4), 10)
        assert answer.startswith(b"HTTP/1.1 101 ")
        assert asyncio.get_running_loop().time() - started < 5, "closed by the idle timeout, not the creation one"
    finally:
        await server.close()
