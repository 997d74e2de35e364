"""The shim v2 driver's pods: one shim process per pod, its connection, its start and shutdown, its events;
and the helpers every task API call uses.

``pods/<sandbox id>/`` under the driver's state dir is the working directory of the pod's shim: a copy of the
``config.json`` of the task that started it, the shim's own ``log``, and ``address``, the ttrpc address its
``start`` printed. A restarted crirt connects to that address again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from crirt._gen.containerd.events import TaskOom
from crirt._gen.containerd.services.events.ttrpc.v1 import ForwardRequest
from crirt._gen.containerd.task import v2 as api
from crirt._gen.google.protobuf import Any as AnyMessage
from crirt._gen.google.protobuf import Empty
from crirt._gen.ttrpc import Request
from crirt.errors import CrirtError, Unavailable
from crirt.shim.contract import CreateTask
from crirt.shim.taskv2_start import ShimCommand
from crirt.shim.ttrpc import AckServer, ConnectionLost, M, TtrpcClient

log = logging.getLogger(__name__)

TASK_SERVICE = "containerd.task.v2.Task"
EVENTS_SERVICE = "containerd.services.events.ttrpc.v1.Events"
OOM_TOPIC = "/tasks/oom"
CALL_TIMEOUT = 60.0
"""Seconds a task API call may take (Wait calls have no limit)."""


def any_json(type_url: str, value: Any) -> AnyMessage:
    """An ``Any`` holding a JSON document, as containerd passes OCI spec fragments to shims."""
    return AnyMessage(type_url=type_url, value=json.dumps(value).encode())


def events_address(state_dir: Path) -> str:
    """A per-driver abstract socket name for the shims' events (no path length limit, nothing to clean up)."""
    return "@crirt-events-" + hashlib.sha256(str(state_dir).encode()).hexdigest()[:24]


async def call(client: TtrpcClient, method: str, request: Any, response_type: type[M],
               deadline: float | None = CALL_TIMEOUT) -> M:
    """Call a task API method on a shim."""
    return await client.call(TASK_SERVICE, method, request, response_type, deadline)


class PodShims:
    """The pods' shims of one driver: connections (one per pod, shared by all its tasks), starting a pod's
    shim, shutting it down, and the server their events go to."""

    def __init__(self, command: ShimCommand, state_dir: Path, options: AnyMessage | None,
                 on_oom: Callable[[str], None]) -> None:
        """``options``: the runtime options given on ``start``'s stdin; ``on_oom``: called with the task id
        of a TaskOOM event."""
        self.command = command
        self.state_dir = state_dir
        self.options = options
        self.on_oom = on_oom
        self._clients: dict[str, TtrpcClient] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._events: AckServer | None = None
        self.closed = False

    @property
    def name(self) -> str:
        return self.command.binary.name

    def pod_dir(self, sandbox_id: str) -> Path:
        return self.state_dir / "pods" / sandbox_id

    def _lock(self, sandbox_id: str) -> asyncio.Lock:
        return self._locks.setdefault(sandbox_id, asyncio.Lock())

    async def serve_events(self) -> None:
        """Listen for the shims' events (once)."""
        if self._events is not None:
            return
        try:
            self._events = await AckServer.start(self.command.events_address, self._on_event)
        except OSError as exc:  # another crirt on the same state dir: its server takes the events
            log.warning("cannot serve shim events on %s: %s", self.command.events_address, exc)

    def _on_event(self, request: Request) -> None:
        """Pass on an OOM kill (the other events are not needed: exits come from Wait)."""
        if (request.service, request.method) != (EVENTS_SERVICE, "Forward"):
            return
        envelope = ForwardRequest.parse(request.payload).envelope
        if envelope is not None and envelope.topic == OOM_TOPIC and envelope.event is not None:
            self.on_oom(TaskOom.parse(envelope.event.value).container_id)

    async def client(self, sandbox_id: str) -> TtrpcClient:
        """The connection to the pod's shim; ConnectionLost if it has none or it is gone."""
        if self.closed:
            raise Unavailable(f"the {self.name} driver is closed (crirt is shutting down)")
        client = self._clients.get(sandbox_id)
        if client is not None and not client.closed:
            return client
        async with self._lock(sandbox_id):
            return await self._connect(sandbox_id)

    async def _connect(self, sandbox_id: str) -> TtrpcClient:
        """Connect to the pod's recorded shim (the caller holds the pod's lock)."""
        client = self._clients.get(sandbox_id)
        if client is not None and not client.closed:
            return client
        try:
            address = (self.pod_dir(sandbox_id) / "address").read_text().strip()
        except FileNotFoundError:
            raise ConnectionLost(f"pod {sandbox_id} has no running shim") from None
        client = await TtrpcClient.connect(address)
        self._clients[sandbox_id] = client
        return client

    async def start_for(self, task: CreateTask) -> TtrpcClient:
        """The pod's shim, started for this task if the pod has none (or only a dead one)."""
        if self.closed:
            raise Unavailable(f"the {self.name} driver is closed (crirt is shutting down)")
        await self.serve_events()
        async with self._lock(task.sandbox_id):
            with contextlib.suppress(ConnectionLost):
                return await self._connect(task.sandbox_id)
            pod_dir = self.pod_dir(task.sandbox_id)
            pod_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(task.bundle / "config.json", pod_dir / "config.json")
            (pod_dir / "log").touch()  # the shim logs into "log" in its working directory (it must exist)
            options = bytes(self.options) if self.options is not None else b""
            address = await self.command.start(task.id, pod_dir, options)
            (pod_dir / "address").write_text(address)
            log.info("started %s for pod %s at %s", self.name, task.sandbox_id, address)
            return await self._connect(task.sandbox_id)

    async def release(self, sandbox_id: str, in_use: Callable[[], bool]) -> None:
        """Shut the pod's shim down unless ``in_use()`` (asked under the pod's lock) says it still serves a
        task; forget the pod."""
        async with self._lock(sandbox_id):
            if in_use():
                return
            client = self._clients.pop(sandbox_id, None)
            if client is None:
                with contextlib.suppress(ConnectionLost):
                    client = await self._connect(sandbox_id)
                self._clients.pop(sandbox_id, None)
            if client is not None:
                with contextlib.suppress(CrirtError):
                    await call(client, "Shutdown", api.ShutdownRequest(id=sandbox_id), Empty, 10.0)
                await client.close()
            shutil.rmtree(self.pod_dir(sandbox_id), ignore_errors=True)
        self._locks.pop(sandbox_id, None)

    async def close(self) -> None:
        """Drop every connection and stop serving events; calls waiting on a connection fail with
        ConnectionLost, later ones with Unavailable."""
        self.closed = True
        for client in self._clients.values():
            await client.close()
        self._clients.clear()
        if self._events is not None:
            await self._events.close()
            self._events = None
