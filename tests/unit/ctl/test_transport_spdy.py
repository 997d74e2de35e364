"""crirt ctl's SPDY client against an in-test peer built on crirt's server-side SPDY session.

The peer checks what kubectl and crictl send (tests/integration/streaming runs the client against the real
daemon): a POST upgrade offering v4, streams opened in client-go's order with odd ids and ``streamtype`` headers,
stdin's half-close, resize JSON, the port-forward stream pair. It answers the way containerd does (SYN_REPLY
without headers is also fine) and the client must turn that into output, a status, or a clear error.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from crirt.ctl.transport import DATA, ERROR, STDERR, STDOUT, TransportError
from crirt.ctl.transport_spdy import SpdyTransport
from crirt.streaming.spdy import SpdySession, SpdyStream

pytestmark = pytest.mark.anyio
Handler = Callable[[dict[str, str], SpdySession], Awaitable[None]]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def serve(handler: Handler, answer: bytes | None = None) -> tuple[asyncio.Server, list[str]]:
    """A one-connection-at-a-time server: parse the upgrade head, answer 101 (or ``answer``), run ``handler``."""
    heads: list[str] = []

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        heads.append(head)
        lines = head.split("\r\n")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.lower()] = ", ".join(filter(None, (headers.get(name.lower()), value.strip())))
        headers["request-line"] = lines[0]
        if answer is not None:
            writer.write(answer)
            writer.close()
            return
        chosen = headers["x-stream-protocol-version"].split(", ")[0]
        writer.write(f"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
                     f"X-Stream-Protocol-Version: {chosen}\r\n\r\n".encode())
        async with SpdySession(reader, writer) as session:
            await handler(headers, session)

    server = await asyncio.start_server(connection, "127.0.0.1", 0)
    return server, heads


def url(server: asyncio.Server, path: str) -> str:
    return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/{path}"


async def streams(session: SpdySession, count: int) -> list[SpdyStream]:
    """The first ``count`` streams the client opens, each answered."""
    opened = []
    for _ in range(count):
        stream = await asyncio.wait_for(session.accept(), 5)
        assert stream is not None
        await stream.reply()
        opened.append(stream)
    return opened


async def read_all(stream: SpdyStream) -> bytes:
    data = b""
    while chunk := await asyncio.wait_for(stream.read(), 5):
        data += chunk
    return data


async def collect(output: AsyncIterator[tuple[int, bytes]]) -> dict[int, bytes]:
    seen: dict[int, bytes] = {}
    async for channel, data in output:
        seen[channel] = seen.get(channel, b"") + data
    return seen


async def test_exec_streams_like_crictl() -> None:
    seen: dict[str, object] = {}

    async def handler(headers: dict[str, str], session: SpdySession) -> None:
        seen["headers"] = headers
        error, stdin, stdout, stderr = await streams(session, 4)
        seen["streams"] = [(s.stream_id, s.headers["streamtype"]) for s in (error, stdin, stdout, stderr)]
        seen["stdin"] = await read_all(stdin)  # ends at the client's half-close
        await stdout.write(b"x" * 3_000_000)  # past our advertised window: the client must return window
        await stdout.close()
        await stderr.write(b"oops")
        await stderr.close()
        await error.write(json.dumps({"status": "Failure", "reason": "NonZeroExitCode",
                                      "details": {"causes": [{"reason": "ExitCode", "message": "7"}]}}).encode())
        await error.close()

    server, _ = await serve(handler)
    async with server, SpdyTransport().session(url(server, "exec/t"), stdin=True, tty=False) as session:
        await session.send_stdin(b"in" * 100_000)
        await session.close_stdin()
        output = await asyncio.wait_for(collect(session.output()), 10)
    assert output == {STDOUT: b"x" * 3_000_000, STDERR: b"oops", ERROR: output[ERROR]}
    assert json.loads(output[ERROR])["details"]["causes"][0]["message"] == "7"
    headers = seen["headers"]
    assert isinstance(headers, dict)
    assert headers["request-line"] == "POST /exec/t HTTP/1.1"
    assert (headers["connection"], headers["upgrade"]) == ("Upgrade", "SPDY/3.1")
    assert headers["x-stream-protocol-version"] == "v4.channel.k8s.io"
    assert seen["streams"] == [(1, "error"), (3, "stdin"), (5, "stdout"), (7, "stderr")]
    assert seen["stdin"] == b"in" * 100_000


async def test_a_terminal_gets_a_resize_stream_and_attach_output_may_stay_open() -> None:
    seen: dict[str, object] = {}

    async def handler(headers: dict[str, str], session: SpdySession) -> None:
        error, stdout, resize = await streams(session, 3)
        seen["types"] = [s.headers["streamtype"] for s in (error, stdout, resize)]
        seen["resize"] = json.loads(await asyncio.wait_for(resize.read(), 5))
        await stdout.write(b"$ ")
        await error.write(b'{"metadata":{},"status":"Success"}')
        await error.close()  # stdout is never closed: the session's end closes it, as crirt's attach does

    server, _ = await serve(handler)
    async with server, SpdyTransport().session(url(server, "attach/t"), stdin=False, tty=True) as session:
        await session.resize(100, 33)
        output = await asyncio.wait_for(collect(session.output()), 10)
    assert seen == {"types": ["error", "stdout", "resize"], "resize": {"Width": 100, "Height": 33}}
    assert output == {STDOUT: b"$ ", ERROR: b'{"metadata":{},"status":"Success"}'}


async def test_a_connection_lost_before_the_status_is_an_error() -> None:
    async def handler(headers: dict[str, str], session: SpdySession) -> None:
        await streams(session, 3)

    server, _ = await serve(handler)
    async with server, SpdyTransport().session(url(server, "exec/t"), stdin=False, tty=False) as session:
        with pytest.raises(TransportError, match="closed the connection before the session ended"):
            await asyncio.wait_for(collect(session.output()), 10)


async def test_port_forward_pairs_an_error_and_a_data_stream() -> None:
    seen: dict[str, object] = {}

    async def handler(headers: dict[str, str], session: SpdySession) -> None:
        seen["protocol"] = headers["x-stream-protocol-version"]
        error, data = await streams(session, 2)
        seen["headers"] = [error.headers, data.headers]
        seen["error half-closed"] = await asyncio.wait_for(error.read(), 5) == b""
        seen["sent"] = await read_all(data)
        await data.write(b"pong")
        await data.close()
        await error.write(b"and a complaint")
        await error.close()

    server, _ = await serve(handler)
    async with server, SpdyTransport().tunnel(url(server, "portforward/t"), 8080) as tunnel:
        await tunnel.send(b"ping")
        await tunnel.close_send()
        received = await asyncio.wait_for(collect(tunnel.received()), 10)
    assert received == {DATA: b"pong", ERROR: b"and a complaint"}
    assert seen["protocol"] == "portforward.k8s.io" and seen["sent"] == b"ping" and seen["error half-closed"]
    assert seen["headers"] == [{"streamtype": "error", "port": "8080", "requestid": "0"},
                               {"streamtype": "data", "port": "8080", "requestid": "0"}]


async def test_refusals_name_the_status_and_the_reason() -> None:
    async def unused(headers: dict[str, str], session: SpdySession) -> None:
        raise AssertionError("no session expected")

    body = b"unable to upgrade: unable to negotiate protocol"
    answer = b"HTTP/1.1 403 Forbidden\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    server, _ = await serve(unused, answer)
    port = server.sockets[0].getsockname()[1]
    async with server:
        with pytest.raises(TransportError, match="refused the session: 403 unable to upgrade"):
            async with SpdyTransport().session(url(server, "exec/t"), stdin=False, tty=False):
                pass
    with pytest.raises(TransportError, match="cannot reach the streaming server"):
        async with SpdyTransport().session(f"http://127.0.0.1:{port}/exec/t", stdin=False, tty=False):
            pass
    with pytest.raises(TransportError, match="not an http"):
        async with SpdyTransport().session("unix:///x", stdin=False, tty=False):
            pass
