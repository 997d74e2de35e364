"""The shim plugin contract: what crirt asks of a low-level runtime plugin, and the data they exchange.

A plugin is a distribution exposing a ``Shim`` subclass under the entry-point group ``crirt.shims``. crirt
creates one instance per RuntimeClass handler that names it. ``API_VERSION`` follows semver: crirt loads a
plugin only when the plugin's ``api_version`` has the same major number.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from crirt.errors import CrirtError, Unimplemented

API_VERSION = "2.2"
"""1.1: ``Shim.stats_many`` (optional; batched stats). 1.2: ``Shim.reopen_log`` (optional). 2.0: ``attach`` returns a
``ProcessIO``; ``exec`` (detached) and ``pids``, which crirt never called, are gone. 2.1: ``Shim.default_handlers``
and ``Shim.available`` (optional; the handlers served without a ``[runtimes]`` table). 2.2: ``ExitStatus.lost``
(optional; an exit nobody recorded)."""
ENTRY_POINT_GROUP = "crirt.shims"


STATS_FAN_OUT = 8
"""Tasks whose ``stats`` run at the same time in ``stats_of_each``."""


async def stats_of_each(stats: Callable[[str], Awaitable[dict[str, Any]]], task_ids: Sequence[str],
                        fan_out: int = STATS_FAN_OUT) -> dict[str, dict[str, Any]]:
    """Call ``stats`` for every id, ``fan_out`` at a time; ids whose call fails with a CrirtError are left out."""
    slots = asyncio.Semaphore(fan_out)

    async def one(task_id: str) -> tuple[str, dict[str, Any] | None]:
        async with slots:
            try:
                return task_id, await stats(task_id)
            except CrirtError:
                return task_id, None

    return {task_id: sample for task_id, sample in await asyncio.gather(*(one(i) for i in task_ids))
            if sample is not None}


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
    lost: str = ""
    """Set when the task's own exit could not be learned (its monitor died without recording it): why. The
    exit code is then a stand-in, and crirt reports the reason ``Unknown`` with this message (contract 2.2)."""


class ProcessIO(abc.ABC):
    """The standard streams and the life of one interactive process (an exec session, or an attach to a
    container's main process). Used from one event loop; reads and writes may run concurrently."""

    @abc.abstractmethod
    async def write_stdin(self, data: bytes) -> None:
        """Send ``data`` to the process's stdin; waits while the process does not read. Dropped once stdin is
        closed or the process is gone."""

    @abc.abstractmethod
    async def close_stdin(self) -> None:
        """End of input: the process reads EOF. With a terminal stdin stays open (the terminal is the input)."""

    @abc.abstractmethod
    async def read_output(self) -> tuple[int, bytes]:
        """The next chunk of output as (1 for stdout | 2 for stderr, data); (0, b"") once all output ended.
        With a terminal everything arrives as stdout."""

    @abc.abstractmethod
    async def resize(self, width: int, height: int) -> None:
        """Set the terminal's size in columns and rows; nothing happens without a terminal."""

    @abc.abstractmethod
    async def wait(self) -> int:
        """Wait for the process to end and return its exit code (128+N when killed by signal N)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release everything held (idempotent). An exec'd process that still runs is killed and reaped."""


class Shim(abc.ABC):
    """One RuntimeClass handler's access to a low-level runtime. Every method is async and idempotent
    where the CRI needs it (delete of a missing task is not an error)."""

    api_version: ClassVar[str]
    """The contract version the plugin was written for, e.g. ``"1.0"``."""

    needs_infra_container: ClassVar[bool] = False
    """Whether every pod of this handler gets an infra container, not only ``pid: POD`` pods (gVisor: the
    pod's first container creates the sandbox that its other containers join)."""

    default_handlers: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    """Handler name -> options: the handlers crirt serves with this plugin when its configuration has no
    ``[runtimes]`` table, each only if ``available`` accepts its options (e.g. ``{"runsc": {}}``)."""

    @classmethod
    def available(cls, options: Mapping[str, Any]) -> str | None:
        """Whether a default handler with these options can work on this node: ``None``, or why not (e.g. its
        runtime is not installed). Cheap and without side effects: ``crirt serve`` and ``crirt config`` ask it
        while they load a configuration without ``[runtimes]``, before any shim exists."""
        return None

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

    async def exec_sync(self, task_id: str, process: ExecProcess, time_limit: float | None) -> ExecResult:
        """Run the process to completion and return its output; past ``time_limit`` seconds (None: no limit)
        it is killed and the result says ``timed_out``. Optional: a plugin without it answers UNIMPLEMENTED."""
        raise Unimplemented(f"shim plugin {type(self).__name__} does not support exec_sync")

    async def exec_interactive(self, task_id: str, process: ExecProcess) -> ProcessIO:
        """Start the process with its stdio connected to crirt (pipes, or a terminal when
        ``process.stdio.terminal``; stdin only with ``process.stdio.stdin``) for a streaming exec session.
        Returns as soon as the process is being started: a process that cannot start ends with a non-zero exit
        code and the runtime's message on its stderr (or terminal). Optional: a plugin without it answers
        UNIMPLEMENTED."""
        raise Unimplemented(f"shim plugin {type(self).__name__} does not support interactive exec")

    async def reopen_log(self, task_id: str) -> None:
        """Start writing the task's CRI log to a new file at its log path (the kubelet has renamed the old one:
        ReopenContainerLog). Optional: a plugin without it answers UNIMPLEMENTED."""
        raise Unimplemented(f"shim plugin {type(self).__name__} cannot reopen container logs")

    @abc.abstractmethod
    async def attach(self, task_id: str, *, stdin: bool, terminal: bool) -> ProcessIO:
        """Connect to the running task's main process: its output from now on, its stdin (when ``stdin`` and the
        task was created with stdin), terminal resizes (when ``terminal``). Several attachers may be connected at
        once; ``close`` detaches (the task runs on) and ``wait`` returns the task's exit code. FailedPrecondition
        when the task has no stdio to attach to (it has ended)."""

    @abc.abstractmethod
    async def resize(self, task_id: str, exec_id: str | None, width: int, height: int) -> None: ...

    @abc.abstractmethod
    async def update(self, task_id: str, resources: dict[str, Any]) -> None:
        """Apply new OCI ``linux.resources`` to a running task."""

    @abc.abstractmethod
    async def stats(self, task_id: str) -> dict[str, Any]:
        """A sample of the task's counters: ``timestamp`` (unix ns) and ``cpu``, ``memory``, ``process``, ``swap``
        sections named after the CRI's fields (see ``crirt.shim.cgroups.CgroupStats.as_dict``). It sits on the
        kubelet's polling path: read files where the runtime allows it rather than run a program. crirt asks at
        most once per task per ``[stats] collect_interval``."""

    async def stats_many(self, task_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """``stats`` of several tasks at once, for the List*Stats RPCs; tasks whose stats cannot be read are
        left out. By default ``stats`` of at most ``STATS_FAN_OUT`` tasks at a time; a driver that reads files
        overrides it with one batch."""
        return await stats_of_each(self.stats, task_ids)

    async def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release what the plugin holds when crirt shuts down (tasks keep running)."""
