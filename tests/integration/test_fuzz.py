"""Fuzz every CRI RPC of one real crirt daemon with malformed request bytes.

Requests go through grpcio's generic calls with identity serialization, so the daemon receives exactly
the bytes under test: random byte strings, mutations of a valid request, and a hand-picked list of
nasty encodings. Every call must end with a deliberate status (never UNKNOWN, INTERNAL, UNAVAILABLE
or DEADLINE_EXCEEDED), an INVALID_ARGUMENT must name the RPC, and the daemon must stay up.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import given, settings
from hypothesis import strategies as st
from support.cri_requests import all_rpcs, filled
from support.daemon import Daemon, start_daemon

Rpc = tuple[str, str, bool, type, type]

ACCEPTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.OUT_OF_RANGE,
}
FUZZ = settings(max_examples=75, deadline=None, derandomize=True, database=None)


@pytest.fixture(scope="module")
def fuzz_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon shared by the whole module; it must exit cleanly on SIGTERM at the end."""
    # The default handler's plugin does not exist, so no mutated request can ever create a real sandbox.
    daemon = start_daemon(tmp_path_factory.mktemp("fuzz") / "d",
                          'default_runtime = "fuzz"\n[runtimes.fuzz]\nshim = "no-such-plugin"\n')
    try:
        yield daemon
    finally:
        assert daemon.stop() == 0, daemon.log_text()


@pytest.fixture(scope="module")
def channel(fuzz_daemon: Daemon) -> Iterator[grpc.Channel]:
    with fuzz_daemon.channel() as channel:
        yield channel


@pytest.fixture(scope="module")
def rpcs(pb: ModuleType) -> list[Rpc]:
    rpcs = all_rpcs(pb)
    assert len(rpcs) == 41
    return rpcs


OPEN_ENDED = {"GetContainerEvents"}
"""Streams that stay open until the client leaves: their short deadline passing means the request was accepted."""


def call(channel: grpc.Channel, rpc: Rpc, body: bytes) -> tuple[grpc.StatusCode, str]:
    """Send ``body`` as the request of ``rpc`` (consuming a stream's replies); return (code, details)."""
    path, name, streaming, _, _ = rpc
    open_ended = name in OPEN_ENDED
    try:
        if streaming:
            for _ in channel.unary_stream(path, request_serializer=None, response_deserializer=None)(
                    body, timeout=0.2 if open_ended else 10):
                pass
        else:
            channel.unary_unary(path, request_serializer=None, response_deserializer=None)(body, timeout=10)
    except grpc.RpcError as exc:
        if open_ended and exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            return grpc.StatusCode.OK, ""
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def check(channel: grpc.Channel, daemon: Daemon, rpc: Rpc, body: bytes) -> grpc.StatusCode:
    """Send ``body`` and assert the answer is deliberate and the daemon survived; return the code."""
    name = rpc[1]
    code, details = call(channel, rpc, body)
    context = f"{name} with body {body!r}: {code} {details!r}"
    assert code in ACCEPTED, f"{context}\n--- daemon log ---\n{daemon.log_text()[-4000:]}"
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        assert details.startswith(name), context
    assert daemon.proc.poll() is None, f"daemon died after {context}\n{daemon.log_text()[-4000:]}"
    return code


@st.composite
def mutated(draw: st.DrawFn, valid: bytes) -> bytes:
    """``valid`` after one to four byte flips, truncations, insertions or duplicated slices."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(("flip", "truncate", "insert", "duplicate")))
        at = draw(st.integers(0, len(data)))
        if kind == "flip" and data:
            data[min(at, len(data) - 1)] ^= draw(st.integers(1, 255))
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "duplicate":
            data[at:at] = data[at : draw(st.integers(at, len(data)))]
    return bytes(data)


@FUZZ
@given(body=st.binary(max_size=512))
def test_random_bytes_to_every_rpc(fuzz_daemon: Daemon, channel: grpc.Channel, rpcs: list[Rpc],
                                   body: bytes) -> None:
    for rpc in rpcs:
        check(channel, fuzz_daemon, rpc, body)


@FUZZ
@given(data=st.data())
def test_mutated_valid_requests_to_every_rpc(fuzz_daemon: Daemon, channel: grpc.Channel, rpcs: list[Rpc],
                                             data: st.DataObject) -> None:
    for rpc in rpcs:
        body = data.draw(mutated(filled(rpc[3]).SerializeToString()), label=rpc[1])
        check(channel, fuzz_daemon, rpc, body)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _string_field_path(descriptor: Descriptor, depth: int = 0) -> list[int] | None:
    """Field numbers leading from ``descriptor`` to its first string field, through nested messages."""
    for field in descriptor.fields:
        if field.type == FieldDescriptor.TYPE_STRING:
            return [field.number]
    for field in descriptor.fields:
        if field.type == FieldDescriptor.TYPE_MESSAGE and not field.message_type.GetOptions().map_entry \
                and depth < 4:
            inner = _string_field_path(field.message_type, depth + 1)
            if inner is not None:
                return [field.number, *inner]
    return None


def _invalid_utf8(descriptor: Descriptor) -> dict[str, bytes]:
    """A request whose first (possibly nested) string field holds invalid UTF-8; none if it has no string."""
    path = _string_field_path(descriptor)
    if path is None:
        return {}
    body = b"ok\xff\xfe\xc3("
    for number in reversed(path):
        body = _len_field(number, body)
    return {"invalid UTF-8 in a string field": body}


def _deeply_nested(levels: int) -> bytes:
    """Field 1 holding field 1 holding ... ``levels`` length-delimited fields deep."""
    body = b""
    for _ in range(levels):
        body = _len_field(1, body)
    return body


MALFORMED = {
    "zero byte (field number 0)": b"\x00",
    "truncated varint": b"\x08\xff",
    "length past the end": b"\x0a\x09ab",
    "huge length": b"\x0a\xff\xff\xff\xff\x0f",
    "start group (wire type 3)": b"\x0b\x0c",
    "lone end group (wire type 4)": b"\x0c",
    "wire types 6 and 7": b"\x0e\x0f",
    "field 0, wire type 2": b"\x02\x00",
    "11-byte varint value": b"\x08" + b"\xff" * 10 + b"\x01",
    "10-byte varint over 64 bits": b"\x08" + b"\xff" * 9 + b"\x7f",
    "11-byte tag": b"\x88" + b"\x80" * 9 + b"\x01\x00",
    "truncated fixed64": b"\x09\x01\x02",
    "truncated fixed32": b"\x0d\x01",
}


def test_nasty_bodies_to_every_rpc(fuzz_daemon: Daemon, channel: grpc.Channel, rpcs: list[Rpc]) -> None:
    """Bytes that are no valid encoding get INVALID_ARGUMENT; the others (empty, deep) a deliberate status."""
    for rpc in rpcs:
        request_cls = rpc[3]
        valid = filled(request_cls).SerializeToString()
        must_reject = {**MALFORMED, **_invalid_utf8(request_cls.DESCRIPTOR),
                       "valid body then garbage": valid + b"\xff\xff\xff"}
        for label, body in must_reject.items():
            code = check(channel, fuzz_daemon, rpc, body)
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (rpc[1], label, body, code)
        for body in (b"", valid, _deeply_nested(100), _deeply_nested(100) + b"\x00"):
            check(channel, fuzz_daemon, rpc, body)
