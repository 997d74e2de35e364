"""A ttrpc client on asyncio: the RPC protocol containerd's shims serve on a unix socket.

ttrpc (``shared/ttrpc/PROTOCOL.md``) is gRPC without HTTP/2: every message is a frame with a 10-byte header
(data length and stream id as big-endian uint32, message type and flags as one byte each) and at most 4 MiB
of data. A unary call is one Request frame (a ``ttrpc.Request``: service, method, encoded argument, deadline)
on a new odd stream id, answered by one Response frame (a ``ttrpc.Response``: a ``google.rpc.Status`` or the
encoded result) on the same id. Calls are multiplexed on one connection: any number may be in flight, the
answers come back in any order. A failed status becomes the matching crirt error; a lost connection fails
every pending call with ``ConnectionLost``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import struct
from collections.abc import Callable
from typing import TypeVar

import betterproto2

from crirt._gen.ttrpc import Request, Response
from crirt.errors import (
    AlreadyExists,
    CrirtError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
    Unimplemented,
)

log = logging.getLogger(__name__)

HEADER = struct.Struct(">IIBB")
"""Data length, stream id, message type, flags."""
MAX_DATA = 4 << 20
"""The largest frame body the protocol allows."""
TYPE_REQUEST = 0x01
TYPE_RESPONSE = 0x02
TYPE_DATA = 0x03

M = TypeVar("M", bound=betterproto2.Message)


class TtrpcError(CrirtError):
    """A call failed with a status that none of crirt's mapped error kinds describes (answered UNKNOWN)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class ConnectionLost(Unavailable):
    """The connection to the ttrpc server is gone (the shim exited or closed it)."""


class ProtocolError(CrirtError):
    """The server sent something that is not valid ttrpc."""


_ERRORS: dict[int, type[CrirtError]] = {
    3: InvalidArgument,
    4: DeadlineExceeded,
    5: NotFound,
    6: AlreadyExists,
    9: FailedPrecondition,
    12: Unimplemented,
    14: Unavailable,
}
"""google.rpc.Code values that have a crirt error of their own."""


def status_error(what: str, code: int, message: str) -> CrirtError:
    """The crirt error for a non-OK status returned by ``what`` (``service/method``)."""
    text = f"{what}: {message or f'status code {code}'}"
    kind = _ERRORS.get(code)
    return kind(text) if kind is not None else TtrpcError(text, code)


def encode_frame(stream_id: int, kind: int, data: bytes, flags: int = 0) -> bytes:
    """One frame: the header followed by ``data``."""
    if len(data) > MAX_DATA:
        raise InvalidArgument(f"ttrpc message of {len(data)} bytes is over the {MAX_DATA} byte limit")
    return HEADER.pack(len(data), stream_id, kind, flags) + data


def socket_path(address: str) -> str:
    """The socket path of a shim address: ``unix:///path`` or a bare path; a leading ``@`` (or ``\\0``) is an
    abstract socket (older shims)."""
    path = address.removeprefix("unix://")
    if path.startswith("@"):
        path = "\0" + path[1:]
    if not path or not (path.startswith("/") or path.startswith("\0")):
        raise InvalidArgument(f"ttrpc address {address!r} is not a unix socket address")
    return path


class TtrpcClient:
    """One connection to a ttrpc server, shared by concurrent calls."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, name: str) -> None:
        self.name = name
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1, 2)
        self._pending: dict[int, asyncio.Future[Response]] = {}
        self._lost: ConnectionLost | None = None
        self._read_task = asyncio.get_running_loop().create_task(self._read_loop())

    @classmethod
    async def connect(cls, address: str, within: float = 10.0) -> TtrpcClient:
        """Connect to ``address`` within ``within`` seconds; ConnectionLost if nothing listens there."""
        path = socket_path(address)
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path, limit=MAX_DATA + 64), within)
        except (OSError, TimeoutError) as exc:
            raise ConnectionLost(f"cannot connect to ttrpc server {address}: {exc or type(exc).__name__}") from None
        return cls(reader, writer, address)

    @classmethod
    async def from_socket(cls, sock: socket.socket, name: str) -> TtrpcClient:
        """A client on an already connected socket (tests use a socketpair)."""
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_DATA + 64)
        return cls(reader, writer, name)

    @property
    def closed(self) -> bool:
        return self._lost is not None

    async def call(self, service: str, method: str, request: betterproto2.Message, response_type: type[M],
                   deadline: float | None = None) -> M:
        """Call ``service/method`` and return its decoded answer. Past ``deadline`` seconds the call fails with
        DeadlineExceeded (the server is told the deadline too); a non-OK status raises the matching error."""
        what = f"{service}/{method}"
        if self._lost is not None:
            raise ConnectionLost(f"{what}: {self._lost}")
        stream_id = next(self._ids)
        body = bytes(Request(service=service, method=method, payload=bytes(request),
                             timeout_nano=int(deadline * 1e9) if deadline else 0))
        frame = encode_frame(stream_id, TYPE_REQUEST, body)
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._pending[stream_id] = future
        try:
            self._writer.write(frame)
            await self._writer.drain()
            response = await asyncio.wait_for(future, deadline)
        except TimeoutError:
            raise DeadlineExceeded(f"{what} did not answer within {deadline:g}s") from None
        except (ConnectionError, OSError) as exc:
            self._fail_all(f"ttrpc connection to {self.name} lost: {exc}")
            raise ConnectionLost(f"{what}: {self._lost}") from None
        finally:
            self._pending.pop(stream_id, None)
        status = response.status
        if status is not None and status.code != 0:
            raise status_error(what, status.code, status.message)
        try:
            return response_type.parse(response.payload)
        except Exception as exc:
            raise ProtocolError(f"{what}: undecodable {response_type.__name__}: {exc}") from None

    async def _read_loop(self) -> None:
        """Read frames until the connection ends; hand each response to its caller."""
        why = "closed by the server"
        try:
            while True:
                header = await self._reader.readexactly(HEADER.size)
                length, stream_id, kind, _flags = HEADER.unpack(header)
                if length > MAX_DATA:
                    why = f"the server sent a {length} byte frame, over the {MAX_DATA} byte limit"
                    return
                data = await self._reader.readexactly(length)
                if kind != TYPE_RESPONSE:
                    log.debug("ttrpc %s: ignoring frame type %d on stream %d", self.name, kind, stream_id)
                    continue
                future = self._pending.get(stream_id)
                if future is None or future.done():
                    continue  # the caller gave up (deadline or cancellation)
                try:
                    future.set_result(Response.parse(data))
                except Exception as exc:
                    future.set_exception(ProtocolError(f"ttrpc {self.name}: undecodable response: {exc}"))
        except asyncio.IncompleteReadError:
            pass
        except (ConnectionError, OSError) as exc:
            why = str(exc)
        finally:
            self._fail_all(f"ttrpc connection to {self.name} lost: {why}")
            self._writer.close()

    def _fail_all(self, why: str) -> None:
        if self._lost is None:
            self._lost = ConnectionLost(why)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionLost(why))
        self._pending.clear()

    async def close(self) -> None:
        """Close the connection; pending calls fail with ConnectionLost."""
        self._fail_all(f"ttrpc connection to {self.name} closed")
        self._read_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._read_task
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()


class AckServer:
    """A ttrpc server that hands every request to ``on_request`` and answers it with an empty OK response.

    Shims publish their events (task created, started, exited, OOM, ...) to the ttrpc server named by
    ``TTRPC_ADDRESS`` and retry each one for many seconds when nobody listens there, which also delays their
    shutdown. crirt serves this there: it learns exits through the task API's Wait and reads only the events
    it needs (the driver's ``on_request``); every request is acknowledged."""

    def __init__(self, address: str, on_request: Callable[[Request], None] | None = None) -> None:
        self.address = address
        self.on_request = on_request
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @classmethod
    async def start(cls, address: str, on_request: Callable[[Request], None] | None = None) -> AckServer:
        """Listen on ``address`` (see ``socket_path``; an abstract name needs no cleanup)."""
        self = cls(address, on_request)
        self._server = await asyncio.start_unix_server(self._serve, socket_path(address))
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                length, stream_id, kind, _flags = HEADER.unpack(await reader.readexactly(HEADER.size))
                if length > MAX_DATA:
                    return
                data = await reader.readexactly(length)
                if kind == TYPE_REQUEST:
                    self._deliver(data)
                    writer.write(encode_frame(stream_id, TYPE_RESPONSE, b""))
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    def _deliver(self, data: bytes) -> None:
        if self.on_request is None:
            return
        try:
            self.on_request(Request.parse(data))
        except Exception:  # a bad event must not end the connection
            log.exception("ttrpc server %s: handling a request failed", self.address)

    async def close(self) -> None:
        """Stop listening and drop every connection (the shims reconnect to the next crirt)."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        if self._server is not None:
            await self._server.wait_closed()
