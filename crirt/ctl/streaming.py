"""``crirt ctl attach`` and ``port-forward``, and the streaming half of ``exec -i/-t``: a WebSocket client of a
CRI streaming server (``v5.channel.k8s.io``, falling back to v4; what ``crictl --transport websocket`` speaks).

Channel bytes: 0 stdin, 1 stdout, 2 stderr, 3 the final status (JSON), 4 terminal size; v5's channel 255 closes
a channel (stdin EOF). Port-forward uses the kubelet's WebSocket variant: one connection per URL, the port in
the ``port`` query parameter, channel 0 data and 1 errors, each starting with the port in two bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import termios
import threading
import tty as ttymode
from collections.abc import Iterator
from typing import Annotated

import aiohttp
import typer
from grpclib.client import Channel
from grpclib.exceptions import GRPCError

from crirt._gen.runtime.v1 import AttachRequest, ExecRequest, PortForwardRequest, RuntimeServiceStub
from crirt.ctl.app import app, call_runtime, fail
from crirt.ctl.settings import ClientSettings, socket_path

PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")
STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
READ_SIZE = 64 * 1024

TransportOption = Annotated[str, typer.Option("--transport", help="websocket (crirt ctl speaks no SPDY)")]


def exit_status(status: bytes) -> tuple[int, str]:
    """(exit code, message to print) from the error channel: a v4/v5 status object, or nothing (success)."""
    if not status.strip():
        return 0, ""
    try:
        document = json.loads(status)
    except ValueError:
        return 1, status.decode(errors="replace")
    if document.get("status") == "Success":
        return 0, ""
    causes = (document.get("details") or {}).get("causes") or []
    if document.get("reason") == "NonZeroExitCode":
        for cause in causes:
            if cause.get("reason") == "ExitCode" and str(cause.get("message", "")).isdigit():
                return int(cause["message"]), ""
    return 1, str(document.get("message") or status.decode(errors="replace"))


@contextlib.contextmanager
def raw_terminal(enabled: bool) -> Iterator[None]:
    """Put the local terminal in raw mode (keys go to the remote terminal as typed) and restore it after."""
    if not enabled or not sys.stdin.isatty():
        yield
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    ttymode.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _read_stdin(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[bytes]) -> None:
    """Read stdin in a daemon thread (works for terminals, pipes and files alike); b"" at EOF."""
    fd = sys.stdin.fileno()
    while True:
        try:
            data = os.read(fd, READ_SIZE)
        except OSError:
            data = b""
        try:
            loop.call_soon_threadsafe(queue.put_nowait, data)
        except RuntimeError:  # the loop is closed: the session is over
            return
        if not data:
            return


async def _send_stdin(ws: aiohttp.ClientWebSocketResponse) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    threading.Thread(target=_read_stdin, args=(loop, queue), daemon=True).start()
    while data := await queue.get():
        await ws.send_bytes(bytes([STDIN]) + data)
    if ws.protocol == PROTOCOLS[0]:
        await ws.send_bytes(bytes([CLOSE, STDIN]))


async def _send_sizes(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Send the terminal's size now and whenever it changes (SIGWINCH)."""
    changed = asyncio.Event()
    changed.set()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGWINCH, changed.set)
    try:
        while True:
            await changed.wait()
            changed.clear()
            size = os.get_terminal_size(sys.stdout.fileno())  # the terminal itself, not $COLUMNS/$LINES
            await ws.send_bytes(bytes([RESIZE]) + json.dumps({"Width": size.columns, "Height": size.lines}).encode())
    finally:
        loop.remove_signal_handler(signal.SIGWINCH)


async def stream_session(url: str, *, stdin: bool, tty: bool) -> int:
    """Drive an exec/attach session at ``url`` with this process's stdio; the remote exit code."""
    status = b""
    async with aiohttp.ClientSession() as http, http.ws_connect(url, protocols=PROTOCOLS, max_msg_size=0) as ws:
        helpers = [asyncio.ensure_future(_send_stdin(ws))] if stdin else []
        if tty and sys.stdout.isatty():
            helpers.append(asyncio.ensure_future(_send_sizes(ws)))
        try:
            async for message in ws:
                if message.type != aiohttp.WSMsgType.BINARY or not message.data:
                    continue
                channel, data = message.data[0], message.data[1:]
                if channel in (STDOUT, STDERR):
                    out = sys.stdout.buffer if channel == STDOUT else sys.stderr.buffer
                    out.write(data)
                    out.flush()
                elif channel == ERROR:
                    status += data
        finally:
            for helper in helpers:
                helper.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
    code, message = exit_status(status)
    if message:
        sys.stderr.write(f"crirt ctl: {message}\n")
    return code


def run_stream(url: str, *, stdin: bool, tty: bool) -> int:
    """``stream_session`` from synchronous code, with the local terminal raw while a remote one is used."""
    with raw_terminal(tty and stdin):
        try:
            return asyncio.run(stream_session(url, stdin=stdin, tty=tty))
        except aiohttp.WSServerHandshakeError as exc:
            raise fail(f"streaming server refused the session: {exc.status} {exc.message}") from None
        except aiohttp.ClientError as exc:
            raise fail(f"cannot reach the streaming server: {exc}") from None


def check_transport(transport: str) -> None:
    if transport != "websocket":
        raise fail(f"--transport {transport!r}: crirt ctl speaks websocket only")


def exec_stream(ctx: typer.Context, container_id: str, cmd: list[str], *, stdin: bool, tty: bool) -> int:
    """``crirt ctl exec`` without ``--sync``: run ``cmd`` through the streaming server; its exit code."""
    request = ExecRequest(container_id=container_id, cmd=cmd, stdin=stdin, tty=tty, stdout=True, stderr=not tty)
    reply = call_runtime(ctx, lambda stub: stub.exec(request))
    return run_stream(reply.url, stdin=stdin, tty=tty)


@app.command()
def attach(
    ctx: typer.Context,
    container_id: Annotated[str, typer.Argument(help="container id")],
    stdin: Annotated[bool, typer.Option("--stdin", "-i", help="pass stdin to the container")] = False,
    tty: Annotated[bool, typer.Option("--tty", "-t", help="stdin is a TTY")] = False,
    transport: TransportOption = "websocket",
) -> None:
    """Attach to a running container's main process; exits when it exits (or, with -i, when stdin ends)."""
    check_transport(transport)
    reply = call_runtime(ctx, lambda stub: stub.attach(AttachRequest(container_id=container_id, stdin=stdin, tty=tty,
                                                                     stdout=True, stderr=not tty)))
    raise typer.Exit(run_stream(reply.url, stdin=stdin, tty=tty))


# ---- port-forward --------------------------------------------------------------------------------------------


def parse_port_spec(spec: str) -> tuple[int, int]:
    """``[LOCAL:]REMOTE`` as (local, remote); local 0 picks a free port."""
    local, sep, remote = spec.rpartition(":")
    try:
        ports = (int(local) if sep else int(remote), int(remote))
    except ValueError:
        raise fail(f"port {spec!r}: expected [LOCAL_PORT:]REMOTE_PORT") from None
    if not 0 <= ports[0] <= 0xFFFF or not 0 < ports[1] <= 0xFFFF:
        raise fail(f"port {spec!r}: ports must be 1..65535 (local 0: any free port)")
    return ports


async def _port_forward_url(settings: ClientSettings, pod_id: str, port: int) -> str:
    channel = Channel(path=socket_path(settings.runtime_endpoint))
    try:
        reply = await asyncio.wait_for(RuntimeServiceStub(channel).port_forward(
            PortForwardRequest(pod_sandbox_id=pod_id, port=[port])), settings.timeout)
        return reply.url
    finally:
        channel.close()


async def _pipe(settings: ClientSettings, pod_id: str, remote: int, reader: asyncio.StreamReader,
                writer: asyncio.StreamWriter) -> None:
    """Carry one local connection to ``remote`` in the pod over its own WebSocket."""
    try:
        url = await _port_forward_url(settings, pod_id, remote)
        async with aiohttp.ClientSession() as http, \
                http.ws_connect(f"{url}?port={remote}", protocols=("v4.channel.k8s.io",), max_msg_size=0) as ws:

            async def upstream() -> None:
                while data := await reader.read(READ_SIZE):
                    await ws.send_bytes(bytes([0]) + data)
                await ws.close()

            sending = asyncio.ensure_future(upstream())
            seen: set[int] = set()
            try:
                async for message in ws:
                    if message.type != aiohttp.WSMsgType.BINARY or not message.data:
                        continue
                    channel, data = message.data[0], message.data[1:]
                    if channel not in seen:  # the first message of each channel is the port
                        seen.add(channel)
                        data = data[2:]
                    if channel == 0 and data:
                        writer.write(data)
                        await writer.drain()
                    elif channel == 1 and data:
                        sys.stderr.write(f"crirt ctl: port {remote}: {data.decode(errors='replace')}\n")
            finally:
                sending.cancel()
                await asyncio.gather(sending, return_exceptions=True)
    except (GRPCError, aiohttp.ClientError, OSError, TimeoutError) as exc:
        sys.stderr.write(f"crirt ctl: port {remote}: {getattr(exc, 'message', None) or exc}\n")
    finally:
        writer.close()


async def _forward(settings: ClientSettings, pod_id: str, specs: list[tuple[int, int]], address: str) -> None:
    await _port_forward_url(settings, pod_id, specs[0][1])  # fail early when the pod is not there
    servers = []
    for local, remote in specs:
        server = await asyncio.start_server(
            lambda r, w, remote=remote: _pipe(settings, pod_id, remote, r, w), address, local)
        servers.append(server)
        bound = server.sockets[0].getsockname()[1]
        print(f"Forwarding from {address}:{bound} -> {remote}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for server in servers:
            server.close()


@app.command(name="port-forward")
def port_forward(
    ctx: typer.Context,
    pod_id: Annotated[str, typer.Argument(help="pod sandbox id")],
    ports: Annotated[list[str], typer.Argument(help="[LOCAL_PORT:]REMOTE_PORT, repeatable")],
    address: Annotated[str, typer.Option("--address", help="local address to listen on")] = "127.0.0.1",
    transport: TransportOption = "websocket",
) -> None:
    """Forward local ports to ports of a pod until interrupted (each connection gets its own URL)."""
    check_transport(transport)
    specs = [parse_port_spec(spec) for spec in ports]
    try:
        asyncio.run(_forward(ctx.obj, pod_id, specs, address))
    except GRPCError as exc:
        raise fail(f"{exc.status.name}: {exc.message}") from None
    except OSError as exc:
        raise fail(f"cannot listen on {address}: {exc.strerror or exc}") from None
