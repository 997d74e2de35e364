"""The gRPC front end: one generic grpclib handler per CRI RPC.

Each call: read the request under the size limit, check its wire bytes, decode, convert to the pydantic
command, dispatch it on the bus, encode the result under the size limit. Every failure becomes a gRPC
status with a message that names the RPC and the problem; nothing raised by a handler takes the daemon
down. While draining, new calls get UNAVAILABLE and in-flight ones are given time to finish.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpclib.const
import grpclib.server
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from pydantic import ValidationError

from crirt import __version__, errors, logs
from crirt.api.codec import Encoded
from crirt.api.convert import describe_validation_error, to_command
from crirt.api.protoenc import encode
from crirt.api.rpcs import Rpc, cri_rpcs
from crirt.api.wire import WireError, check_message
from crirt.bus import Bus
from crirt.commands import ALL_COMMANDS
from crirt.commands.base import Result
from crirt.metrics.instruments import RpcMetrics

log = logging.getLogger(__name__)

STATUS_OF: dict[type[errors.CrirtError], Status] = {
    errors.InvalidArgument: Status.INVALID_ARGUMENT,
    errors.NotFound: Status.NOT_FOUND,
    errors.AlreadyExists: Status.ALREADY_EXISTS,
    errors.FailedPrecondition: Status.FAILED_PRECONDITION,
    errors.ResourceExhausted: Status.RESOURCE_EXHAUSTED,
    errors.Unimplemented: Status.UNIMPLEMENTED,
    errors.Unavailable: Status.UNAVAILABLE,
    errors.DeadlineExceeded: Status.DEADLINE_EXCEEDED,
}



def _status_of(exc: errors.CrirtError) -> Status:
    """The status of the nearest mapped class in the error's ancestry (subclasses inherit their base's code)."""
    for cls in type(exc).__mro__:
        if cls in STATUS_OF:
            return STATUS_OF[cls]
    return Status.UNKNOWN


ResponseEncoder = Callable[[Result], bytes]
"""Turns a handler's result into the response's wire bytes (hot RPCs use cached encodings)."""


@dataclass(frozen=True)
class Limits:
    max_recv: int
    max_send: int


@dataclass
class Frontend:
    """grpclib handlers (``__mapping__``) for all CRI RPCs, backed by the bus."""

    bus: Bus
    limits: Limits
    encoders: Mapping[str, ResponseEncoder] = field(default_factory=dict)
    rpcs: RpcMetrics = field(default_factory=RpcMetrics)
    """Where every call's method, gRPC code and duration go."""
    draining: bool = False
    _in_flight: int = 0
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._idle.set()

    def services(self) -> list[CriService]:
        """One grpclib servicer per CRI service (RuntimeService, ImageService)."""
        return [CriService(self, name) for name in dict.fromkeys(rpc.service for rpc in cri_rpcs())]

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def drain(self, grace: float) -> bool:
        """Refuse new calls and wait up to ``grace`` seconds for unary calls in flight; True if all ended."""
        self.draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), grace)
        except TimeoutError:
            return False
        return True

    def handler(self, rpc: Rpc) -> Callable[[grpclib.server.Stream[Any, Any]], Any]:
        command_type = ALL_COMMANDS[rpc.name]
        encode = self.encoders.get(rpc.name) or _generic_encoder(rpc.response_type)

        async def handle(stream: grpclib.server.Stream[Any, Any]) -> None:
            if self.draining:
                raise GRPCError(Status.UNAVAILABLE, f"{rpc.name}: crirt is shutting down")
            logs.start_request(rpc.name)  # grpclib runs each call in a task of its own: the context is the call's
            tracked = not rpc.streaming  # long-lived streams are ended at shutdown, not waited for
            start = time.perf_counter()
            code = Status.OK
            if tracked:
                self._in_flight += 1
                self._idle.clear()
            try:
                command = await self._read_command(stream, rpc, command_type)
                logs.bind(**logs.ids_of(command))
                if not self.bus.handles(command_type):
                    raise GRPCError(Status.UNIMPLEMENTED, f"{rpc.name} is not implemented by crirt {__version__}")
                if rpc.streaming:
                    async for result in self.bus.stream(command):
                        await stream.send_message(self._encode(rpc, encode, result))
                else:
                    result = await self.bus.dispatch(command)
                    await stream.send_message(self._encode(rpc, encode, result))
            except GRPCError as exc:
                code = exc.status
                raise
            except errors.CrirtError as exc:
                code = _status_of(exc)
                raise GRPCError(code, f"{rpc.name}: {exc}") from exc
            except (asyncio.CancelledError, grpclib.exceptions.StreamTerminatedError):
                code = Status.CANCELLED
                raise
            except Exception as exc:
                code = Status.INTERNAL
                log.exception("%s: handler crashed", rpc.name)
                raise GRPCError(Status.INTERNAL, f"{rpc.name}: internal error: {type(exc).__name__}: {exc}") from exc
            finally:
                self.rpcs.observe(rpc.name, code.name, time.perf_counter() - start)
                if tracked:
                    self._in_flight -= 1
                    if not self._in_flight:
                        self._idle.set()

        handle.__name__ = f"handle_{rpc.name}"
        return handle

    async def _read_command(self, stream: grpclib.server.Stream[Any, Any], rpc: Rpc, command_type: type) -> Any:
        data = await _read_message(stream, rpc.name, self.limits.max_recv)
        try:
            check_message(data, rpc.request_type)
            message = rpc.request_type.FromString(data)
        except WireError as exc:
            raise GRPCError(Status.INVALID_ARGUMENT,
                            f"{rpc.name}: malformed {rpc.request_type.__name__}: {exc}") from None
        except Exception as exc:  # the decoder's own complaints about bytes the wire check let through
            raise GRPCError(Status.INVALID_ARGUMENT,
                            f"{rpc.name}: cannot decode {rpc.request_type.__name__}: {exc}") from exc
        try:
            return to_command(message, command_type)
        except ValidationError as exc:
            raise GRPCError(Status.INVALID_ARGUMENT,
                            f"{rpc.name}: invalid request: {describe_validation_error(exc)}") from None

    def _encode(self, rpc: Rpc, encode: ResponseEncoder, result: Result) -> Encoded:
        body = encode(result)
        if len(body) > self.limits.max_send:
            hint = _STREAMING_ALTERNATIVE.get(rpc.name)
            advice = f"; use {hint}, which sends the items in batches" if hint else "; narrow the request"
            raise GRPCError(Status.RESOURCE_EXHAUSTED,
                            f"{rpc.name}: response of {len(body)} bytes exceeds the {self.limits.max_send}-byte "
                            f"message limit{advice}")
        return Encoded(body)


@dataclass(frozen=True, eq=False)
class CriService:
    """The grpclib view of one CRI service; its handlers belong to the shared front end."""

    frontend: Frontend
    service: str

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        shape = {True: grpclib.const.Cardinality.UNARY_STREAM, False: grpclib.const.Cardinality.UNARY_UNARY}
        return {
            rpc.path: grpclib.const.Handler(self.frontend.handler(rpc), shape[rpc.streaming],
                                            rpc.request_type, rpc.response_type)
            for rpc in cri_rpcs()
            if rpc.service == self.service
        }


_STREAMING_ALTERNATIVE = {
    "ListPodSandbox": "StreamPodSandboxes",
    "ListContainers": "StreamContainers",
    "ListContainerStats": "StreamContainerStats",
    "ListPodSandboxStats": "StreamPodSandboxStats",
    "ListPodSandboxMetrics": "StreamPodSandboxMetrics",
    "ListImages": "StreamImages",
}


def _generic_encoder(response_type: type) -> ResponseEncoder:
    def encode_response(result: Result) -> bytes:
        return encode(result, response_type)

    return encode_response


async def _read_message(stream: grpclib.server.Stream[Any, Any], rpc_name: str, limit: int) -> bytes:
    """Read one length-prefixed request message, refusing an oversized one before buffering it.

    grpclib's own reader has no size limit, so this reads the prefix from the HTTP/2 stream itself
    (grpclib is pinned; tests cover this path)."""
    h2_stream = stream._stream
    prefix = await h2_stream.recv_data(5)
    if len(prefix) < 5:
        raise GRPCError(Status.INVALID_ARGUMENT, f"{rpc_name}: the request carries no message")
    compressed, length = struct.unpack(">?I", prefix)
    if compressed:
        raise GRPCError(Status.UNIMPLEMENTED, f"{rpc_name}: compressed messages are not supported")
    if length > limit:
        raise GRPCError(Status.RESOURCE_EXHAUSTED,
                        f"{rpc_name}: request message of {length} bytes exceeds the {limit}-byte limit")
    data = await h2_stream.recv_data(length)
    if len(data) != length:
        raise GRPCError(Status.INVALID_ARGUMENT,
                        f"{rpc_name}: request message truncated ({len(data)} of {length} bytes)")
    return data
