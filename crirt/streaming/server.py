"""The streaming server: one HTTP/1.1 listener for the URLs Exec, Attach and PortForward return.

``/exec/<token>``, ``/attach/<token>`` and ``/portforward/<token>`` (GET or POST) redeem a token and upgrade the
connection to SPDY/3.1 (``Upgrade: SPDY/3.1`` with ``X-Stream-Protocol-Version`` offers) or to a WebSocket
(``Sec-WebSocket-Protocol`` offers). Answers before an upgrade: 404 for an unknown path or an unknown, used or
expired token, 405 for another method, 400 for a malformed request or upgrade, 403 when no offered protocol
version is supported, 408 when the request head does not arrive within the stream creation timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

from crirt.config import StreamingConfig
from crirt.metrics.instruments import StreamMetrics
from crirt.streaming import channels, portforward, websocket
from crirt.streaming.http import Head, HttpError, error_response, read_head
from crirt.streaming.idle import IdleWatch
from crirt.streaming.requests import AttachRequest, ExecRequest, PortForwardRequest, StreamRequest
from crirt.streaming.spdy import SpdySession
from crirt.streaming.tokens import TokenCache

if TYPE_CHECKING:
    from crirt.streaming.targets import StdioTarget

log = logging.getLogger(__name__)

KINDS = ("exec", "attach", "portforward")


class Backend(Protocol):
    """What the sessions connect to (crirt.streaming.service wires the real containers and pods)."""

    async def open_target(self, request: ExecRequest | AttachRequest) -> StdioTarget: ...

    async def dial(self, sandbox_id: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]: ...


def url_host(address: str) -> str:
    """The host part of URLs for a listening address: loopback for an unspecified one, IPv6 in brackets."""
    ip = ipaddress.ip_address(address)
    if ip.is_unspecified:
        ip = ipaddress.ip_address("::1" if ip.version == 6 else "127.0.0.1")
    return f"[{ip}]" if ip.version == 6 else str(ip)


def tls_context(config: StreamingConfig) -> ssl.SSLContext | None:
    """The server's TLS context when a certificate is configured."""
    if config.tls_cert_file is None or config.tls_key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.tls_cert_file, config.tls_key_file)
    return context


def route(head: Head) -> tuple[str, str]:
    """(kind, token) of a request path; HttpError 404/405 otherwise."""
    parts = head.path.strip("/").split("/")
    if len(parts) != 2 or parts[0] not in KINDS or not parts[1]:
        raise HttpError(404, f"not found: {head.path}")
    if head.method not in ("GET", "POST"):
        raise HttpError(405, f"method {head.method} not allowed: use GET or POST", [("Allow", "GET, POST")])
    return parts[0], parts[1]


class StreamingServer:
    """Issues URLs for prepared requests and serves the connections that redeem them."""

    def __init__(self, config: StreamingConfig, backend: Backend, sessions: StreamMetrics | None = None) -> None:
        self.config = config
        self.backend = backend
        self.sessions = StreamMetrics() if sessions is None else sessions
        self.tokens: TokenCache[StreamRequest] = TokenCache(config.token_ttl, config.max_tokens)
        self._ssl = tls_context(config)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.base_url = ""

    async def start(self) -> None:
        """Listen on the configured address and port (0: a free one); sets ``base_url``."""
        self._server = await asyncio.start_server(self._connection, self.config.address, self.config.port,
                                                  ssl=self._ssl)
        port = self._server.sockets[0].getsockname()[1]
        scheme = "https" if self._ssl else "http"
        self.base_url = f"{scheme}://{url_host(self.config.address)}:{port}"
        log.info("streaming server listening on %s", self.base_url)

    async def close(self) -> None:
        """Stop listening and end every session (exec processes are killed, attaches detached)."""
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def url(self, request: StreamRequest) -> str:
        """A single-use URL for ``request`` (RESOURCE_EXHAUSTED when too many are outstanding)."""
        return f"{self.base_url}/{request.kind}/{self.tokens.issue(request)}"

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._serve(reader, writer)
        except HttpError as exc:
            log.info("streaming request refused: %d %s", exc.status, exc.message)
            writer.write(error_response(exc))
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        except (ConnectionError, ssl.SSLError) as exc:
            log.debug("streaming connection lost: %s", exc)
        except asyncio.CancelledError:
            pass  # the server is closing; ending normally keeps asyncio's connection callback quiet
        except Exception:
            log.exception("streaming connection failed")
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(read_head(reader), self.config.stream_creation_timeout)
        except TimeoutError:
            raise HttpError(408, "timed out waiting for the request") from None
        if head is None:
            return
        kind, token = route(head)
        request = self.tokens.redeem(token)
        if request is None or request.kind != kind:
            raise HttpError(404, "unknown, used or expired token")
        upgrade = head.tokens("upgrade")
        if "websocket" in upgrade:
            serve = self._websocket(head, request, reader, writer)
        elif "spdy/3.1" in upgrade:
            serve = self._spdy(head, request, reader, writer)
        else:
            raise HttpError(400, "unable to upgrade: the request must upgrade to SPDY/3.1 or websocket "
                                 f"(Upgrade: {head.get('upgrade') or 'missing'})")
        await serve

    async def _watched(self, kind: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       run: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]) -> None:
        """Run an upgraded connection (a session of ``kind``); close it when it stays idle longer than the idle
        timeout."""
        watch = IdleWatch(reader, writer, self.config.idle_timeout)
        with self.sessions.session(kind):
            session = asyncio.ensure_future(run(watch.reader, watch.writer))
            idle = asyncio.ensure_future(watch.expired())
            try:
                await asyncio.wait([session, idle], return_when=asyncio.FIRST_COMPLETED)
                if not session.done():
                    log.info("closing a streaming connection idle for %.0fs", self.config.idle_timeout)
                    writer.close()
                await session
            finally:
                idle.cancel()
                session.cancel()
                await asyncio.gather(idle, session, return_exceptions=True)

    async def _spdy(self, head: Head, request: StreamRequest, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> None:
        if "upgrade" not in head.tokens("connection"):
            raise HttpError(400, "unable to upgrade: missing 'Connection: Upgrade'")
        supported = portforward.SPDY_PROTOCOLS if isinstance(request, PortForwardRequest) else channels.SPDY_PROTOCOLS
        offered = [p.strip() for value in head.all("x-stream-protocol-version") for p in value.split(",")
                   if p.strip()]
        protocol = channels.negotiate(offered, supported)
        if protocol is None:
            raise HttpError(403, f"unable to upgrade: unable to negotiate protocol: client supports "
                                 f"{offered}, server accepts {list(supported)}")
        lines = ["HTTP/1.1 101 Switching Protocols", "Connection: Upgrade", "Upgrade: SPDY/3.1"]
        if protocol:
            lines.append(f"X-Stream-Protocol-Version: {protocol}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())

        async def run(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            async with SpdySession(r, w) as session:
                if isinstance(request, PortForwardRequest):
                    await portforward.SpdyPortForward(session, request, self.backend.dial,
                                                      self.config.stream_creation_timeout).run()
                else:
                    await channels.serve_spdy(session, protocol, request, self.backend.open_target,
                                              self.config.stream_creation_timeout)

        await self._watched(request.kind, reader, writer, run)

    async def _websocket(self, head: Head, request: StreamRequest, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        if isinstance(request, PortForwardRequest):
            try:
                ports = portforward.websocket_ports(request, head.query)
            except ValueError as exc:
                raise HttpError(400, str(exc)) from None
            protocol, response = websocket.accept_handshake(head, portforward.WEBSOCKET_PROTOCOLS)
            readable = tuple(range(0, 2 * len(ports), 2))  # the data channels
        else:
            protocol, response = websocket.accept_handshake(head, channels.WEBSOCKET_PROTOCOLS)
            readable = (channels.STDIN, channels.RESIZE)
        writer.write(response)

        async def run(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            sock = websocket.ChannelSocket(r, w, protocol, readable)
            frames = asyncio.ensure_future(sock.run())
            try:
                if isinstance(request, PortForwardRequest):
                    await portforward.serve_websocket(sock, request, ports, self.backend.dial)
                else:
                    await websocket.serve_command(sock, request, self.backend.open_target)
            finally:
                frames.cancel()
                await asyncio.gather(frames, return_exceptions=True)

        await self._watched(request.kind, reader, writer, run)
