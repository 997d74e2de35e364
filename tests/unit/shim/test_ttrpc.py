"""The ttrpc client's framing, multiplexing, errors and deadlines, against an in-test server on a socketpair.

The server below is written from PROTOCOL.md independently of the client (struct packing by hand, its own
frame reader). The real proof that the client speaks ttrpc is the shim v2 driver's tests against
containerd-shim-runc-v2."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Awaitable, Callable

import pytest

from crirt._gen.containerd.task.v2 import ConnectRequest, ConnectResponse, StateRequest, StateResponse
from crirt._gen.google.rpc import Status
from crirt._gen.ttrpc import Request, Response
from crirt.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument, NotFound
from crirt.shim.ttrpc import AckServer, ConnectionLost, TtrpcClient, TtrpcError, encode_frame, socket_path

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


Handler = Callable[[int, Request], Awaitable[bytes | None]]
"""Gets (stream id, request); returns a raw frame body to send as the response, or None for no answer."""


class Server:
    """One connection of a ttrpc server: reads request frames and answers through ``handler``."""

    def __init__(self, sock: socket.socket, handler: Handler) -> None:
        self.sock = sock
        self.handler = handler
        self.seen: list[tuple[int, int, int, Request]] = []  # (stream id, type, flags, request)
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        reader, self.writer = await asyncio.open_unix_connection(sock=self.sock)
        tasks = []
        try:
            while True:
                length, stream_id, kind, flags = struct.unpack(">IIBB", await reader.readexactly(10))
                request = Request.parse(await reader.readexactly(length))
                self.seen.append((stream_id, kind, flags, request))
                tasks.append(asyncio.ensure_future(self._answer(stream_id, request)))
        except asyncio.IncompleteReadError:
            pass
        finally:
            for task in tasks:
                task.cancel()

    async def _answer(self, stream_id: int, request: Request) -> None:
        body = await self.handler(stream_id, request)
        if body is not None:
            self.writer.write(struct.pack(">IIBB", len(body), stream_id, 2, 0) + body)

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    def close(self) -> None:
        self.writer.close()


async def connected(handler: Handler) -> tuple[TtrpcClient, Server]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    server = Server(theirs, handler)
    server.task = asyncio.ensure_future(server.run())
    client = await TtrpcClient.from_socket(ours, "test")
    await asyncio.sleep(0)
    return client, server


def ok(message: object) -> bytes:
    return bytes(Response(payload=bytes(message)))


async def test_a_call_is_one_request_frame_and_its_answer() -> None:
    async def handler(_: int, request: Request) -> bytes:
        return ok(ConnectResponse(shim_pid=42, task_pid=len(ConnectRequest.parse(request.payload).id)))

    client, server = await connected(handler)
    answer = await client.call("containerd.task.v2.Task", "Connect", ConnectRequest(id="abc"), ConnectResponse, 5)
    assert (answer.shim_pid, answer.task_pid) == (42, 3)
    (stream_id, kind, flags, request), = server.seen
    assert (stream_id, kind, flags) == (1, 1, 0)
    assert (request.service, request.method) == ("containerd.task.v2.Task", "Connect")
    assert request.timeout_nano == 5_000_000_000
    await client.close()


async def test_concurrent_calls_share_the_connection_and_may_be_answered_out_of_order() -> None:
    async def handler(stream_id: int, request: Request) -> bytes:
        task_id = StateRequest.parse(request.payload).id
        await asyncio.sleep(0.05 if task_id == "slow" else 0)
        return ok(StateResponse(id=task_id, pid=stream_id))

    client, server = await connected(handler)
    ids = ["slow", "a", "b", "c"]
    answers = await asyncio.gather(*(client.call("S", "State", StateRequest(id=i), StateResponse) for i in ids))
    assert [a.id for a in answers] == ids
    assert sorted(a.pid for a in answers) == [1, 3, 5, 7]  # odd client stream ids, each answered on its own
    assert [sid for sid, *_ in server.seen] == [1, 3, 5, 7]
    await client.close()


@pytest.mark.parametrize(("code", "error"), [(5, NotFound), (3, InvalidArgument), (9, FailedPrecondition),
                                             (4, DeadlineExceeded), (2, TtrpcError)])
async def test_a_status_becomes_the_matching_error(code: int, error: type[Exception]) -> None:
    async def handler(_: int, __: Request) -> bytes:
        return bytes(Response(status=Status(code=code, message="container not created: not found")))

    client, _ = await connected(handler)
    with pytest.raises(error, match=r"S/Kill: container not created: not found"):
        await client.call("S", "Kill", StateRequest(id="x"), StateResponse)
    await client.close()


async def test_a_deadline_fails_only_that_call() -> None:
    async def handler(_: int, request: Request) -> bytes | None:
        return None if StateRequest.parse(request.payload).id == "hang" else ok(StateResponse(id="fine"))

    client, _ = await connected(handler)
    with pytest.raises(DeadlineExceeded, match=r"did not answer within 0\.1s"):
        await client.call("S", "Wait", StateRequest(id="hang"), StateResponse, 0.1)
    answer = await client.call("S", "State", StateRequest(id="ok"), StateResponse, 5)
    assert answer.id == "fine" and not client.closed
    await client.close()


async def test_a_lost_connection_fails_every_pending_call_and_later_ones() -> None:
    started = asyncio.Event()

    async def handler(_: int, __: Request) -> None:
        started.set()
        return None

    client, server = await connected(handler)
    pending = [asyncio.ensure_future(client.call("S", "Wait", StateRequest(id=str(i)), StateResponse))
               for i in range(3)]
    await started.wait()
    server.close()
    for call in pending:
        with pytest.raises(ConnectionLost, match="closed by the server"):
            await call
    assert client.closed
    with pytest.raises(ConnectionLost):
        await client.call("S", "State", StateRequest(id="late"), StateResponse)
    await client.close()


async def test_an_oversized_frame_ends_the_connection() -> None:
    client, server = await connected(lambda _, __: asyncio.sleep(10, None))
    call = asyncio.ensure_future(client.call("S", "State", StateRequest(id="x"), StateResponse))
    await asyncio.sleep(0.05)
    server.send_raw(struct.pack(">IIBB", (4 << 20) + 1, 1, 2, 0))
    with pytest.raises(ConnectionLost, match="over the 4194304 byte limit"):
        await call
    await client.close()


async def test_a_response_for_an_abandoned_call_is_ignored() -> None:
    release = asyncio.Event()

    async def handler(_: int, request: Request) -> bytes:
        if StateRequest.parse(request.payload).id == "late":
            await release.wait()
        return ok(StateResponse(id=StateRequest.parse(request.payload).id))

    client, _ = await connected(handler)
    with pytest.raises(DeadlineExceeded):
        await client.call("S", "State", StateRequest(id="late"), StateResponse, 0.05)
    release.set()
    assert (await client.call("S", "State", StateRequest(id="next"), StateResponse, 5)).id == "next"
    await client.close()


def test_frames_and_addresses() -> None:
    assert encode_frame(3, 1, b"ab") == b"\0\0\0\x02\0\0\0\x03\x01\0ab"
    with pytest.raises(InvalidArgument, match="over the"):
        encode_frame(1, 1, bytes((4 << 20) + 1))
    assert socket_path("unix:///run/containerd/s/abc") == "/run/containerd/s/abc"
    assert socket_path("@name") == "\0name"
    with pytest.raises(InvalidArgument):
        socket_path("tcp://127.0.0.1:1")


async def test_the_ack_server_hands_on_every_request_and_answers_an_empty_ok() -> None:
    address = f"@crirt-test-ack-{id(object())}"
    seen: list[Request] = []

    def on_request(request: Request) -> None:
        if StateRequest.parse(request.payload).id == "bad":
            raise ValueError("a handler failing must not end the connection")
        seen.append(request)

    server = await AckServer.start(address, on_request)
    try:
        client = await TtrpcClient.connect(address)
        ids = ["0", "bad", "2"]
        answers = await asyncio.gather(*(client.call("containerd.services.events.ttrpc.v1.Events", "Forward",
                                                     StateRequest(id=i), ConnectResponse, 5) for i in ids))
        assert answers == [ConnectResponse()] * 3
        assert sorted(StateRequest.parse(r.payload).id for r in seen) == ["0", "2"]
        assert {(r.service, r.method) for r in seen} == {("containerd.services.events.ttrpc.v1.Events", "Forward")}
        await client.close()
    finally:
        await server.close()
