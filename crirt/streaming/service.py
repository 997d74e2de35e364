"""The CRI Exec, Attach and PortForward handlers, and the streaming server they hand URLs out of.

The handlers check the request against crirt's state (the container exists and runs, the pod exists and is
ready) and store it under a single-use token; the session itself starts when a client connects to the URL, and
connects to the container or pod through crirt.streaming.targets.
"""

from __future__ import annotations

import asyncio

from crirt.bus import Bus
from crirt.commands.streaming import (
    AttachCommand,
    AttachResult,
    ExecCommand,
    ExecResult,
    PortForwardCommand,
    PortForwardResult,
)
from crirt.config import StreamingConfig
from crirt.containers.records import ContainerRecord
from crirt.containers.service import ContainerService
from crirt.errors import FailedPrecondition, InvalidArgument, NotFound
from crirt.metrics.instruments import StreamMetrics
from crirt.model.enums import ContainerState, PodSandboxState
from crirt.sandboxes.service import SandboxService
from crirt.streaming import targets
from crirt.streaming.requests import AttachRequest, ExecRequest, PortForwardRequest
from crirt.streaming.server import StreamingServer


class StreamingService:
    """Owns the streaming server; validates Exec/Attach/PortForward and connects sessions to their targets."""

    def __init__(self, config: StreamingConfig, containers: ContainerService, sandboxes: SandboxService,
                 sessions: StreamMetrics | None = None) -> None:
        self.containers = containers
        self.sandboxes = sandboxes
        self.server = StreamingServer(config, self, sessions)

    def register(self, bus: Bus) -> None:
        bus.register(ExecCommand, self.exec)
        bus.register(AttachCommand, self.attach)
        bus.register(PortForwardCommand, self.port_forward)

    async def start(self) -> None:
        await self.server.start()

    async def close(self) -> None:
        await self.server.close()

    def _running(self, container_id: str) -> ContainerRecord:
        record = self.containers.get(container_id)
        if record.state != ContainerState.CONTAINER_RUNNING:
            raise FailedPrecondition(f"container {record.id} is not running (state {record.state.name})")
        return record

    async def exec(self, command: ExecCommand) -> ExecResult:
        """A URL that runs ``cmd`` in the running container when a client connects."""
        record = self._running(command.container_id)
        request = ExecRequest(record.id, tuple(command.cmd), tty=command.tty, stdin=command.stdin,
                              stdout=command.stdout, stderr=command.stderr)
        return ExecResult(url=self.server.url(request))

    async def attach(self, command: AttachCommand) -> AttachResult:
        """A URL that attaches to the running container's main process when a client connects."""
        record = self._running(command.container_id)
        request = AttachRequest(record.id, tty=command.tty, stdin=command.stdin, stdout=command.stdout,
                                stderr=command.stderr)
        return AttachResult(url=self.server.url(request))

    async def port_forward(self, command: PortForwardCommand) -> PortForwardResult:
        """A URL that forwards connections into the ready pod's network namespace."""
        sandbox = self.sandboxes.find(command.pod_sandbox_id)
        if sandbox is None:
            raise NotFound(f"pod sandbox {command.pod_sandbox_id!r} not found")
        if sandbox.state != PodSandboxState.SANDBOX_READY:
            raise FailedPrecondition(f"pod sandbox {sandbox.id} is not ready")
        bad = [p for p in command.port if not 0 < p <= 0xFFFF]
        if bad:
            raise InvalidArgument(f"port: {bad[0]} is not a TCP port (1..65535)")
        return PortForwardResult(url=self.server.url(PortForwardRequest(sandbox.id, tuple(command.port))))

    async def open_target(self, request: ExecRequest | AttachRequest) -> targets.StdioTarget:
        """Start the exec (or attach) a client connected for."""
        if isinstance(request, ExecRequest):
            return await targets.open_exec(self.containers, request.container_id, list(request.cmd),
                                           tty=request.tty, stdin=request.stdin)
        return await targets.open_attach(self.containers, request.container_id, tty=request.tty,
                                         stdin=request.stdin)

    async def dial(self, sandbox_id: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A TCP connection to ``port`` inside the pod's network namespace."""
        return await targets.dial_pod_port(self.sandboxes, sandbox_id, port)
