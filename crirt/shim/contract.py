"""The shim plugin contract: what crirt asks of a low-level runtime plugin, and the data they exchange.

A plugin is a distribution exposing a ``Shim`` subclass under the entry-point group ``crirt.shims``. crirt
creates one instance per RuntimeClass handler that names it. ``API_VERSION`` follows semver: crirt loads a
plugin only when the plugin's ``api_version`` has the same major number.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from crirt.errors import Unimplemented

API_VERSION = "1.0"
ENTRY_POINT_GROUP = "crirt.shims"


class _Data(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class HandlerFeatures(_Data):
    """What a handler supports; reported to the kubelet as CRI ``RuntimeHandlerFeatures``."""

    recursive_read_only_mounts: bool = False
    user_namespaces: bool = False


class ShimContext(_Data):
    """Where a plugin instance may keep files: ``root`` persists, ``state`` is cleared at boot."""

    handler: str
    root: Path
    state: Path


class Stdio(_Data):
    """How a task's standard streams are wired: a CRI log file and whether stdin/TTY are kept open."""

    log_path: Path | None = None
    stdin: bool = False
    stdin_once: bool = False
    terminal: bool = False


class CreateTask(_Data):
    """Create (not start) a container from an OCI bundle whose ``config.json`` crirt has written."""

    id: str
    sandbox_id: str
    bundle: Path
    stdio: Stdio = Stdio()
    annotations: dict[str, str] = Field(default_factory=dict)


class ExecProcess(_Data):
    """Run an extra process in a running task, described by an OCI ``process`` object."""

    exec_id: str
    process: dict[str, Any]
    stdio: Stdio = Stdio()


class ExecResult(_Data):
    """What a process run to completion by ``exec_sync`` printed and how it ended (CRI ``ExecSync``)."""

    exit_code: int
    stdout: bytes = b""
    stderr: bytes = b""
    timed_out: bool = False


class TaskState(_Data):
    """A task's state as the low-level runtime reports it."""

    id: str
    status: str  # "created" | "running" | "stopped" | "paused" | "unknown"
    pid: int = 0
    exit_code: int | None = None


class ExitStatus(_Data):
    """How a task or exec process ended; ``exited_at`` is unix nanoseconds."""

    exit_code: int
    exited_at: int
    oom_killed: bool = False


class Shim(abc.ABC):
    """One RuntimeClass handler's access to a low-level runtime. Every method is async and idempotent
    where the CRI needs it (delete of a missing task is not an error)."""

    api_version: ClassVar[str]
    """The contract version the plugin was written for, e.g. ``"1.0"``."""

    def __init__(self, context: ShimContext, options: Mapping[str, Any]) -> None:
        """Validate ``options`` (raise ``ValueError`` naming the bad option) and keep them."""
        self.context = context
        self.options = dict(options)

    @abc.abstractmethod
    async def features(self) -> HandlerFeatures: ...

    @abc.abstractmethod
    async def create(self, task: CreateTask) -> TaskState: ...

    @abc.abstractmethod
    async def start(self, task_id: str) -> TaskState: ...

    @abc.abstractmethod
    async def kill(self, task_id: str, signal: int, all_processes: bool = False) -> None: ...

    @abc.abstractmethod
    async def wait(self, task_id: str) -> ExitStatus: ...

    @abc.abstractmethod
    async def delete(self, task_id: str) -> ExitStatus | None: ...

    @abc.abstractmethod
    async def state(self, task_id: str) -> TaskState: ...

    @abc.abstractmethod
    async def exec(self, task_id: str, process: ExecProcess) -> int:
        """Start the process; return its pid."""

    async def exec_sync(self, task_id: str, process: ExecProcess, time_limit: float | None) -> ExecResult:
        """Run the process to completion and return its output; past ``time_limit`` seconds (None: no limit)
        it is killed and the result says ``timed_out``. Optional: a plugin without it answers UNIMPLEMENTED."""
        raise Unimplemented(f"shim plugin {type(self).__name__} does not support exec_sync")

    @abc.abstractmethod
    async def attach(self, task_id: str) -> Path:
        """Return the path of a unix socket that carries the task's stdio."""

    @abc.abstractmethod
    async def resize(self, task_id: str, exec_id: str | None, width: int, height: int) -> None: ...

    @abc.abstractmethod
    async def update(self, task_id: str, resources: dict[str, Any]) -> None:
        """Apply new OCI ``linux.resources`` to a running task."""

    @abc.abstractmethod
    async def stats(self, task_id: str) -> dict[str, Any]: ...

    @abc.abstractmethod
    async def pids(self, task_id: str) -> list[int]: ...

    async def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release what the plugin holds when crirt shuts down (tasks keep running)."""
