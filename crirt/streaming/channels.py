"""The Kubernetes remote command protocols (``*.channel.k8s.io``): exec and attach over SPDY or WebSocket.

A session has up to five channels: 0 stdin, 1 stdout, 2 stderr, 3 error (the final status), 4 resize (JSON
``{"Width":..,"Height":..}`` objects). Over SPDY each channel is a stream the client opens with a ``streamtype``
header; over WebSocket each message carries its channel number (crirt.streaming.websocket). What ends up on the
error channel depends on the version: v4/v5 send a ``metav1.Status`` object with the exit code, the older ones
send the error as plain text and nothing on success.

``execute`` runs one session against a target (crirt.streaming.targets) whatever the transport; the transport
gives it a ``ClientStreams``.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from crirt.errors import CrirtError
from crirt.streaming.requests import AttachRequest, ExecRequest

if TYPE_CHECKING:
    from crirt.streaming.targets import StdioTarget

log = logging.getLogger(__name__)

STDIN, STDOUT, STDERR, ERROR, RESIZE = 0, 1, 2, 3, 4
STREAM_TYPES = {"stdin": STDIN, "stdout": STDOUT, "stderr": STDERR, "error": ERROR, "resize": RESIZE}

V1, V2, V3, V4 = "channel.k8s.io", "v2.channel.k8s.io", "v3.channel.k8s.io", "v4.channel.k8s.io"
SPDY_PROTOCOLS = (V4, V3, V2, V1)
"""Remote command versions over SPDY, in the server's order of preference (the kubelet's)."""
WEBSOCKET_PROTOCOLS = ("v5.channel.k8s.io", V4, "v4.base64.channel.k8s.io", "base64.channel.k8s.io", V1)
"""Remote command subprotocols over WebSocket; the client's order of preference decides."""
STRUCTURED_STATUS = frozenset({V4, "v4.base64.channel.k8s.io", "v5.channel.k8s.io"})
"""Versions whose error channel carries a metav1.Status object (with the exit code) rather than text."""
RESIZE_BUFFER_LIMIT = 4096
"""Bytes of an unfinished resize message kept before the resize channel is declared garbage."""


class ClientGone(ConnectionError):
    """The client's connection or stream is closed; nothing more can be sent to it."""


def negotiate(offered: Sequence[str], supported: Sequence[str]) -> str | None:
    """SPDY's ``X-Stream-Protocol-Version`` choice: the server's most preferred version the client offers.

    "" when the client offered none (old clients: version 1 semantics); None when nothing matches."""
    if not offered:
        return ""
    return next((p for p in supported if p in offered), None)


def status_message(protocol: str, exit_code: int | None = None, error: str | None = None,
                   command: Sequence[str] = ()) -> bytes:
    """What the error channel carries at the end: b"" means nothing (success with a text protocol)."""
    structured = protocol in STRUCTURED_STATUS
    if error is not None:
        if not structured:
            return error.encode()
        message = f"Internal error occurred: {error}"
        return _json({"metadata": {}, "status": "Failure", "message": message, "reason": "InternalError",
                      "details": {"causes": [{"message": error}]}, "code": 500})
    if not exit_code:
        return _json({"metadata": {}, "status": "Success"}) if structured else b""
    text = (f"command terminated with non-zero exit code: error executing command [{' '.join(command)}], "
            f"exit code {exit_code}")
    if not structured:
        return text.encode()
    return _json({"metadata": {}, "status": "Failure", "message": text, "reason": "NonZeroExitCode",
                  "details": {"causes": [{"reason": "ExitCode", "message": str(exit_code)}]}})


def _json(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


class ResizeDecoder:
    """Turns the resize channel's byte stream (concatenated JSON objects) into (width, height) pairs."""

    def __init__(self) -> None:
        self._buffer = ""
        self._decoder = json.JSONDecoder()

    def feed(self, data: bytes) -> list[tuple[int, int]]:
        """The sizes completed by ``data``; ValueError for anything that is not a terminal size."""
        self._buffer += data.decode("utf-8", errors="replace")
        sizes = []
        while True:
            self._buffer = self._buffer.lstrip()
            if not self._buffer:
                return sizes
            try:
                value, end = self._decoder.raw_decode(self._buffer)
            except json.JSONDecodeError:
                if len(self._buffer) > RESIZE_BUFFER_LIMIT:
                    raise ValueError("resize: not a JSON object") from None
                return sizes
            self._buffer = self._buffer[end:]
            sizes.append(_terminal_size(value))


def _terminal_size(value: Any) -> tuple[int, int]:
    if not isinstance(value, dict):
        raise ValueError(f"resize: expected an object, got {value!r:.80}")
    width, height = value.get("Width", 0), value.get("Height", 0)
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 0xFFFF for v in (width, height)):
        raise ValueError(f"resize: Width and Height must be integers 0..65535, got {value!r:.80}")
    return width, height


class ClientStreams(abc.ABC):
    """The client's side of one exec/attach session, whatever carries it."""

    @abc.abstractmethod
    async def read(self, channel: int) -> bytes:
        """Next chunk of an incoming channel (stdin, resize); b"" at its end."""

    @abc.abstractmethod
    async def write(self, channel: int, data: bytes) -> None:
        """Send on an outgoing channel (stdout, stderr); ClientGone when that is no longer possible."""

    @abc.abstractmethod
    async def end(self, channel: int) -> None:
        """Our end of an outgoing channel: no more data follows."""

    @abc.abstractmethod
    async def gone(self) -> None:
        """Return when the client's connection is gone."""


class _Session:
    """Moves bytes between one target and one client until the command ends or the client leaves."""

    def __init__(self, target: StdioTarget, client: ClientStreams, outputs: set[int]) -> None:
        self.target = target
        self.client = client
        self.outputs = outputs

    async def output(self) -> None:
        """Copy the target's output to the client; keep draining it when the client stops taking it."""
        taking = set(self.outputs)
        while True:
            channel, data = await self.target.read_output()
            if channel == 0:
                break
            if channel in taking:
                try:
                    await self.client.write(channel, data)
                except ClientGone:
                    taking.discard(channel)
        for channel in taking:
            with contextlib.suppress(ClientGone):
                await self.client.end(channel)

    async def stdin(self, close_on_eof: bool) -> None:
        """Copy the client's stdin to the target; at its end close the target's stdin if ``close_on_eof``."""
        while data := await self.client.read(STDIN):
            await self.target.write_stdin(data)
        if close_on_eof:
            await self.target.close_stdin()

    async def resize(self) -> None:
        decoder = ResizeDecoder()
        while data := await self.client.read(RESIZE):
            try:
                sizes = decoder.feed(data)
            except ValueError as exc:
                log.info("ignoring the rest of a resize channel: %s", exc)
                return
            for width, height in sizes:
                await self.target.resize(width, height)


async def run_command(target: StdioTarget, client: ClientStreams, *, attach: bool, tty: bool, stdin: bool,
                      outputs: set[int], resize: bool) -> int | None:
    """Drive one session; the exit code (attach: 0 once it ends), or None when the client left first.

    Exec ends when the process exited and its output is drained. Attach ends when the container's output
    ends (it exited) or the client half-closes stdin. Stdin EOF reaches an exec's process, except with a tty,
    where the terminal stays open until the shell exits (as with containerd)."""
    session = _Session(target, client, outputs)
    feeding = [asyncio.ensure_future(session.resize())] if resize else []
    output = asyncio.ensure_future(session.output())
    if attach:
        ends = [output]
        if stdin:
            ends.append(asyncio.ensure_future(session.stdin(close_on_eof=False)))
    else:
        if stdin:
            feeding.append(asyncio.ensure_future(session.stdin(close_on_eof=not tty)))
        ends = [asyncio.ensure_future(asyncio.gather(output, target.wait()))]
    gone = asyncio.ensure_future(client.gone())
    try:
        done, _ = await asyncio.wait([*ends, gone], return_when=asyncio.FIRST_COMPLETED)
        finished = [task for task in ends if task in done]
        if not finished:
            return None
        result = finished[0].result()  # raises what went wrong
        return 0 if attach else int(result[1])
    finally:
        tasks = {*feeding, *ends, output, gone}
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _close(target: StdioTarget) -> None:
    """Close the target to the end even when the session is being cancelled (crirt shutting down): an exec's
    process must not outlive its session."""
    closing = asyncio.ensure_future(target.close())
    try:
        await asyncio.shield(closing)
    except asyncio.CancelledError:
        await closing
        raise


Opener = Callable[[ExecRequest | AttachRequest], Awaitable["StdioTarget"]]


async def execute(request: ExecRequest | AttachRequest, open_target: Opener, client: ClientStreams,
                  protocol: str, resize: bool) -> bytes | None:
    """Run one exec/attach session; the error channel's final message, or None when the client left."""
    try:
        target = await open_target(request)
    except CrirtError as exc:
        return status_message(protocol, error=str(exc))
    outputs = {c for c, wanted in ((STDOUT, request.stdout), (STDERR, request.stderr)) if wanted}
    attach = isinstance(request, AttachRequest)
    try:
        code = await run_command(target, client, attach=attach, tty=request.tty, stdin=request.stdin,
                                 outputs=outputs, resize=resize)
    except (CrirtError, OSError) as exc:
        log.warning("%s in container %s failed: %s", request.kind, request.container_id, exc)
        return status_message(protocol, error=str(exc))
    finally:
        await _close(target)
    if code is None:
        log.info("%s client of container %s left; the session is closed", request.kind, request.container_id)
        return None
    return status_message(protocol, exit_code=code, command=getattr(request, "cmd", ()))


# ---- SPDY ---------------------------------------------------------------------------------------------------


def expected_streams(request: ExecRequest | AttachRequest, protocol: str) -> set[int]:
    """The streams the client must open before the session starts (the kubelet's count)."""
    wanted = {ERROR}
    wanted |= {c for c, on in ((STDIN, request.stdin), (STDOUT, request.stdout), (STDERR, request.stderr)) if on}
    if request.tty and protocol in (V3, V4):
        wanted.add(RESIZE)
    return wanted


class _SpdyClient(ClientStreams):
    """An exec/attach client whose channels are the streams of one SPDY session."""

    def __init__(self, session: Any, streams: dict[int, Any]) -> None:
        self.session = session
        self.streams = streams

    async def read(self, channel: int) -> bytes:
        data: bytes = await self.streams[channel].read()
        return data

    async def write(self, channel: int, data: bytes) -> None:
        try:
            await self.streams[channel].write(data)
        except Exception as exc:  # the session's StreamClosedError, or the connection's error
            raise ClientGone(str(exc)) from None

    async def end(self, channel: int) -> None:
        try:
            await self.streams[channel].close()
        except Exception as exc:
            raise ClientGone(str(exc)) from None

    async def gone(self) -> None:
        await self.session.closed.wait()


async def _collect(session: Any, wanted: set[int], within: float) -> dict[int, Any] | None:
    """Accept and answer streams until every wanted type arrived; None on timeout or session end."""
    streams: dict[int, Any] = {}
    deadline = asyncio.get_running_loop().time() + within
    while set(streams) != wanted:
        try:
            stream = await asyncio.wait_for(session.accept(), deadline - asyncio.get_running_loop().time())
        except TimeoutError:
            log.info("timed out waiting for the client to create streams (%s of %s)", sorted(streams), sorted(wanted))
            return None
        if stream is None:
            return None
        channel = STREAM_TYPES.get(stream.headers.get("streamtype", ""))
        if channel not in wanted or channel in streams:
            log.info("refusing an unexpected stream of type %r", stream.headers.get("streamtype"))
            await stream.reset()
            continue
        await stream.reply()
        streams[channel] = stream
    return streams


async def _refuse_more(session: Any) -> None:
    """Reset any stream the client opens after the session started."""
    while (stream := await session.accept()) is not None:
        await stream.reset()


async def serve_spdy(session: Any, protocol: str, request: ExecRequest | AttachRequest, open_target: Opener,
                     creation_timeout: float) -> None:
    """Run one exec/attach session on an upgraded SPDY connection; then the status, and end the streams."""
    streams = await _collect(session, expected_streams(request, protocol), creation_timeout)
    if streams is None:
        return
    refuser = asyncio.ensure_future(_refuse_more(session))
    try:
        status = await execute(request, open_target, _SpdyClient(session, streams), protocol,
                               resize=RESIZE in streams)
        if status is None:
            return
        with contextlib.suppress(Exception):
            if status:
                await streams[ERROR].write(status)
            await streams[ERROR].close()
        for channel in (STDIN, RESIZE):
            if channel in streams:
                with contextlib.suppress(Exception):
                    await streams[channel].reset()
    finally:
        refuser.cancel()
        await asyncio.gather(refuser, return_exceptions=True)
