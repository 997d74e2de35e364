"""SpdySession as a real server on 127.0.0.1: npm's spdy-transport drives it as an independent SPDY/3.1 client, and a
raw socket sends what no well-behaved client would (garbage, oversized frames, bad header blocks, no reads)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import struct
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from crirt.streaming.spdy import SpdySession, SpdyStream, StreamClosedError
from crirt.streaming.spdy_frames import (
    DICTIONARY,
    FLAG_FIN,
    HEADER_SIZE,
    FrameHeader,
    FrameType,
    GoawayStatus,
    RstStatus,
    Setting,
    encode_control,
    encode_data,
    encode_header_block,
    encode_rst_stream,
    encode_settings,
    encode_syn_stream,
    parse_header,
)

NODE_DIR = Path(__file__).resolve().parents[2] / "support" / "node"
CLIENT = NODE_DIR / "spdy_client.js"
TIMEOUT = 60
WINDOW = 256 * 1024

Handler = Callable[[SpdySession], Awaitable[Any]]


@pytest.fixture(autouse=True, scope="module")
def _node_clients() -> None:
    assert shutil.which("node"), "node is missing (make test installs it)"
    assert (NODE_DIR / "node_modules" / "spdy-transport").is_dir(), "spdy-transport is missing: run `make node`"


def pattern(size: int) -> bytes:
    """The bulk payload spdy_client.js also builds: byte i is i % 251."""
    return (bytes(range(251)) * (size // 251 + 1))[:size]


async def read_all(stream: SpdyStream) -> bytes:
    """Everything the peer sends on a stream until its FIN (or a reset)."""
    chunks = []
    while chunk := await stream.read():
        chunks.append(chunk)
    return b"".join(chunks)


class Server:
    """A TCP listener on 127.0.0.1 running `handler` on a SpdySession per connection; outcomes are queued."""

    def __init__(self, handler: Handler, **limits: int) -> None:
        self._handler = handler
        self._limits = limits
        self._outcomes: asyncio.Queue[tuple[bool, Any]] = asyncio.Queue()
        self.sessions: list[SpdySession] = []
        self.port = 0

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with SpdySession(reader, writer, **self._limits) as session:
                self.sessions.append(session)
                result = await self._handler(session)
            self._outcomes.put_nowait((True, result))
        except Exception as exc:
            self._outcomes.put_nowait((False, exc))

    async def outcome(self) -> Any:
        """The next connection handler's return value; its exception is raised here."""
        ok, value = await asyncio.wait_for(self._outcomes.get(), TIMEOUT)
        if not ok:
            raise value
        return value


class Node:
    """spdy_client.js running one scenario against the server."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc

    @classmethod
    async def start(cls, port: int, scenario: str, *args: object) -> Node:
        proc = await asyncio.create_subprocess_exec(
            "node", str(CLIENT), str(port), scenario, *map(str, args),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        return cls(proc)

    async def line(self) -> dict[str, Any]:
        assert self._proc.stdout is not None
        raw = await asyncio.wait_for(self._proc.stdout.readline(), TIMEOUT)
        assert raw, f"node ended early: {await self._stderr()}"
        return json.loads(raw)

    async def go(self) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.write(b"go\n")
        await self._proc.stdin.drain()

    async def result(self) -> dict[str, Any]:
        """The scenario's final JSON line (progress events are skipped); the client must exit 0."""
        while "event" in (line := await self.line()):
            pass
        code = await asyncio.wait_for(self._proc.wait(), TIMEOUT)
        assert code == 0 and "error" not in line, f"{line} {await self._stderr()}"
        return line

    async def _stderr(self) -> str:
        assert self._proc.stderr is not None
        return (await self._proc.stderr.read()).decode(errors="replace")

    def kill(self) -> None:
        if self._proc.returncode is None:
            self._proc.kill()


async def run_node(server: Server, scenario: str, *args: object) -> tuple[dict[str, Any], Any]:
    """Run one client scenario to the end; (client result, server handler result)."""
    node = await Node.start(server.port, scenario, *args)
    try:
        return await node.result(), await server.outcome()
    finally:
        node.kill()


def run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(main(), TIMEOUT * 2))


# -- spdy-transport as the client


async def echo_stream(stream: SpdyStream, prefix: bytes = b"") -> bytes:
    """Reply, read to the peer's FIN, send prefix + what came, half-close; returns what came."""
    await stream.reply()
    data = await read_all(stream)
    await stream.write(prefix + data)
    await stream.close()
    return data


def test_many_streams_opened_back_to_back() -> None:
    async def handler(session: SpdySession) -> list[tuple[int, str, str]]:
        seen, tasks = [], []
        while (stream := await session.accept()) is not None:
            seen.append((stream.stream_id, stream.headers["streamtype"], stream.headers[":method"]))
            tasks.append(asyncio.create_task(echo_stream(stream, f"echo {stream.headers['streamtype']} ".encode())))
        await asyncio.gather(*tasks)
        return seen

    async def main() -> None:
        async with Server(handler) as server:
            client, seen = await run_node(server, "streams", 20)
        assert seen == [(1 + 2 * i, f"s{i}", "POST") for i in range(20)]
        assert [(r["id"], r["status"], r["body"]) for r in client["results"]] == [
            (1 + 2 * i, 200, f"echo s{i} payload-{i}") for i in range(20)]

    run(main)


def test_upload_past_the_window_is_flow_controlled() -> None:
    size = 8 * 1024 * 1024

    async def handler(session: SpdySession) -> int:
        stream = await session.accept()
        assert stream is not None
        await stream.reply()
        await asyncio.sleep(0.5)  # read nothing yet: the client must stop at the window we advertised
        buffered = stream._buffered
        data = await read_all(stream)
        assert len(data) == size
        await stream.write(hashlib.sha256(data).hexdigest().encode())
        await stream.close()
        assert await session.accept() is None
        return buffered

    async def main() -> None:
        async with Server(handler, initial_window=WINDOW) as server:
            client, buffered = await run_node(server, "upload", size)
        expected = hashlib.sha256(pattern(size)).hexdigest()
        assert client == {"sent": expected, "reply": expected}
        # More than the 64 KiB default (the client took our SETTINGS) but no more than the window we advertised.
        assert 64 * 1024 < buffered <= WINDOW

    run(main)


def test_download_waits_for_the_clients_window() -> None:
    size = 6 * 1024 * 1024
    state: dict[str, Any] = {}

    async def handler(session: SpdySession) -> None:
        stream = await session.accept()
        assert stream is not None
        await stream.reply()
        state["stream"], state["session"] = stream, session
        state["write"] = asyncio.create_task(stream.write(pattern(size)))
        await state["write"]
        await stream.close()
        assert await session.accept() is None

    async def main() -> None:
        async with Server(handler) as server:
            node = await Node.start(server.port, "download", size)
            try:
                assert await node.line() == {"event": "ready"}
                await asyncio.sleep(0.5)
                # The client reads nothing and has a 64 KiB window: the write waits for it, not for the socket.
                assert not state["write"].done()
                assert min(state["stream"]._send_window, state["session"]._send_window) <= 0
                assert state["session"]._writer.transport.get_write_buffer_size() < 256 * 1024
                await node.go()
                client = await node.result()
                await server.outcome()
            finally:
                node.kill()
        assert client["length"] == size
        assert client["sha256"] == client["expected"] == hashlib.sha256(pattern(size)).hexdigest()

    run(main)


def test_echo_in_both_directions_at_once() -> None:
    size = 4 * 1024 * 1024

    async def handler(session: SpdySession) -> int:
        stream = await session.accept()
        assert stream is not None
        await stream.reply()
        total = 0
        while chunk := await stream.read():
            total += len(chunk)
            await stream.write(chunk)
        await stream.close()
        return total

    async def main() -> None:
        async with Server(handler) as server:
            client, total = await run_node(server, "echo", size)
        assert total == client["length"] == size
        assert client["echoed"] == client["sent"] == hashlib.sha256(pattern(size)).hexdigest()

    run(main)


def test_half_close_each_way() -> None:
    async def client_first(stream: SpdyStream) -> bytes:
        return await echo_stream(stream, b"after-fin:")

    async def server_first(stream: SpdyStream) -> bytes:
        await stream.reply()
        await stream.write(b"server-first")
        await stream.close()
        with pytest.raises(StreamClosedError):
            await stream.write(b"too late")
        return await read_all(stream)

    async def handler(session: SpdySession) -> tuple[bytes, bytes]:
        a, b = await session.accept(), await session.accept()
        assert a is not None and b is not None
        assert (a.headers["streamtype"], b.headers["streamtype"]) == ("a", "b")
        return await asyncio.gather(client_first(a), server_first(b))

    async def main() -> None:
        async with Server(handler) as server:
            client, (data_a, data_b) = await run_node(server, "halfclose")
        assert (data_a, data_b) == (b"client-data", b"client-after-server-fin")
        assert client == {"a": "after-fin:client-data", "b": "server-first"}

    run(main)


def test_reset_by_the_peer_and_by_us() -> None:
    async def handler(session: SpdySession) -> None:
        a = await session.accept()
        assert a is not None
        await a.reply()
        assert await a.read() == b"a-data"
        await a.write(b"go-a")
        assert await a.read() == b""  # the client's RST_STREAM
        assert a.reset_status == RstStatus.CANCEL
        with pytest.raises(StreamClosedError):
            await a.write(b"after reset")
        b = await session.accept()
        assert b is not None
        await echo_stream(b)
        c = await session.accept()
        assert c is not None
        await c.reply()
        await c.reset()
        with pytest.raises(StreamClosedError):
            await c.write(b"after our reset")
        assert await session.accept() is None

    async def main() -> None:
        async with Server(handler) as server:
            client, _ = await run_node(server, "rst")
        assert client == {"a_first": "go-a", "b": "b-data", "c_data": "", "c_errors": []}

    run(main)


def test_ping_is_echoed() -> None:
    async def handler(session: SpdySession) -> None:
        assert await session.accept() is None  # the client's GOAWAY after its pings

    async def main() -> None:
        async with Server(handler) as server:
            client, _ = await run_node(server, "ping", 3)
        assert client == {"answered": 3}

    run(main)


def test_goaway_refuses_new_streams_and_lets_open_ones_finish() -> None:
    async def handler(session: SpdySession) -> bytes:
        a = await session.accept()
        assert a is not None
        await a.reply()
        await session.goaway()
        await a.write(b"first")
        data = await read_all(a)
        await a.write(b"echo " + data)
        await a.close()
        assert await session.accept() is None
        return data

    async def main() -> None:
        async with Server(handler) as server:
            client, data = await run_node(server, "goaway")
        assert data == b"a-after-goaway"
        assert client["a_first"] == "first" and client["a_rest"] == "echo a-after-goaway"
        assert "GOAWAY" in client["b_error"]

    run(main)


# -- a raw socket for what a well-behaved client never sends


class Raw:
    """A minimal SPDY/3 client over a plain socket, with its own zlib contexts."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self._deflate = zlib.compressobj(zdict=DICTIONARY)

    @classmethod
    async def connect(cls, port: int) -> Raw:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    def block(self, headers: dict[str, str]) -> bytes:
        return self._deflate.compress(encode_header_block(headers)) + self._deflate.flush(zlib.Z_SYNC_FLUSH)

    def syn(self, stream_id: int, headers: dict[str, str] | None = None, *, fin: bool = False) -> bytes:
        return encode_syn_stream(stream_id, self.block(headers or {"streamtype": f"s{stream_id}"}), fin=fin)

    async def send(self, *frames: bytes) -> None:
        self.writer.write(b"".join(frames))
        await self.writer.drain()

    async def frame(self) -> tuple[FrameHeader, bytes] | None:
        """The next frame, or None at EOF."""
        try:
            header = parse_header(await asyncio.wait_for(self.reader.readexactly(HEADER_SIZE), TIMEOUT))
            return header, await self.reader.readexactly(header.length)
        except asyncio.IncompleteReadError:
            return None

    async def control(self, frame_type: int) -> tuple[int, int] | None:
        """The two words of the next control frame of this type (RST_STREAM, GOAWAY); None at EOF."""
        while (got := await self.frame()) is not None:
            header, payload = got
            if header.control and header.type == frame_type:
                return struct.unpack(">II", payload)
        return None

    async def data(self, stream_id: int, size: int | None = None) -> bytes:
        """The DATA one stream carries until its FIN (or `size` bytes), skipping every other frame."""
        out = bytearray()
        while (got := await self.frame()) is not None:
            header, payload = got
            if not header.control and header.stream_id == stream_id:
                out += payload
                if header.flags & FLAG_FIN or (size is not None and len(out) >= size):
                    return bytes(out)
        raise AssertionError(f"connection ended before stream {stream_id} finished")

    async def eof(self) -> bool:
        """True once the server closed the connection (frames before that are skipped)."""
        while await self.frame() is not None:
            pass
        return True

    def close(self) -> None:
        self.writer.close()


async def accept_all(session: SpdySession) -> list[tuple[int, bytes]]:
    """Echo every stream the peer opens until accept() ends; [(stream_id, data)]."""
    seen = []
    while (stream := await session.accept()) is not None:
        seen.append((stream.stream_id, await echo_stream(stream)))
    return seen


def test_peer_without_flow_control_is_limited_by_tcp_only() -> None:
    # Like Go's spdystream (kubectl, crictl): no SETTINGS, no WINDOW_UPDATE, yet far more than 64 KiB must flow.
    size = 3 * 1024 * 1024

    async def handler(session: SpdySession) -> None:
        stream = await session.accept()
        assert stream is not None
        await stream.write(pattern(size))
        await stream.close()

    async def main() -> None:
        async with Server(handler) as server:
            raw = await Raw.connect(server.port)
            await raw.send(raw.syn(1, fin=True))
            assert await raw.data(1) == pattern(size)
            raw.close()
            await server.outcome()

    run(main)


def test_peer_that_stops_reading_stalls_the_writer_without_buffering() -> None:
    state: dict[str, Any] = {}

    async def handler(session: SpdySession) -> None:
        stream = await session.accept()
        assert stream is not None
        state["session"] = session
        state["write"] = asyncio.create_task(stream.write(pattern(64 * 1024 * 1024)))
        with pytest.raises(StreamClosedError):
            await state["write"]
        await asyncio.wait_for(session.closed.wait(), TIMEOUT)

    async def main() -> None:
        async with Server(handler) as server:
            raw = await Raw.connect(server.port)
            await raw.send(raw.syn(1, fin=True))
            await asyncio.sleep(1.5)  # never read: the kernel buffers fill, then asyncio's
            assert not state["write"].done()
            assert state["session"]._writer.transport.get_write_buffer_size() < 1024 * 1024
            raw.writer.transport.abort()
            await server.outcome()

    run(main)


def test_reset_wakes_a_writer_waiting_for_window() -> None:
    async def handler(session: SpdySession) -> None:
        stream = await session.accept()
        assert stream is not None
        with pytest.raises(StreamClosedError):
            await stream.write(b"x" * 100_000)
        assert stream.reset_status == RstStatus.CANCEL

    async def main() -> None:
        async with Server(handler) as server:
            raw = await Raw.connect(server.port)
            await raw.send(encode_settings({Setting.INITIAL_WINDOW_SIZE: 1000}), raw.syn(1, fin=True))
            assert await raw.data(1, size=1000) == b"x" * 1000  # all the window allows
            await asyncio.sleep(0.3)
            await raw.send(encode_rst_stream(1, RstStatus.CANCEL))
            raw.close()
            await server.outcome()

    run(main)


def test_garbage_ends_only_that_session() -> None:
    async def main() -> None:
        async with Server(accept_all) as server:
            raw = await Raw.connect(server.port)
            await raw.send(b"GET / HTTP/1.1\r\nHost: crirt\r\n\r\n")  # an HTTP request is no SPDY frame
            assert await raw.control(FrameType.GOAWAY) == (0, GoawayStatus.PROTOCOL_ERROR)
            assert await raw.eof()
            assert await server.outcome() == []
            client, seen = await run_node(server, "streams", 2)  # the server goes on
            assert len(client["results"]) == 2 and len(seen) == 2

    run(main)


def test_unknown_control_frames_are_ignored_and_bad_versions_go_away() -> None:
    async def main() -> None:
        async with Server(accept_all) as server:
            raw = await Raw.connect(server.port)
            await raw.send(encode_control(0x63, 0, b"junk"), raw.syn(1), encode_data(1, b"hi", fin=True))
            assert await raw.data(1) == b"hi"
            await raw.send(encode_control(FrameType.PING, 0, struct.pack(">I", 1), version=2))
            assert await raw.control(FrameType.GOAWAY) == (1, GoawayStatus.PROTOCOL_ERROR)
            assert await raw.eof()
            assert await server.outcome() == [(1, b"hi")]

    run(main)


def test_oversized_data_frame_resets_only_its_stream() -> None:
    async def handler(session: SpdySession) -> tuple[int | None, list[tuple[int, bytes]]]:
        first = await session.accept()
        assert first is not None
        assert await first.read() == b""
        return first.reset_status, await accept_all(session)

    async def main() -> None:
        async with Server(handler, max_frame_size=64 * 1024) as server:
            raw = await Raw.connect(server.port)
            await raw.send(raw.syn(1), encode_data(1, b"x" * 100_000))
            assert await raw.control(FrameType.RST_STREAM) == (1, RstStatus.FRAME_TOO_LARGE)
            await raw.send(raw.syn(3), encode_data(3, b"small", fin=True))
            assert await raw.data(3) == b"small"
            raw.close()
            assert await server.outcome() == (RstStatus.FRAME_TOO_LARGE, [(3, b"small")])

    run(main)


def test_bad_header_blocks() -> None:
    async def main() -> None:
        async with Server(accept_all, max_header_block=4096) as server:
            raw = await Raw.connect(server.port)
            # Inflates past the limit: the stream is refused, the zlib contexts stay in step for the next one.
            await raw.send(raw.syn(1, {"streamtype": "x" * 10_000}))
            assert await raw.control(FrameType.RST_STREAM) == (1, RstStatus.FRAME_TOO_LARGE)
            await raw.send(raw.syn(3), encode_data(3, b"three", fin=True))
            assert await raw.data(3) == b"three"
            # Inflates fine but claims five pairs and carries one.
            broken = raw._deflate.compress(struct.pack(">I", 5) + encode_header_block({"a": "b"})[4:])
            broken += raw._deflate.flush(zlib.Z_SYNC_FLUSH)
            await raw.send(encode_syn_stream(5, broken))
            assert await raw.control(FrameType.RST_STREAM) == (5, RstStatus.PROTOCOL_ERROR)
            await raw.send(raw.syn(7), encode_data(7, b"seven", fin=True))
            assert await raw.data(7) == b"seven"
            # Not zlib at all: the shared context is lost, so the whole session goes.
            await raw.send(encode_syn_stream(9, b"\x00garbage-not-deflate"))
            assert await raw.control(FrameType.GOAWAY) == (7, GoawayStatus.PROTOCOL_ERROR)
            assert await raw.eof()
            assert await server.outcome() == [(3, b"three"), (7, b"seven")]

    run(main)


def test_oversized_control_frame_goes_away() -> None:
    async def main() -> None:
        async with Server(accept_all, max_header_block=4096) as server:
            raw = await Raw.connect(server.port)
            await raw.send(encode_syn_stream(1, b"\x00" * 8192))
            assert await raw.control(FrameType.GOAWAY) == (0, GoawayStatus.PROTOCOL_ERROR)
            assert await raw.eof()
            assert await server.outcome() == []

    run(main)


def test_stream_ids_and_concurrency_limit() -> None:
    async def handler(session: SpdySession) -> list[int]:
        accepted = []
        while (stream := await session.accept()) is not None:
            accepted.append(stream.stream_id)
            if stream.stream_id == 1:
                await echo_stream(stream)
        return accepted

    async def main() -> None:
        async with Server(handler, max_concurrent_streams=2) as server:
            raw = await Raw.connect(server.port)
            await raw.send(raw.syn(1), raw.syn(3), raw.syn(5))
            assert await raw.control(FrameType.RST_STREAM) == (5, RstStatus.REFUSED_STREAM)
            await raw.send(encode_data(1, b"one", fin=True))
            assert await raw.data(1) == b"one"  # stream 1 is done: its slot is free again
            await raw.send(raw.syn(7))
            await raw.send(raw.syn(8))  # clients must use odd ids
            assert await raw.control(FrameType.RST_STREAM) == (8, RstStatus.PROTOCOL_ERROR)
            await raw.send(raw.syn(1))  # ids must increase (1 is finished and gone)
            assert await raw.control(FrameType.GOAWAY) == (7, GoawayStatus.PROTOCOL_ERROR)
            assert await raw.eof()
            assert await server.outcome() == [1, 3, 7]

    run(main)


def test_streams_not_yet_accepted_count_toward_the_limit() -> None:
    # Streams the application has not accept()ed yet hold a slot even when the peer already ended them.
    started = asyncio.Event()

    async def handler(session: SpdySession) -> list[int]:
        await started.wait()
        return [stream.stream_id for stream in [await session.accept(), await session.accept()] if stream]

    async def main() -> None:
        async with Server(handler, max_concurrent_streams=2) as server:
            raw = await Raw.connect(server.port)
            await raw.send(raw.syn(1, fin=True), encode_rst_stream(1, RstStatus.CANCEL))
            await raw.send(raw.syn(3, fin=True), encode_rst_stream(3, RstStatus.CANCEL), raw.syn(5, fin=True))
            assert await raw.control(FrameType.RST_STREAM) == (5, RstStatus.REFUSED_STREAM)
            started.set()
            raw.close()
            assert await server.outcome() == [1, 3]

    run(main)


def test_headers_frame_with_fin_ends_the_peer_side() -> None:
    async def main() -> None:
        async with Server(accept_all) as server:
            raw = await Raw.connect(server.port)
            syn = raw.syn(1)  # header blocks must be compressed in wire order
            trailer = encode_control(FrameType.HEADERS, FLAG_FIN, struct.pack(">I", 1) + raw.block({"x": "y"}))
            await raw.send(syn, encode_data(1, b"body"), trailer)
            assert await raw.data(1) == b"body"
            raw.close()
            assert await server.outcome() == [(1, b"body")]

    run(main)
