"""What a streaming session is connected to: a process exec'd in a container, a container's main process
(attach), or a TCP port inside a pod (port-forward).

Exec asks the container's shim for an interactive process (``Shim.exec_interactive``), attach for its main
process (``Shim.attach``); both are ``ProcessIO``s. Port-forward connects to the port on the pod's loopback
from a socket made inside the pod's pinned network namespace, so no process is started for it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crirt.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from crirt.model.enums import ContainerState
from crirt.network.netns import run_in_netns
from crirt.sandboxes.records import Phase
from crirt.shim.contract import ExecProcess, ProcessIO, Stdio

if TYPE_CHECKING:
    from crirt.containers.records import ContainerRecord
    from crirt.containers.service import ContainerService
    from crirt.sandboxes.service import SandboxService

log = logging.getLogger(__name__)

StdioTarget = ProcessIO
"""A process a session drives: write stdin, read (stream, data) output, resize, wait, close (the shim's)."""

LOOPBACKS = ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1"))


def _running(containers: ContainerService, container_id: str) -> ContainerRecord:
    record = containers.get(container_id)
    if record.state != ContainerState.CONTAINER_RUNNING:
        raise FailedPrecondition(f"container {record.id} is not running")
    return record


def exec_process(spec: dict[str, Any], cmd: list[str], tty: bool) -> dict[str, Any]:
    """The OCI process of an exec: the container's own (user, env, cwd, capabilities...) running ``cmd``; with
    a terminal, ``TERM=xterm`` unless the container sets TERM (as containerd and CRI-O do)."""
    process = spec["process"]
    env = list(process.get("env") or [])
    if tty and not any(e.startswith("TERM=") for e in env):
        env.append("TERM=xterm")
    return {**process, "args": list(cmd), "env": env, "terminal": tty}


async def open_exec(containers: ContainerService, container_id: str, cmd: list[str], *, tty: bool,
                    stdin: bool) -> StdioTarget:
    """Start ``cmd`` in a running container with pipes (or a terminal) for a streaming session. Closing the
    target kills the process if it still runs."""
    if not cmd:
        raise InvalidArgument("exec needs a command")
    record = _running(containers, container_id)
    spec = json.loads(await asyncio.to_thread(Path(record.bundle, "config.json").read_text))
    shim = containers.registry.resolve(record.runtime_handler)
    return await shim.exec_interactive(record.id, ExecProcess(
        exec_id=secrets.token_hex(16), process=exec_process(spec, cmd, tty), stdio=Stdio(stdin=stdin, terminal=tty)))


# ---------------------------------------------------------------------------------------------------------
# Attach


async def open_attach(containers: ContainerService, container_id: str, *, tty: bool, stdin: bool) -> StdioTarget:
    """Attach to a running container's main process. Stdin is passed on only when asked for and the container
    was created with stdin; the container's own terminal setting decides the output streams and resizes
    (``tty`` is the client's wish, which kubelet and crictl take from the container anyway)."""
    record = _running(containers, container_id)
    shim = containers.registry.resolve(record.runtime_handler)
    log.debug("attaching to container %s (tty requested %s, container tty %s)", record.id, tty, record.config.tty)
    return await shim.attach(record.id, stdin=stdin and record.config.stdin, terminal=record.config.tty)


# ---------------------------------------------------------------------------------------------------------
# Port-forward


def _loopback_sockets() -> list[tuple[socket.socket, str]]:
    """Unconnected TCP sockets for 127.0.0.1 and ::1 (where IPv6 exists), in the calling thread's namespace."""
    sockets = []
    for family, address in LOOPBACKS:
        try:
            sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        except OSError:
            continue  # no IPv6 in this namespace
        sock.setblocking(False)
        sockets.append((sock, address))
    return sockets


def _close_all(sockets: list[tuple[socket.socket, str]]) -> None:
    for sock, _ in sockets:
        sock.close()


async def dial_pod_port(sandboxes: SandboxService, sandbox_id: str, port: int
                        ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to TCP ``port`` on the pod's loopback (127.0.0.1, then ::1), inside the pod's network namespace;
    on the host's loopback for a host-network pod (as containerd does). NotFound/FailedPrecondition when the pod
    is gone or not ready, Unavailable when nothing accepts the connection."""
    if not 1 <= port <= 65535:
        raise InvalidArgument(f"port {port} is outside 1..65535")
    record = sandboxes.find(sandbox_id)
    if record is None:
        raise NotFound(f"pod sandbox {sandbox_id!r} not found")
    if record.phase != Phase.READY:
        raise FailedPrecondition(f"pod sandbox {record.id} is not ready ({record.phase})")
    if "net" in record.pinned:
        try:
            sockets = await run_in_netns(sandboxes.paths(record.id).namespace("net"), _loopback_sockets,
                                         discard=_close_all)
        except OSError as exc:
            raise FailedPrecondition(f"pod sandbox {record.id} has no usable network namespace: "
                                     f"{exc.strerror or exc}") from None
    else:
        sockets = _loopback_sockets()
    loop = asyncio.get_running_loop()
    errors = []
    connected = None
    try:
        for sock, address in sockets:
            try:
                await loop.sock_connect(sock, (address, port))
            except OSError as exc:
                errors.append(f"{address}: {os.strerror(exc.errno) if exc.errno else exc}")
                continue
            streams = await asyncio.open_connection(sock=sock)
            connected = sock
            return streams
    finally:
        for sock, _ in sockets:
            if sock is not connected:
                sock.close()
    raise Unavailable(f"cannot connect to port {port} in pod sandbox {record.id}: {'; '.join(errors)}")

