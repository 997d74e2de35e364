"""Client end of a SPDY/3.1 connection for ``crirt ctl``: the HTTP/1.1 upgrade, opening streams, reading frames.

Frames are built and parsed by crirt.streaming.spdy_frames, the codec crirt's server uses. The client opens every
stream itself (odd ids), and one task reads all frames (``frames()``), so the consumer's pace is what reads the
socket and TCP pushes back on a fast server. Flow control, as kubectl's and crictl's spdystream see it: we return
receive window as we consume, so a server that enforces windows keeps sending; our own sends are limited by TCP
alone, since the kubelet and containerd never return window to a client.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import urllib.parse
import zlib
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import NamedTuple

import h11

from crirt.ctl.transport import TransportError
from crirt.streaming.spdy_frames import (
    DEFAULT_WINDOW,
    FLAG_FIN,
    HEADER_SIZE,
    VERSION,
    FrameError,
    FrameType,
    HeaderBlockError,
    HeaderBlockTooLarge,
    HeaderCompressor,
    HeaderDecompressor,
    RstStatus,
    Setting,
    encode_data,
    encode_ping,
    encode_rst_stream,
    encode_settings,
    encode_syn_stream,
    encode_window_update,
    parse_header,
    parse_ping,
    parse_rst_stream,
    parse_stream_block,
    parse_syn_stream,
)

CONNECT_TIMEOUT = 30.0  # seconds for TCP, TLS and the upgrade answer
MAX_HEADER_BLOCK = 64 * 1024
MAX_REFUSAL_BODY = 4096
RECEIVE_WINDOW = 1024 * 1024  # per stream, advertised in SETTINGS
SESSION_WINDOW = 16 * 1024 * 1024  # for the whole connection
DATA_CHUNK = 64 * 1024  # largest DATA payload we send


class Frame(NamedTuple):
    """What a stream received: a payload (maybe empty), and whether the stream ended (FIN or RST_STREAM)."""

    stream_id: int
    data: bytes
    ended: bool


class SpdyClient:
    """An upgraded connection: open streams, send on them, and read what comes back with ``frames()``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, protocol: str) -> None:
        self.protocol = protocol  # the X-Stream-Protocol-Version the server chose
        self._reader = reader
        self._writer = writer
        self._compressor = HeaderCompressor()
        self._decompressor = HeaderDecompressor(MAX_HEADER_BLOCK)
        self._next_id = 1
        self._unacked: dict[int, int] = {}  # bytes consumed per stream and not yet returned with WINDOW_UPDATE
        self._session_unacked = 0
        writer.write(encode_settings({Setting.INITIAL_WINDOW_SIZE: RECEIVE_WINDOW}))
        writer.write(encode_window_update(0, SESSION_WINDOW - DEFAULT_WINDOW))

    def open_stream(self, headers: Mapping[str, str]) -> int:
        """Send SYN_STREAM with ``headers``; the new stream's id. Header blocks go out in compression order."""
        stream_id = self._next_id
        self._next_id += 2
        self._writer.write(encode_syn_stream(stream_id, self._compressor.compress(headers)))
        return stream_id

    async def send(self, stream_id: int, data: bytes, *, fin: bool = False) -> None:
        """DATA frames on a stream we opened (``fin``: then half-close it); waits for the socket to take them."""
        view = memoryview(data)
        while True:
            chunk, view = view[:DATA_CHUNK], view[DATA_CHUNK:]
            self._writer.write(encode_data(stream_id, chunk, fin=fin and not view))
            if not view:
                break
        try:
            await self._writer.drain()
        except OSError as exc:
            raise TransportError(f"lost the streaming server: {exc}") from None

    async def frames(self) -> AsyncIterator[Frame]:
        """Every stream event in wire order, until GOAWAY or the end of the connection."""
        while True:
            try:
                header = parse_header(await self._reader.readexactly(HEADER_SIZE))
                payload = await self._reader.readexactly(header.length)
            except (asyncio.IncompleteReadError, OSError):
                return
            if not header.control:
                yield Frame(header.stream_id, payload, bool(header.flags & FLAG_FIN))
                await self._consumed(header.stream_id, len(payload), bool(header.flags & FLAG_FIN))
                continue
            if header.version != VERSION:
                raise TransportError(f"streaming server speaks SPDY version {header.version}, not {VERSION}")
            try:
                match header.type:
                    case FrameType.SYN_REPLY | FrameType.HEADERS:
                        stream_id, block = parse_stream_block(payload, FrameType(header.type).name)
                        self._headers(block)  # keeps the zlib context in step; their content is of no use
                        if header.flags & FLAG_FIN:
                            yield Frame(stream_id, b"", True)
                    case FrameType.RST_STREAM:
                        stream_id = parse_rst_stream(payload)[0]
                        self._unacked.pop(stream_id, None)
                        yield Frame(stream_id, b"", True)
                    case FrameType.SYN_STREAM:  # a server-opened stream: nothing here would read it
                        syn = parse_syn_stream(payload)
                        self._headers(syn.block)
                        self._writer.write(encode_rst_stream(syn.stream_id, RstStatus.REFUSED_STREAM))
                    case FrameType.PING:  # we send none, so every PING is the server's: echo it
                        self._writer.write(encode_ping(parse_ping(payload)))
                    case FrameType.GOAWAY:
                        return
            except FrameError as exc:
                raise TransportError(f"streaming server sent a bad SPDY frame: {exc}") from None

    def _headers(self, block: bytes) -> None:
        """Inflate a header block; a broken one ends the connection (the shared zlib context is lost)."""
        try:
            self._decompressor.headers(block)
        except (zlib.error, HeaderBlockError, HeaderBlockTooLarge) as exc:
            raise TransportError(f"streaming server sent a bad SPDY header block: {exc}") from None

    async def _consumed(self, stream_id: int, size: int, ended: bool) -> None:
        """Return receive window for data the caller has taken, in batches of half a window."""
        self._session_unacked += size
        if self._session_unacked >= SESSION_WINDOW // 2:
            self._writer.write(encode_window_update(0, self._session_unacked))
            self._session_unacked = 0
        unacked = self._unacked.pop(stream_id, 0) + size
        if ended:
            return
        if unacked >= RECEIVE_WINDOW // 2:
            self._writer.write(encode_window_update(stream_id, unacked))
        else:
            self._unacked[stream_id] = unacked
        with contextlib.suppress(OSError):
            await self._writer.drain()

    async def close(self) -> None:
        """Close the connection (the server has nothing more for us, or we gave up)."""
        self._writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(self._writer.wait_closed(), 2.0)


def _request(parts: urllib.parse.SplitResult, protocols: Sequence[str]) -> h11.Request:
    """The upgrade request kubectl and crictl send: POST to the URL's path, one header per offered version."""
    headers = [("Host", parts.netloc), ("User-Agent", "crirt-ctl"), ("Content-Length", "0"),
               ("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")]
    headers += [("X-Stream-Protocol-Version", protocol) for protocol in protocols]
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    return h11.Request(method="POST", target=target or "/", headers=headers)


async def _refusal(reader: asyncio.StreamReader, http: h11.Connection, response: h11.Response) -> TransportError:
    """A non-101 answer as an error naming the status and the server's explanation (its body)."""
    body = b""
    with contextlib.suppress(h11.RemoteProtocolError, OSError, TimeoutError):
        while len(body) < MAX_REFUSAL_BODY:
            event = http.next_event()
            if event is h11.NEED_DATA:
                http.receive_data(await asyncio.wait_for(reader.read(MAX_REFUSAL_BODY), 5.0))
            elif isinstance(event, h11.Data):
                body += event.data
            else:
                break
    explanation = body.decode(errors="replace").strip() or response.reason.decode(errors="replace")
    return TransportError(f"streaming server refused the session: {response.status_code} {explanation}")


async def _switch(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, parts: urllib.parse.SplitResult,
                  protocols: Sequence[str]) -> SpdyClient:
    """Send the upgrade request and read the answer; a SpdyClient once the server switched to SPDY/3.1."""
    http = h11.Connection(h11.CLIENT)
    writer.write((http.send(_request(parts, protocols)) or b"") + (http.send(h11.EndOfMessage()) or b""))
    http.receive_data(await reader.readuntil(b"\r\n\r\n"))  # the head only: SPDY frames stay in the reader
    response = http.next_event()
    if isinstance(response, h11.Response):
        raise await _refusal(reader, http, response)
    if not isinstance(response, h11.InformationalResponse) or response.status_code != 101:
        raise TransportError(f"streaming server answered the upgrade with {response!r}")
    chosen = next((value.decode(errors="replace") for name, value in response.headers
                   if name == b"x-stream-protocol-version"), "")
    if chosen not in protocols:
        raise TransportError(f"streaming server chose protocol {chosen or '(none)'!r}; crirt ctl offered "
                             f"{', '.join(protocols)}")
    return SpdyClient(reader, writer, chosen)


async def _upgrade(url: str, protocols: Sequence[str]) -> SpdyClient:
    """Connect to ``url`` and switch the connection to SPDY/3.1 offering ``protocols``."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TransportError(f"streaming URL {url!r} is not an http(s) URL")
    tls = ssl.create_default_context() if parts.scheme == "https" else None
    try:
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port or (443 if tls else 80), ssl=tls)
    except OSError as exc:
        raise TransportError(f"cannot reach the streaming server: {exc}") from None
    switched = False
    try:
        client = await _switch(reader, writer, parts, protocols)
        switched = True
        return client
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError) as exc:
        raise TransportError(f"streaming server broke off the upgrade: {exc}") from None
    except h11.RemoteProtocolError as exc:
        raise TransportError(f"streaming server sent a malformed answer: {exc}") from None
    finally:
        if not switched:
            writer.close()


async def connect(url: str, protocols: Sequence[str]) -> SpdyClient:
    """An upgraded SPDY connection to ``url``, within CONNECT_TIMEOUT seconds."""
    try:
        return await asyncio.wait_for(_upgrade(url, protocols), CONNECT_TIMEOUT)
    except TimeoutError:
        raise TransportError(f"streaming server did not answer within {CONNECT_TIMEOUT:.0f} s") from None
