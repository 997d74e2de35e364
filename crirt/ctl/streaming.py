"""``crirt ctl attach`` and ``port-forward``, and the streaming half of ``exec`` without ``-s``: local stdio, terminal
and sockets carried over a CRI streaming session, on SPDY (the default, as with crictl) or WebSocket (``--transport``).

The protocols are in crirt.ctl.transport_spdy and crirt.ctl.transport_ws behind crirt.ctl.transport's interface.
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

import typer
from grpclib.client import Channel
from grpclib.exceptions import GRPCError

from crirt._gen.runtime.v1 import AttachRequest, ExecRequest, PortForwardRequest, RuntimeServiceStub
from crirt.ctl.app import app, call_runtime, fail
from crirt.ctl.settings import ClientSettings, socket_path
from crirt.ctl.transport import DATA, ERROR, READ_SIZE, STDOUT, Session, Transport, TransportError
from crirt.ctl.transport_spdy import SpdyTransport
from crirt.ctl.transport_ws import WebSocketTransport

TRANSPORTS: dict[str, type[Transport]] = {t.name: t for t in (SpdyTransport, WebSocketTransport)}

TransportOption = Annotated[str, typer.Option("--transport", help="spdy or websocket")]


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


async def _send_stdin(session: Session) -> None:
    """Copy this process's stdin to the session, then say it ended."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    threading.Thread(target=_read_stdin, args=(loop, queue), daemon=True).start()
    while data := await queue.get():
        await session.send_stdin(data)
    await session.close_stdin()


async def _send_sizes(session: Session) -> None:
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
            await session.resize(size.columns, size.lines)
    finally:
        loop.remove_signal_handler(signal.SIGWINCH)


async def stream_session(transport: Transport, url: str, *, stdin: bool, tty: bool) -> int:
    """Drive an exec/attach session at ``url`` with this process's stdio; the remote exit code."""
    status = b""
    async with transport.session(url, stdin=stdin, tty=tty) as session:
        helpers = [asyncio.ensure_future(_send_stdin(session))] if stdin else []
        if tty and sys.stdout.isatty():
            helpers.append(asyncio.ensure_future(_send_sizes(session)))
        try:
            async with contextlib.aclosing(session.output()) as output:
                async for channel, data in output:
                    if channel == ERROR:
                        status += data
                        continue
                    out = sys.stdout.buffer if channel == STDOUT else sys.stderr.buffer
                    out.write(data)
                    out.flush()
        finally:
            for helper in helpers:
                helper.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
    code, message = exit_status(status)
    if message:
        sys.stderr.write(f"crirt ctl: {message}\n")
    return code


def run_stream(transport: Transport, url: str, *, stdin: bool, tty: bool) -> int:
    """``stream_session`` from synchronous code, with the local terminal raw while a remote one is used."""
    with raw_terminal(tty and stdin):
        try:
            return asyncio.run(stream_session(transport, url, stdin=stdin, tty=tty))
        except TransportError as exc:
            raise fail(str(exc)) from None


def transport_for(name: str) -> Transport:
    """The transport ``--transport`` names; a clear error for any other name."""
    if name not in TRANSPORTS:
        raise fail(f"--transport {name!r}: expected {' or '.join(TRANSPORTS)}")
    return TRANSPORTS[name]()


def exec_stream(ctx: typer.Context, transport: Transport, container_id: str, cmd: list[str], *, stdin: bool,
                tty: bool) -> int:
    """``crirt ctl exec`` without ``--sync``: run ``cmd`` through the streaming server; its exit code."""
    request = ExecRequest(container_id=container_id, cmd=cmd, stdin=stdin, tty=tty, stdout=True, stderr=not tty)
    reply = call_runtime(ctx, lambda stub: stub.exec(request))
    return run_stream(transport, reply.url, stdin=stdin, tty=tty)


@app.command()
def attach(
    ctx: typer.Context,
    container_id: Annotated[str, typer.Argument(help="container id")],
    stdin: Annotated[bool, typer.Option("--stdin", "-i", help="pass stdin to the container")] = False,
    tty: Annotated[bool, typer.Option("--tty", "-t", help="stdin is a TTY")] = False,
    transport: TransportOption = "spdy",
) -> None:
    """Attach to a running container's main process; exits when it exits (or, with -i, when stdin ends)."""
    wire = transport_for(transport)
    reply = call_runtime(ctx, lambda stub: stub.attach(AttachRequest(container_id=container_id, stdin=stdin, tty=tty,
                                                                     stdout=True, stderr=not tty)))
    raise typer.Exit(run_stream(wire, reply.url, stdin=stdin, tty=tty))


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


async def _pipe(transport: Transport, settings: ClientSettings, pod_id: str, remote: int,
                reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Carry one local connection to ``remote`` in the pod over its own streaming connection."""
    try:
        url = await _port_forward_url(settings, pod_id, remote)
        async with transport.tunnel(url, remote) as tunnel:

            async def upstream() -> None:
                while data := await reader.read(READ_SIZE):
                    await tunnel.send(data)
                await tunnel.close_send()

            sending = asyncio.ensure_future(upstream())
            try:
                async with contextlib.aclosing(tunnel.received()) as received:
                    async for channel, data in received:
                        if channel == DATA:
                            writer.write(data)
                            await writer.drain()
                        else:
                            sys.stderr.write(f"crirt ctl: port {remote}: {data.decode(errors='replace')}\n")
            finally:
                sending.cancel()
                await asyncio.gather(sending, return_exceptions=True)
    except (GRPCError, TransportError, OSError, TimeoutError) as exc:
        sys.stderr.write(f"crirt ctl: port {remote}: {getattr(exc, 'message', None) or exc}\n")
    finally:
        writer.close()


async def _forward(transport: Transport, settings: ClientSettings, pod_id: str, specs: list[tuple[int, int]],
                   address: str) -> None:
    await _port_forward_url(settings, pod_id, specs[0][1])  # fail early when the pod is not there
    servers = []
    for local, remote in specs:
        server = await asyncio.start_server(
            lambda r, w, remote=remote: _pipe(transport, settings, pod_id, remote, r, w), address, local)
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
    transport: TransportOption = "spdy",
) -> None:
    """Forward local ports to ports of a pod until interrupted (each connection gets its own URL)."""
    wire = transport_for(transport)
    specs = [parse_port_spec(spec) for spec in ports]
    try:
        asyncio.run(_forward(wire, ctx.obj, pod_id, specs, address))
    except GRPCError as exc:
        raise fail(f"{exc.status.name}: {exc.message}") from None
    except OSError as exc:
        raise fail(f"cannot listen on {address}: {exc.strerror or exc}") from None
