"""Server side of one SPDY/3.1 connection on asyncio streams: peer-opened streams, flow control and limits.

Flow control. We advertise `initial_window` per stream (SETTINGS) and a large connection window (WINDOW_UPDATE on
stream 0), return stream credit as the application reads, and return connection credit as frames arrive (the
per-stream buffers are what bound memory). A peer that overruns a stream's buffer (Go's spdystream, used by
kubectl and crictl, does no flow control at all) is not reset: the session stops reading the socket until the
application catches up, so TCP pushes back. Our send windows are always tracked, but only enforced once the peer
shows it does flow control (it sent SETTINGS or WINDOW_UPDATE, as spdy-transport does before opening streams);
otherwise writes are limited by TCP alone, as the peer expects. Every write waits for the transport to drain, so
a peer that stops reading stalls its writers instead of growing a buffer.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import zlib
from types import TracebackType

from crirt.streaming.spdy_frames import (
    DEFAULT_WINDOW,
    FLAG_FIN,
    FLAG_UNIDIRECTIONAL,
    HEADER_SIZE,
    MAX_WINDOW,
    VERSION,
    FrameError,
    FrameHeader,
    FrameType,
    GoawayStatus,
    HeaderBlockError,
    HeaderBlockTooLarge,
    HeaderCompressor,
    HeaderDecompressor,
    RstStatus,
    Setting,
    encode_data,
    encode_goaway,
    encode_ping,
    encode_rst_stream,
    encode_settings,
    encode_syn_reply,
    encode_window_update,
    parse_goaway,
    parse_header,
    parse_ping,
    parse_rst_stream,
    parse_settings,
    parse_stream_block,
    parse_syn_stream,
    parse_window_update,
)

log = logging.getLogger(__name__)

SESSION_WINDOW = 16 * 1024 * 1024  # connection-level receive window we advertise
DATA_CHUNK = 64 * 1024  # largest DATA payload we send
_DISCARD_STEP = 64 * 1024
_LINGER = 2.0  # seconds to let the peer read our last frames and close first
_CLOSE_TIMEOUT = 2.0  # seconds to flush on close before the transport is aborted
_REPLY_HEADERS = {":status": "200", ":version": "HTTP/1.1"}


class StreamClosedError(ConnectionError):
    """The stream cannot be written: we half-closed it, it was reset, or the connection is gone."""


class _SessionError(Exception):
    """A protocol violation that ends the connection with GOAWAY."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class SpdyStream:
    """One stream the peer opened; read() and write() are each meant for one task at a time."""

    def __init__(self, session: SpdySession, stream_id: int, headers: dict[str, str], *, send_window: int,
                 remote_closed: bool, local_closed: bool) -> None:
        self.stream_id = stream_id
        self.headers = headers
        self._session = session
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._readable = asyncio.Event()  # data, FIN or reset to report
        self._space = asyncio.Event()  # the application read something (or the stream died)
        self._send_window = send_window
        self._unacked = 0  # bytes the application read and we have not yet returned with WINDOW_UPDATE
        self._remote_closed = remote_closed
        self._local_closed = local_closed
        self._replied = local_closed  # a unidirectional stream gets no SYN_REPLY
        self._reset: int | None = None  # RST_STREAM status, once either side reset the stream

    @property
    def reset_status(self) -> int | None:
        """The RST_STREAM status if the stream was reset (CANCEL too when the connection went away)."""
        return self._reset

    # reply(), close() and reset() queue one small frame and do not wait for the transport, so cleanup never
    # hangs on a peer that stopped reading; write() and read() do wait.

    async def reply(self) -> None:
        """Send SYN_REPLY (with ":status: 200", which stock clients require); later calls do nothing."""
        if self._replied or self._reset is not None:
            return
        self._replied = True
        session = self._session
        if not session._closing:  # compress only what is sent: the peer's zlib context must match ours
            session._write(encode_syn_reply(self.stream_id, session._compressor.compress(_REPLY_HEADERS)))

    async def read(self) -> bytes:
        """The next chunk the peer sent; b"" once the peer half-closed (after its data) or the stream was reset."""
        while not self._chunks:
            if self._remote_closed or self._reset is not None:
                return b""
            self._readable.clear()
            await self._readable.wait()
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        self._space.set()
        self._unacked += len(chunk)
        if self._unacked >= self._session.initial_window // 2 and not self._remote_closed and self._reset is None:
            delta, self._unacked = self._unacked, 0
            if self._session._write(encode_window_update(self.stream_id, delta)):
                await self._session._drain_quietly()
        return chunk

    async def write(self, data: bytes) -> None:
        """Send data as DATA frames (replying first if needed), waiting for the peer's windows and the transport.

        Raises StreamClosedError once the stream was reset or half-closed by us, or the connection is gone.
        """
        await self.reply()
        view = memoryview(data)
        self._check_writable()
        session = self._session
        while view:
            size = await session._reserve(self, len(view))
            if not session._write(encode_data(self.stream_id, view[:size])):
                raise StreamClosedError(f"stream {self.stream_id}: the connection is closing")
            view = view[size:]
            try:
                await session._writer.drain()
            except OSError as exc:
                raise StreamClosedError(f"stream {self.stream_id}: connection lost") from exc

    async def close(self) -> None:
        """Half-close our side (empty DATA with FIN); the peer can still send. Does nothing if already closed."""
        if self._local_closed or self._reset is not None:
            return
        await self.reply()
        self._local_closed = True
        self._session._wake_writers()
        self._session._forget_if_done(self)
        self._session._write(encode_data(self.stream_id, b"", fin=True))

    async def reset(self, status: int = RstStatus.CANCEL) -> None:
        """Abort the stream with RST_STREAM (5 = CANCEL); does nothing if it already ended."""
        if self._reset is not None or (self._local_closed and self._remote_closed):
            return
        self._mark_reset(status)
        self._session._write(encode_rst_stream(self.stream_id, status))

    def _check_writable(self) -> None:
        """Raise StreamClosedError unless DATA may still be sent on this stream."""
        if self._reset is not None:
            raise StreamClosedError(f"stream {self.stream_id} was reset (status {self._reset})")
        if self._local_closed:
            raise StreamClosedError(f"stream {self.stream_id} is closed for writing")

    async def _receive(self, data: bytes, fin: bool) -> None:
        """Buffer a DATA payload; wait (holding up the connection) while the application is a window behind."""
        while data and self._buffered and self._buffered + len(data) > self._session.initial_window:
            self._space.clear()
            await self._space.wait()
            if self._reset is not None:
                return
        if data:
            self._chunks.append(data)
            self._buffered += len(data)
        if fin:
            self._remote_closed = True
            self._session._forget_if_done(self)
        self._readable.set()

    def _mark_reset(self, status: int) -> None:
        """End the stream locally: drop buffered data, wake readers and writers, forget it."""
        if self._reset is not None:
            return
        self._reset = status
        self._chunks.clear()
        self._buffered = 0
        self._readable.set()
        self._space.set()
        self._session._streams.pop(self.stream_id, None)
        self._session._wake_writers()


class SpdySession:
    """The server end of one SPDY/3.1 connection; use as `async with SpdySession(r, w) as s:` then `accept()`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                 initial_window: int = 256 * 1024, max_concurrent_streams: int = 100,
                 max_frame_size: int = 1024 * 1024, max_header_block: int = 64 * 1024) -> None:
        if not 1 <= initial_window <= MAX_WINDOW:
            raise ValueError(f"initial_window must be 1..{MAX_WINDOW}, not {initial_window}")
        if max_concurrent_streams < 1 or max_frame_size < 1 or max_header_block < 1:
            raise ValueError("SPDY session limits must be positive")
        self.initial_window = initial_window
        self.max_concurrent_streams = max_concurrent_streams
        self.max_frame_size = max_frame_size
        self.max_header_block = max_header_block
        self.closed = asyncio.Event()  # set once the connection is gone
        self._reader = reader
        self._writer = writer
        self._streams: dict[int, SpdyStream] = {}
        self._accepted: asyncio.Queue[SpdyStream | None] = asyncio.Queue()
        self._compressor = HeaderCompressor()
        self._decompressor = HeaderDecompressor(max_header_block)
        self._last_stream_id = 0  # highest stream id the peer opened
        self._peer_initial_window = DEFAULT_WINDOW
        self._send_window = DEFAULT_WINDOW  # the peer's connection window for our DATA
        self._peer_flow_control = False
        self._window_event = asyncio.Event()
        self._recv_unacked = 0  # connection-level bytes received and not yet returned
        self._goaway_sent = False
        self._closing = False  # no more frames may be written
        self._ended = False
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> SpdySession:
        self._write(encode_settings({Setting.INITIAL_WINDOW_SIZE: self.initial_window,
                                     Setting.MAX_CONCURRENT_STREAMS: self.max_concurrent_streams}))
        self._write(encode_window_update(0, SESSION_WINDOW - DEFAULT_WINDOW))
        self._task = asyncio.create_task(self._run(), name="spdy-session")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._send_goaway(GoawayStatus.OK)
        for stream in list(self._streams.values()):
            stream._mark_reset(RstStatus.CANCEL)
        self._closing = True
        task = self._task
        assert task is not None, "SpdySession used without async with"
        try:
            if not task.done() and self._writer.can_write_eof():
                # Half-close so the peer reads everything we sent and closes first; closing with its frames unread
                # would make our TCP stack send RST, and the peer could lose the end of its output.
                with contextlib.suppress(OSError, RuntimeError):
                    self._writer.write_eof()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(task), _LINGER)
        finally:  # also when we are cancelled while lingering
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await self._end()  # in case the task was cancelled before it ever ran

    async def accept(self) -> SpdyStream | None:
        """The next stream the peer opened, in order; None once no more can come (GOAWAY or connection end)."""
        stream = await self._accepted.get()
        if stream is None:
            self._accepted.put_nowait(None)
        return stream

    async def goaway(self, status: int = GoawayStatus.OK) -> None:
        """Send GOAWAY once: the peer may open no new streams (accept() then returns None); open ones carry on."""
        self._send_goaway(status)

    def _send_goaway(self, status: int) -> None:
        """Queue GOAWAY naming the last peer stream we took, unless one was sent already."""
        if self._goaway_sent:
            return
        self._goaway_sent = True
        self._accepted.put_nowait(None)
        self._write(encode_goaway(self._last_stream_id, status))

    # -- writing

    def _write(self, frame: bytes) -> bool:
        """Queue one whole frame on the transport (frames never interleave); False once closing."""
        if self._closing or self._writer.is_closing():
            return False
        self._writer.write(frame)
        return True

    async def _drain_quietly(self) -> None:
        """Wait for the transport to take our frames; a lost connection is handled by the reader task."""
        with contextlib.suppress(OSError):
            await self._writer.drain()

    def _wake_writers(self) -> None:
        """Let writers waiting for window re-check their stream."""
        self._window_event.set()
        self._window_event = asyncio.Event()

    async def _reserve(self, stream: SpdyStream, wanted: int) -> int:
        """Take up to `wanted` bytes of send window for one DATA frame, waiting while an enforced window is shut."""
        while True:
            stream._check_writable()
            if self._closing:
                raise StreamClosedError(f"stream {stream.stream_id}: the connection is closing")
            allowed = min(stream._send_window, self._send_window)
            if allowed > 0 or not self._peer_flow_control:
                size = min(wanted, DATA_CHUNK, allowed) if self._peer_flow_control else min(wanted, DATA_CHUNK)
                stream._send_window -= size
                self._send_window -= size
                return size
            await self._window_event.wait()

    def _forget_if_done(self, stream: SpdyStream) -> None:
        """Drop a stream both sides have half-closed, freeing its concurrency slot."""
        if stream._local_closed and stream._remote_closed:
            self._streams.pop(stream.stream_id, None)

    async def _send_control(self, frame: bytes) -> None:
        """Write a control frame from the reader task, waiting for the transport (a stalled peer stalls us)."""
        if self._write(frame):
            await self._writer.drain()

    async def _reset_stream(self, stream_id: int, status: int) -> None:
        """Stream error: RST_STREAM to the peer and end our side of it, if we still know it."""
        stream = self._streams.get(stream_id)
        if stream is not None:
            stream._mark_reset(status)
        await self._send_control(encode_rst_stream(stream_id, status))

    # -- reading

    async def _run(self) -> None:
        """Read and dispatch frames until the connection ends or the peer breaks the protocol."""
        try:
            while True:
                header = parse_header(await self._reader.readexactly(HEADER_SIZE))
                if header.control:
                    await self._on_control(header)
                else:
                    await self._on_data(header)
        except (asyncio.IncompleteReadError, OSError):
            pass  # the peer went away
        except _SessionError as exc:
            log.info("SPDY session closed: %s", exc)
            self._goaway_sent = False  # a GOAWAY(OK) we sent earlier does not report the error
            self._send_goaway(exc.status)
        except Exception:
            log.exception("SPDY session failed")
            self._goaway_sent = False
            self._send_goaway(GoawayStatus.INTERNAL_ERROR)
        finally:
            await self._end()

    async def _end(self) -> None:
        """The connection is over: end every stream, stop accept(), close the transport."""
        if self._ended:
            return
        self._ended = True
        self._closing = True
        for stream in list(self._streams.values()):
            stream._mark_reset(RstStatus.CANCEL)
        self._accepted.put_nowait(None)
        self._wake_writers()
        self._writer.close()
        try:
            await asyncio.wait_for(self._writer.wait_closed(), _CLOSE_TIMEOUT)
        except (TimeoutError, OSError):
            self._writer.transport.abort()
        finally:
            self.closed.set()

    async def _on_control(self, header: FrameHeader) -> None:
        """Read one control frame's payload and dispatch it; unknown types are ignored as SPDY/3 requires."""
        limit = self.max_header_block + 1024  # no legitimate compressed block is much larger than it inflates to
        if header.length > limit:
            raise _SessionError(GoawayStatus.PROTOCOL_ERROR, f"control frame of {header.length} bytes (limit {limit})")
        payload = await self._reader.readexactly(header.length)
        if header.version != VERSION:
            raise _SessionError(GoawayStatus.PROTOCOL_ERROR, f"SPDY version {header.version} is not supported")
        try:
            match header.type:
                case FrameType.SYN_STREAM:
                    await self._on_syn_stream(header.flags, payload)
                case FrameType.SYN_REPLY | FrameType.HEADERS:
                    await self._on_headers(header.type, header.flags, payload)
                case FrameType.RST_STREAM:
                    stream_id, status = parse_rst_stream(payload)
                    if (stream := self._streams.get(stream_id)) is not None:
                        stream._mark_reset(status)
                case FrameType.SETTINGS:
                    self._on_settings(parse_settings(payload))
                case FrameType.PING:
                    ping_id = parse_ping(payload)
                    if ping_id % 2:  # odd ids are the client's: echo; even ones would answer our pings (none)
                        await self._send_control(encode_ping(ping_id))
                case FrameType.GOAWAY:
                    parse_goaway(payload)
                    self._accepted.put_nowait(None)
                case FrameType.WINDOW_UPDATE:
                    await self._on_window_update(*parse_window_update(payload))
        except FrameError as exc:
            raise _SessionError(GoawayStatus.PROTOCOL_ERROR, str(exc)) from exc

    def _headers(self, block: bytes) -> tuple[dict[str, str], int | None]:
        """Inflate a header block: (headers, None) or ({}, the RST status for a bad block)."""
        try:
            return self._decompressor.headers(block), None
        except zlib.error as exc:  # the shared zlib context is now unusable
            raise _SessionError(GoawayStatus.PROTOCOL_ERROR, f"header block does not inflate: {exc}") from exc
        except HeaderBlockTooLarge:
            return {}, RstStatus.FRAME_TOO_LARGE
        except HeaderBlockError as exc:
            log.info("SPDY header block refused: %s", exc)
            return {}, RstStatus.PROTOCOL_ERROR

    async def _on_syn_stream(self, flags: int, payload: bytes) -> None:
        """A new peer stream: validate its id and headers, apply the stream limit, queue it for accept()."""
        syn = parse_syn_stream(payload)
        headers, bad = self._headers(syn.block)  # always inflate: the zlib context must stay in step
        stream_id = syn.stream_id
        if stream_id == 0:
            raise _SessionError(GoawayStatus.PROTOCOL_ERROR, "SYN_STREAM for stream 0")
        if stream_id % 2 == 0:
            await self._send_control(encode_rst_stream(stream_id, RstStatus.PROTOCOL_ERROR))
            return
        if stream_id in self._streams:
            await self._reset_stream(stream_id, RstStatus.PROTOCOL_ERROR)
            return
        if stream_id <= self._last_stream_id:
            raise _SessionError(GoawayStatus.PROTOCOL_ERROR, f"stream id {stream_id} does not increase")
        if self._goaway_sent:
            return  # after GOAWAY new streams are ignored
        self._last_stream_id = stream_id
        if bad is not None:
            await self._send_control(encode_rst_stream(stream_id, bad))
            return
        if max(len(self._streams), self._accepted.qsize()) >= self.max_concurrent_streams:  # bounds both
            await self._send_control(encode_rst_stream(stream_id, RstStatus.REFUSED_STREAM))
            return
        stream = SpdyStream(self, stream_id, headers, send_window=self._peer_initial_window,
                            remote_closed=bool(flags & FLAG_FIN), local_closed=bool(flags & FLAG_UNIDIRECTIONAL))
        self._streams[stream_id] = stream
        self._forget_if_done(stream)
        self._accepted.put_nowait(stream)

    async def _on_headers(self, frame_type: int, flags: int, payload: bytes) -> None:
        """HEADERS may end a peer stream (FIN); SYN_REPLY is an error, since we open no streams."""
        stream_id, block = parse_stream_block(payload, FrameType(frame_type).name)
        _headers, bad = self._headers(block)
        stream = self._streams.get(stream_id)
        if frame_type == FrameType.SYN_REPLY:
            await self._reset_stream(stream_id, RstStatus.PROTOCOL_ERROR)
        elif stream is None:
            await self._send_control(encode_rst_stream(stream_id, RstStatus.INVALID_STREAM))
        elif bad is not None or stream._remote_closed:
            await self._reset_stream(stream_id, bad or RstStatus.STREAM_ALREADY_CLOSED)
        elif flags & FLAG_FIN:
            await stream._receive(b"", fin=True)

    def _on_settings(self, settings: dict[int, int]) -> None:
        """Apply the peer's initial stream window (to open streams too); the rest has no meaning for a server."""
        window = settings.get(Setting.INITIAL_WINDOW_SIZE)
        if window is None:
            return
        if window > MAX_WINDOW:
            raise _SessionError(GoawayStatus.PROTOCOL_ERROR, f"initial window {window} is too large")
        delta, self._peer_initial_window = window - self._peer_initial_window, window
        for stream in self._streams.values():
            stream._send_window += delta
        self._peer_flow_control = True
        self._wake_writers()

    async def _on_window_update(self, stream_id: int, delta: int) -> None:
        """Open the peer's connection window (stream 0) or one stream's window."""
        self._peer_flow_control = True
        if stream_id == 0:
            self._send_window += delta
            if self._send_window > MAX_WINDOW:
                raise _SessionError(GoawayStatus.PROTOCOL_ERROR, "connection window grew past 2^31-1")
        elif (stream := self._streams.get(stream_id)) is not None:
            stream._send_window += delta
            if stream._send_window > MAX_WINDOW:
                await self._reset_stream(stream_id, RstStatus.FLOW_CONTROL_ERROR)
        self._wake_writers()

    async def _on_data(self, header: FrameHeader) -> None:
        """Deliver a DATA frame to its stream, or reset/refuse it; credit the connection window either way."""
        stream_id, length = header.stream_id, header.length
        stream = self._streams.get(stream_id)
        if stream is None and (stream_id == 0 or stream_id % 2 == 0 or stream_id > self._last_stream_id):
            raise _SessionError(GoawayStatus.PROTOCOL_ERROR, f"DATA for stream {stream_id}, which was never opened")
        if length > self.max_frame_size:
            for offset in range(0, length, _DISCARD_STEP):
                await self._reader.readexactly(min(_DISCARD_STEP, length - offset))
            await self._credit(length)
            await self._reset_stream(stream_id, RstStatus.FRAME_TOO_LARGE)
            return
        data = await self._reader.readexactly(length)
        await self._credit(length)
        if self._closing:
            return
        if stream is None:
            await self._send_control(encode_rst_stream(stream_id, RstStatus.INVALID_STREAM))
        elif stream._remote_closed:
            await self._reset_stream(stream_id, RstStatus.STREAM_ALREADY_CLOSED)
        else:
            await stream._receive(data, bool(header.flags & FLAG_FIN))

    async def _credit(self, length: int) -> None:
        """Return connection-level window as data arrives, in batches of half the window."""
        self._recv_unacked += length
        if self._recv_unacked >= SESSION_WINDOW // 2:
            delta, self._recv_unacked = self._recv_unacked, 0
            await self._send_control(encode_window_update(0, delta))
