"""SPDY/3.1 wire format: frame headers, control frame payloads and zlib-compressed header blocks.

Pure encoding and decoding with no I/O, shared by the server session (crirt.streaming.spdy), crirt ctl's client
(crirt.ctl.spdy_client) and their tests.
Layouts follow the SPDY/3 draft; 3.1 only adds connection-level WINDOW_UPDATE on stream 0.
"""

from __future__ import annotations

import enum
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

VERSION = 3
HEADER_SIZE = 8
MAX_STREAM_ID = 0x7FFFFFFF
MAX_WINDOW = 0x7FFFFFFF
DEFAULT_WINDOW = 64 * 1024
MAX_FRAME_LENGTH = 0xFFFFFF

FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02


class FrameType(enum.IntEnum):
    """Control frame types (the 16-bit type field)."""

    SYN_STREAM = 1
    SYN_REPLY = 2
    RST_STREAM = 3
    SETTINGS = 4
    PING = 6
    GOAWAY = 7
    HEADERS = 8
    WINDOW_UPDATE = 9


class RstStatus(enum.IntEnum):
    """RST_STREAM status codes."""

    PROTOCOL_ERROR = 1
    INVALID_STREAM = 2
    REFUSED_STREAM = 3
    UNSUPPORTED_VERSION = 4
    CANCEL = 5
    INTERNAL_ERROR = 6
    FLOW_CONTROL_ERROR = 7
    STREAM_IN_USE = 8
    STREAM_ALREADY_CLOSED = 9
    FRAME_TOO_LARGE = 11


class GoawayStatus(enum.IntEnum):
    """GOAWAY status codes."""

    OK = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2


class Setting(enum.IntEnum):
    """SETTINGS ids (24 bits; the top byte of the id word carries per-entry flags)."""

    UPLOAD_BANDWIDTH = 1
    DOWNLOAD_BANDWIDTH = 2
    ROUND_TRIP_TIME = 3
    MAX_CONCURRENT_STREAMS = 4
    CURRENT_CWND = 5
    DOWNLOAD_RETRANS_RATE = 6
    INITIAL_WINDOW_SIZE = 7
    CLIENT_CERTIFICATE_VECTOR_SIZE = 8


class FrameError(ValueError):
    """A frame's payload does not have the layout its type requires."""


class HeaderBlockError(ValueError):
    """A decompressed header block is malformed (bad counts, lengths, names)."""


class HeaderBlockTooLarge(ValueError):
    """A header block decompresses to more than the allowed size (the zlib context is still in step)."""


def _dictionary() -> bytes:
    """The SPDY/3 header compression dictionary: length-prefixed common words, then a run of raw text."""
    words = (
        "options", "head", "post", "put", "delete", "trace", "accept", "accept-charset", "accept-encoding",
        "accept-language", "accept-ranges", "age", "allow", "authorization", "cache-control", "connection",
        "content-base", "content-encoding", "content-language", "content-length", "content-location", "content-md5",
        "content-range", "content-type", "date", "etag", "expect", "expires", "from", "host", "if-match",
        "if-modified-since", "if-none-match", "if-range", "if-unmodified-since", "last-modified", "location",
        "max-forwards", "pragma", "proxy-authenticate", "proxy-authorization", "range", "referer", "retry-after",
        "server", "te", "trailer", "transfer-encoding", "upgrade", "user-agent", "vary", "via", "warning",
        "www-authenticate", "method", "get", "status", "200 OK", "version", "HTTP/1.1", "url", "public", "set-cookie",
        "keep-alive", "origin",
    )
    tail = (
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
        "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized"
        "403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable"
        "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT"
        "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,"
        "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
    )
    return b"".join(struct.pack(">I", len(w)) + w.encode() for w in words) + tail.encode()


DICTIONARY = _dictionary()


@dataclass(frozen=True, slots=True)
class FrameHeader:
    """The 8-byte frame header: a control frame (version, type) or a DATA frame (stream_id)."""

    control: bool
    version: int
    type: int
    stream_id: int
    flags: int
    length: int


def parse_header(raw: bytes) -> FrameHeader:
    """Decode the 8 bytes that start every frame."""
    first, second = struct.unpack(">II", raw)
    flags, length = second >> 24, second & 0xFFFFFF
    if first & 0x80000000:
        return FrameHeader(True, (first >> 16) & 0x7FFF, first & 0xFFFF, 0, flags, length)
    return FrameHeader(False, 0, 0, first & 0x7FFFFFFF, flags, length)


def encode_control(frame_type: int, flags: int, payload: bytes, version: int = VERSION) -> bytes:
    """A control frame: C bit, version, type, flags, 24-bit length, payload."""
    return struct.pack(">HHI", 0x8000 | version, frame_type, (flags << 24) | len(payload)) + payload


def encode_data(stream_id: int, data: bytes | memoryview, fin: bool = False) -> bytes:
    """A DATA frame for one stream."""
    header = struct.pack(">II", stream_id & MAX_STREAM_ID, (FLAG_FIN if fin else 0) << 24 | len(data))
    return b"".join((header, data))  # one copy of the payload


def encode_syn_stream(stream_id: int, block: bytes, *, fin: bool = False, priority: int = 0) -> bytes:
    """SYN_STREAM: a client opening a stream (crirt ctl's SPDY client, and tests of the server)."""
    payload = struct.pack(">IIBB", stream_id, 0, (priority & 7) << 5, 0) + block
    return encode_control(FrameType.SYN_STREAM, FLAG_FIN if fin else 0, payload)


def encode_syn_reply(stream_id: int, block: bytes, *, fin: bool = False) -> bytes:
    """SYN_REPLY: the server's answer opening its half of a stream."""
    return encode_control(FrameType.SYN_REPLY, FLAG_FIN if fin else 0, struct.pack(">I", stream_id) + block)


def encode_rst_stream(stream_id: int, status: int) -> bytes:
    """RST_STREAM: abnormal end of one stream."""
    return encode_control(FrameType.RST_STREAM, 0, struct.pack(">II", stream_id, status))


def encode_settings(settings: Mapping[int, int]) -> bytes:
    """SETTINGS with no per-entry flags."""
    entries = b"".join(struct.pack(">II", key & 0xFFFFFF, value) for key, value in settings.items())
    return encode_control(FrameType.SETTINGS, 0, struct.pack(">I", len(settings)) + entries)


def encode_ping(ping_id: int) -> bytes:
    """PING with a 32-bit id (odd from clients, even from servers)."""
    return encode_control(FrameType.PING, 0, struct.pack(">I", ping_id))


def encode_goaway(last_stream_id: int, status: int) -> bytes:
    """GOAWAY: no new streams; last_stream_id is the highest peer stream the sender accepted."""
    return encode_control(FrameType.GOAWAY, 0, struct.pack(">II", last_stream_id, status))


def encode_window_update(stream_id: int, delta: int) -> bytes:
    """WINDOW_UPDATE for a stream, or for the whole connection with stream_id 0 (SPDY/3.1)."""
    return encode_control(FrameType.WINDOW_UPDATE, 0, struct.pack(">II", stream_id, delta))


def _fixed(payload: bytes, size: int, what: str) -> tuple[int, int]:
    """Two 32-bit words of a fixed-size control payload."""
    if len(payload) != size:
        raise FrameError(f"{what} payload is {len(payload)} bytes, expected {size}")
    return struct.unpack(">II", payload) if size == 8 else (struct.unpack(">I", payload)[0], 0)


@dataclass(frozen=True, slots=True)
class SynStream:
    """A decoded SYN_STREAM payload (header block still compressed)."""

    stream_id: int
    associated_id: int
    priority: int
    block: bytes


def parse_syn_stream(payload: bytes) -> SynStream:
    """Decode a SYN_STREAM payload."""
    if len(payload) < 10:
        raise FrameError(f"SYN_STREAM payload is {len(payload)} bytes, needs at least 10")
    stream_id, associated, pri = struct.unpack_from(">IIB", payload)
    return SynStream(stream_id & MAX_STREAM_ID, associated & MAX_STREAM_ID, pri >> 5, payload[10:])


def parse_stream_block(payload: bytes, what: str) -> tuple[int, bytes]:
    """Decode SYN_REPLY or HEADERS: stream id and compressed header block."""
    if len(payload) < 4:
        raise FrameError(f"{what} payload is {len(payload)} bytes, needs at least 4")
    return struct.unpack_from(">I", payload)[0] & MAX_STREAM_ID, payload[4:]


def parse_rst_stream(payload: bytes) -> tuple[int, int]:
    """Decode RST_STREAM: (stream_id, status)."""
    stream_id, status = _fixed(payload, 8, "RST_STREAM")
    return stream_id & MAX_STREAM_ID, status


def parse_settings(payload: bytes) -> dict[int, int]:
    """Decode SETTINGS into {id: value}; entry flags are dropped (nothing is persisted)."""
    if len(payload) < 4:
        raise FrameError(f"SETTINGS payload is {len(payload)} bytes, needs at least 4")
    (count,) = struct.unpack_from(">I", payload)
    if len(payload) != 4 + 8 * count:
        raise FrameError(f"SETTINGS says {count} entries but carries {len(payload) - 4} bytes of them")
    entries = struct.unpack_from(f">{2 * count}I", payload, 4)
    return {entries[i] & 0xFFFFFF: entries[i + 1] for i in range(0, len(entries), 2)}


def parse_ping(payload: bytes) -> int:
    """Decode PING: its 32-bit id."""
    return _fixed(payload, 4, "PING")[0]


def parse_goaway(payload: bytes) -> tuple[int, int]:
    """Decode GOAWAY: (last_good_stream_id, status)."""
    last, status = _fixed(payload, 8, "GOAWAY")
    return last & MAX_STREAM_ID, status


def parse_window_update(payload: bytes) -> tuple[int, int]:
    """Decode WINDOW_UPDATE: (stream_id, delta), both 31 bits."""
    stream_id, delta = _fixed(payload, 8, "WINDOW_UPDATE")
    return stream_id & MAX_STREAM_ID, delta & MAX_WINDOW


def encode_header_block(headers: Mapping[str, str]) -> bytes:
    """The uncompressed name/value block: count, then length-prefixed lower-case names and values."""
    parts = [struct.pack(">I", len(headers))]
    for name, value in headers.items():
        raw_name, raw_value = name.lower().encode(), value.encode()
        parts += [struct.pack(">I", len(raw_name)), raw_name, struct.pack(">I", len(raw_value)), raw_value]
    return b"".join(parts)


def decode_header_block(raw: bytes) -> dict[str, str]:
    """Parse an uncompressed header block; NUL-separated multiple values are joined with ", "."""
    if len(raw) < 4:
        raise HeaderBlockError("header block shorter than its pair count")
    (count,) = struct.unpack_from(">I", raw)
    if count > len(raw) // 8:
        raise HeaderBlockError(f"header block claims {count} pairs in {len(raw)} bytes")
    headers: dict[str, str] = {}
    offset = 4
    for _ in range(count):
        fields = []
        for _part in ("name", "value"):
            if offset + 4 > len(raw):
                raise HeaderBlockError("header block ends inside a length")
            (size,) = struct.unpack_from(">I", raw, offset)
            offset += 4
            if offset + size > len(raw):
                raise HeaderBlockError("header block ends inside a name or value")
            fields.append(raw[offset : offset + size])
            offset += size
        try:
            name, value = fields[0].decode(), fields[1].decode()
        except UnicodeDecodeError as exc:
            raise HeaderBlockError("header name or value is not UTF-8") from exc
        name = name.lower()
        if not name:
            raise HeaderBlockError("empty header name")
        if name in headers:
            raise HeaderBlockError(f"header {name!r} appears twice")
        headers[name] = ", ".join(value.split("\0"))
    if offset != len(raw):
        raise HeaderBlockError(f"{len(raw) - offset} bytes after the last header pair")
    return headers


class HeaderCompressor:
    """One direction's zlib context: every block is sync-flushed into the shared stream."""

    def __init__(self) -> None:
        self._zlib = zlib.compressobj(zdict=DICTIONARY)

    def compress(self, headers: Mapping[str, str]) -> bytes:
        """Compressed header block for the next header-bearing frame (call in wire order)."""
        return self._zlib.compress(encode_header_block(headers)) + self._zlib.flush(zlib.Z_SYNC_FLUSH)


class HeaderDecompressor:
    """The peer's zlib context; blocks must be fed in wire order, each at most max_size bytes once inflated."""

    _DRAIN_STEP = 64 * 1024

    def __init__(self, max_size: int) -> None:
        self._zlib = zlib.decompressobj(zdict=DICTIONARY)
        self._max_size = max_size

    def decompress(self, block: bytes) -> bytes:
        """Inflate one block; zlib.error means the shared context is broken (a session error)."""
        out = self._zlib.decompress(block, self._max_size + 1)
        if len(out) <= self._max_size:
            return out
        while True:  # keep the context in step with the peer, discarding the output
            more = self._zlib.decompress(self._zlib.unconsumed_tail, self._DRAIN_STEP)
            if not more and not self._zlib.unconsumed_tail:
                break
        raise HeaderBlockTooLarge(f"header block inflates past {self._max_size} bytes")

    def headers(self, block: bytes) -> dict[str, str]:
        """Inflate and parse one header block."""
        return decode_header_block(self.decompress(block))
