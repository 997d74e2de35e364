"""The shim v2 driver: containers run by a ``containerd-shim-*-v2`` binary, driven over its ttrpc task API.

This is containerd's model (Kata's ``containerd-shim-kata-v2``, gVisor's ``containerd-shim-runsc-v1``,
``containerd-shim-runc-v2``). One shim process serves all tasks of a pod (``crirt.shim.taskv2_pods``): the
first task of a sandbox starts it (``start``, see ``crirt.shim.taskv2_start``), later tasks of the same
sandbox are created on the same connection. The shim is the tasks' parent: it keeps their exit status until
Delete, so a restarted crirt reconnects to the address it recorded and carries on. When a pod's last task is
deleted crirt asks the shim to shut down; a shim found dead is cleaned up with its ``delete`` action.

stdio: crirt makes FIFOs for every task; the shim writes the task's output into them and crirt copies it into
the CRI log (``crirt.shim.crilog``) and to the task's attach socket (``crirt.shim.taskv2_attach``), so unlike
the conmon driver the log is written by crirt's process. The shim keeps the FIFOs open, so output written
while crirt is down waits in the pipe (up to its 64 KiB, then the task blocks on its writes, as under
containerd) until the next crirt reopens them. Interactive execs: ``crirt.shim.taskv2_exec``.

Files under the driver's ``state_dir``::

    pods/<sandbox id>/address          the pod's shim's ttrpc address (printed by ``start``)
    pods/<sandbox id>/config.json      the spec of the task that started it; the shim's working directory
    pods/<sandbox id>/log              what the shim itself logs
    tasks/<id>/sandbox                 the sandbox id (which shim serves the task)
    tasks/<id>/bundle                  the task's bundle path
    tasks/<id>/log_path                the CRI log path, if any
    tasks/<id>/stdin|stdout|stderr     the task's FIFOs
    tasks/<id>/stdin_once              present: end of input from an attach client closes stdin
    tasks/<id>/stdin_closed            present: stdin was closed for good
    tasks/<id>/oom                     present: the shim reported an OOM kill
    tasks/<id>/attach                  the attach socket, while crirt serves it
    tasks/<id>/alias/<id>              a symlink to the bundle, the working directory of ``delete``
    tasks/<id>/exec/<exec id>/         the FIFOs of an exec
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import shutil
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crirt._gen.containerd.task import v2 as api
from crirt._gen.containerd.v1.types import Status
from crirt._gen.google.protobuf import Any as AnyMessage
from crirt._gen.google.protobuf import Empty
from crirt._gen.runtimeoptions.v1 import Options as RuntimeOptions
from crirt.errors import CrirtError, FailedPrecondition, InvalidArgument, NotFound
from crirt.shim.attach import SocketAttach
from crirt.shim.cgroups import read_stats
from crirt.shim.contract import (
    CreateTask,
    ExecProcess,
    ExecResult,
    ExitStatus,
    ProcessIO,
    Stdio,
    TaskState,
    stats_of_each,
)
from crirt.shim.crilog import CriLog
from crirt.shim.taskv2_attach import AttachServer
from crirt.shim.taskv2_exec import FifoExec, run_to_end
from crirt.shim.taskv2_pods import PodShims, any_json, call, events_address
from crirt.shim.taskv2_start import ShimCommand, ShimFailure
from crirt.shim.ttrpc import ConnectionLost, TtrpcClient

log = logging.getLogger(__name__)

RESOURCES_URL = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources"
RUNTIME_OPTIONS_URL = "runtimeoptions.v1.Options"
UNKNOWN_EXIT_CODE = 255
"""Reported for a task whose shim died before it could tell the exit code."""
EXEC_OUTPUT_LIMIT = 16 << 20
"""At most this many bytes of each stream of an ``exec_sync`` are kept."""
KILL_WAIT = 10.0
"""Seconds to wait for a task to die after SIGKILL before deleting it anyway."""
OOM_EVENT_WAIT = 20
"""Times 10 ms a SIGKILLed task's exit waits for a late OOM event."""
ATTACH_SETTLE = 0.1
"""Seconds the attach socket waits after the task's exit for the shim to copy the last output."""

_STATUS = {Status.CREATED: "created", Status.RUNNING: "running", Status.STOPPED: "stopped",
           Status.PAUSED: "paused", Status.PAUSING: "paused"}


def cri_runtime_options(config_path: str) -> AnyMessage:
    """The generic runtime options containerd's CRI plugin sends in CreateTaskRequest.options: the path of
    the runtime's own configuration file (Kata's and gVisor's shims read it from here)."""
    return AnyMessage(type_url=RUNTIME_OPTIONS_URL, value=bytes(RuntimeOptions(config_path=config_path)))


def exit_status(code: int, exited_at: datetime.datetime | None, oom_killed: bool = False) -> ExitStatus:
    """A task API exit (status, timestamp) as the contract's ExitStatus; an unset time means now."""
    if exited_at is None or exited_at.year < 1971:
        ns = time.time_ns()
    else:
        ns = int(exited_at.timestamp()) * 1_000_000_000 + exited_at.microsecond * 1000
    return ExitStatus(exit_code=code, exited_at=ns, oom_killed=oom_killed)


def already_finished(error: NotFound) -> bool:
    """Whether a NotFound from Kill means the process has exited (runc shim wording), not an unknown task."""
    return "process already finished" in str(error)


@dataclass(frozen=True)
class TaskFiles:
    """Where the driver keeps one task's files (see the module docstring)."""

    state_dir: Path
    id: str

    @property
    def dir(self) -> Path:
        return self.state_dir / "tasks" / self.id

    def fifo(self, name: str) -> Path:
        return self.dir / name

    @property
    def alias(self) -> Path:
        return self.dir / "alias" / self.id

    def exec_dir(self, exec_id: str) -> Path:
        return self.dir / "exec" / exec_id

    def read(self, name: str) -> str | None:
        try:
            return (self.dir / name).read_text()
        except FileNotFoundError:
            return None


class ShimV2Runtime:
    """Runs tasks through shim v2 binaries, one shim process per pod. Holds connections and log copiers in
    memory; everything needed to find them again is on disk, so a restarted crirt carries on."""

    def __init__(self, *, binary: Path, state_dir: Path, namespace: str = "crirt", env: Mapping[str, str] | None = None,
                 create_options: AnyMessage | None = None) -> None:
        """``binary``: the shim; ``namespace``: containerd namespace given to it; ``env``: extra environment of
        the shim; ``create_options``: runtime options sent with every Create (and on ``start``'s stdin)."""
        self.binary = binary
        self.state_dir = state_dir
        self.create_options = create_options
        self.command = ShimCommand(binary=binary, namespace=namespace, address=str(state_dir / "shim.sock"),
                                   events_address=events_address(state_dir),
                                   publish_binary=shutil.which("true") or "/bin/true", env=dict(env or {}))
        self.pods = PodShims(self.command, state_dir, create_options, self._record_oom)
        self._logs: dict[str, CriLog] = {}
        self._stdin: dict[str, int] = {}
        self._attach: dict[str, AttachServer] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._recovered = False

    @property
    def name(self) -> str:
        return self.binary.name

    def files(self, task_id: str) -> TaskFiles:
        if not task_id or "/" in task_id or task_id in (".", ".."):
            raise InvalidArgument(f"task id {task_id!r} cannot name a file")
        return TaskFiles(self.state_dir, task_id)

    def _own(self, task_id: str) -> TaskFiles:
        files = self.files(task_id)
        if files.read("sandbox") is None:
            raise NotFound(f"task {task_id!r} not found by {self.name}")
        return files

    # -- connections

    async def recover(self) -> None:
        """Once per process: serve the shims' events and reattach the output copiers of existing tasks."""
        if self._recovered:
            return
        self._recovered = True
        self.state_dir.mkdir(parents=True, exist_ok=True)
        await self.pods.serve_events()
        for task_dir in sorted((self.state_dir / "tasks").glob("*")):
            files = TaskFiles(self.state_dir, task_dir.name)
            try:
                self._attach_output(files)
                self._hold_stdin(files)
            except OSError as exc:
                log.warning("reattaching the output of task %s: %s", files.id, exc)

    def _record_oom(self, task_id: str) -> None:
        """A shim reported an OOM kill in the task's cgroup: its exit will say so."""
        with contextlib.suppress(InvalidArgument):
            files = self.files(task_id)
            if files.dir.is_dir():
                (files.dir / "oom").touch()
                log.info("task %s: the OOM killer struck", task_id)

    async def _client(self, files: TaskFiles) -> TtrpcClient:
        """The connection to the shim serving a task; ConnectionLost if that shim is gone."""
        await self.recover()
        sandbox_id = files.read("sandbox")
        if sandbox_id is None:
            raise NotFound(f"task {files.id!r} not found by {self.name}")
        return await self.pods.client(sandbox_id)

    async def _release_pod(self, sandbox_id: str) -> None:
        """Shut the pod's shim down once no task of this driver uses it any more."""
        tasks = self.state_dir / "tasks"
        await self.pods.release(sandbox_id, lambda: any(p.read_text() == sandbox_id for p in tasks.glob("*/sandbox")))

    # -- logs

    def _attach_output(self, files: TaskFiles) -> None:
        """Start copying the task's output FIFOs into its CRI log (if it has one) and to its attach clients,
        unless a copier runs already."""
        stdout, stderr = files.fifo("stdout"), files.fifo("stderr")
        if files.id in self._logs or not stdout.exists():
            return
        log_path = files.read("log_path")
        self._logs[files.id] = CriLog(Path(log_path) if log_path else None, stdout,
                                      stderr if stderr.exists() else None)

    def _hold_stdin(self, files: TaskFiles) -> None:
        """Open the task's stdin FIFO (if it has one, still open) for the attach socket to write to. Held
        open, it also keeps the process waiting for input rather than reading end of file (as with conmon's
        ``--stdin`` while nobody is attached) until ``close_stdin``."""
        stdin = files.fifo("stdin")
        if files.id not in self._stdin and stdin.exists() and not (files.dir / "stdin_closed").exists():
            self._stdin[files.id] = os.open(stdin, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)

    def _detach_log(self, task_id: str) -> None:
        server = self._attach.pop(task_id, None)
        if server is not None:
            server.close()
        copier = self._logs.pop(task_id, None)
        if copier is not None:
            copier.close()
        stdin = self._stdin.pop(task_id, None)
        if stdin is not None:
            os.close(stdin)

    # -- lifecycle

    async def create(self, task: CreateTask) -> TaskState:
        """Create (not start) the task on its pod's shim, starting the shim for the pod's first task. On any
        failure everything made is removed again (and a shim started for nothing is shut down)."""
        files = self.files(task.id)
        if not (task.bundle / "config.json").is_file():
            raise InvalidArgument(f"bundle {task.bundle} of task {task.id!r} has no config.json")
        try:
            files.dir.mkdir(parents=True)
        except FileExistsError:
            raise FailedPrecondition(f"task {task.id!r} already exists in {self.name}") from None
        on_shim = False
        try:
            request = self._prepare(files, task)
            await self.recover()
            client = await self.pods.start_for(task)
            on_shim = True
            response = await call(client, "Create", request, api.CreateTaskResponse)
        except BaseException:
            await asyncio.shield(self._undo_create(files, task.sandbox_id, on_shim))
            raise
        return TaskState(id=task.id, status="created", pid=response.pid)

    def _prepare(self, files: TaskFiles, task: CreateTask) -> api.CreateTaskRequest:
        """Write the task's files and FIFOs; return the Create request naming them."""
        stdio = task.stdio
        (files.dir / "bundle").write_text(str(task.bundle))
        files.alias.parent.mkdir()
        files.alias.symlink_to(task.bundle)
        fifos = stdio_fifos(stdio)
        for name in fifos:
            os.mkfifo(files.fifo(name), 0o600)
        if stdio.log_path is not None:
            (files.dir / "log_path").write_text(str(stdio.log_path))
        if stdio.stdin and stdio.stdin_once:
            (files.dir / "stdin_once").touch()
        self._attach_output(files)
        self._hold_stdin(files)
        (files.dir / "sandbox").write_text(task.sandbox_id)  # last: marks the task as this driver's
        paths = {name: str(files.fifo(name)) if name in fifos else "" for name in ("stdin", "stdout", "stderr")}
        return api.CreateTaskRequest(id=task.id, bundle=str(task.bundle), terminal=stdio.terminal,
                                     options=self.create_options, **paths)

    async def _undo_create(self, files: TaskFiles, sandbox_id: str, on_shim: bool) -> None:
        if on_shim:
            with contextlib.suppress(CrirtError):
                client = await self._client(files)
                await call(client, "Delete", api.DeleteRequest(id=files.id), api.DeleteResponse, 10.0)
        self._remove_files(files)
        with contextlib.suppress(CrirtError):
            await self._release_pod(sandbox_id)

    def _remove_files(self, files: TaskFiles) -> None:
        self._detach_log(files.id)
        shutil.rmtree(files.dir, ignore_errors=True)

    async def start(self, task_id: str) -> TaskState:
        """Start a created task's init process."""
        files = self._own(task_id)
        client = await self._client(files)
        response = await call(client, "Start", api.StartRequest(id=task_id), api.StartResponse)
        return TaskState(id=task_id, status="running", pid=response.pid)

    async def kill(self, task_id: str, sig: int, all_processes: bool = False) -> None:
        """Signal the init process (or, with ``all_processes``, every process). An exited task is fine."""
        files = self._own(task_id)
        try:
            client = await self._client(files)
            await call(client, "Kill", api.KillRequest(id=task_id, signal=int(sig), all=all_processes), Empty)
        except NotFound as exc:
            if not already_finished(exc):
                raise NotFound(f"task {task_id!r} not found by {self.name}") from None
        except ConnectionLost:
            pass  # the shim is gone, and with it the task: nothing left to signal

    async def state(self, task_id: str) -> TaskState:
        """The shim's view of the task, with the exit code once it has stopped."""
        files = self._own(task_id)
        try:
            client = await self._client(files)
            response = await call(client, "State", api.StateRequest(id=task_id), api.StateResponse)
        except NotFound:
            raise NotFound(f"task {task_id!r} not found by {self.name}") from None
        except ConnectionLost:
            return TaskState(id=task_id, status="stopped", exit_code=UNKNOWN_EXIT_CODE)
        status = _STATUS.get(response.status, "unknown")
        if status == "stopped":
            return TaskState(id=task_id, status=status, exit_code=response.exit_status)
        return TaskState(id=task_id, status=status, pid=response.pid)

    async def wait(self, task_id: str) -> ExitStatus:
        """Wait until the task has exited (the Wait call blocks in the shim) and return how. A connection that
        breaks meanwhile is made again; only a shim that cannot be reached any more means the task is gone."""
        files = self._own(task_id)
        lost = 0
        while True:
            try:
                client = await self._client(files)
                response = await call(client, "Wait", api.WaitRequest(id=task_id), api.WaitResponse, None)
                return exit_status(response.exit_status, response.exited_at, await self._oom_killed(files, response))
            except ConnectionLost:
                if self.pods.closed:
                    raise
                lost += 1
                if lost > 1:
                    log.warning("the shim of task %s is gone; its exit code is unknown", task_id)
                    return ExitStatus(exit_code=UNKNOWN_EXIT_CODE, exited_at=time.time_ns())

    @staticmethod
    async def _oom_killed(files: TaskFiles, response: api.WaitResponse | api.DeleteResponse) -> bool:
        """Whether the task's OOM event arrived. It is published before the exit, but on another connection:
        a SIGKILLed task gets a moment for it."""
        oom = files.dir / "oom"
        if response.exit_status == 128 + signal.SIGKILL:
            for _ in range(OOM_EVENT_WAIT):
                if oom.exists():
                    break
                await asyncio.sleep(0.01)
        return oom.exists()

    async def delete(self, task_id: str) -> ExitStatus | None:
        """Remove the task (killing it first if it runs) and its files; return its exit if known. A task this
        driver does not know is not an error. The pod's shim is shut down after its last task."""
        files = self.files(task_id)
        sandbox_id = files.read("sandbox")
        if sandbox_id is None:
            self._remove_files(files)
            return None
        status: ExitStatus | None = None
        try:
            client = await self._client(files)
            state = await self.state(task_id)
            if state.status in ("running", "paused"):
                await self.kill(task_id, signal.SIGKILL, all_processes=True)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wait(task_id), KILL_WAIT)
            response = await call(client, "Delete", api.DeleteRequest(id=task_id), api.DeleteResponse)
            status = exit_status(response.exit_status, response.exited_at, await self._oom_killed(files, response))
        except NotFound:
            pass
        except ConnectionLost:
            status = await self._delete_dead(files)
        self._remove_files(files)
        await self._release_pod(sandbox_id)
        return status

    async def _delete_dead(self, files: TaskFiles) -> ExitStatus | None:
        """Clean up a task whose shim died, with the shim binary's ``delete`` action."""
        bundle = files.read("bundle")
        if not bundle or not Path(bundle).is_dir():
            return None
        try:
            response = await self.command.delete(files.id, Path(bundle), files.alias)
        except (ShimFailure, FailedPrecondition) as exc:
            log.warning("cleaning up task %s after its shim died: %s", files.id, exc)
            return None
        return exit_status(response.exit_status, response.exited_at)

    # -- processes in a running task

    async def _exec_dir(self, task_id: str, process: ExecProcess) -> tuple[TtrpcClient, Path]:
        """The connection for an exec in the task, and the exec's new directory."""
        files = self._own(task_id)
        client = await self._client(files)
        exec_dir = files.exec_dir(self.files(process.exec_id).id)
        exec_dir.mkdir(parents=True)
        return client, exec_dir

    async def exec_sync(self, task_id: str, process: ExecProcess, time_limit: float | None) -> ExecResult:
        """Run a process in the task to completion, capturing its output (see ``taskv2_exec.run_to_end``).
        Past ``time_limit`` seconds it is SIGKILLed and the result is marked ``timed_out``."""
        if process.stdio.terminal or process.process.get("terminal"):
            raise InvalidArgument("exec_sync cannot allocate a terminal")
        state = await self.state(task_id)
        if state.status != "running":
            raise FailedPrecondition(f"task {task_id!r} is {state.status}, not running")
        client, exec_dir = await self._exec_dir(task_id, process)
        try:
            return await run_to_end(client, task_id, process, exec_dir, time_limit, EXEC_OUTPUT_LIMIT)
        finally:
            shutil.rmtree(exec_dir, ignore_errors=True)

    async def exec_interactive(self, task_id: str, process: ExecProcess) -> FifoExec:
        """Start a process in the task for a streaming session, its stdio on FIFOs (see
        ``crirt.shim.taskv2_exec``); with ``process.stdio.terminal`` the shim gives it a terminal. A process
        that cannot start ends with exit code 255 and the shim's message as its output."""
        client, exec_dir = await self._exec_dir(task_id, process)
        try:
            session = FifoExec(client, task_id, process.exec_id, exec_dir, terminal=process.stdio.terminal,
                               stdin=process.stdio.stdin)
        except BaseException:
            shutil.rmtree(exec_dir, ignore_errors=True)
            raise
        await session.start(process.process)
        return session

    async def update(self, task_id: str, resources: dict[str, Any]) -> None:
        """Apply new OCI ``linux.resources`` to the running task."""
        client = await self._client(self._own(task_id))
        await call(client, "Update", api.UpdateTaskRequest(id=task_id, resources=any_json(RESOURCES_URL,
                                                                                                 resources)), Empty)

    async def stats(self, task_id: str) -> dict[str, Any]:
        """A sample of the task's cgroup counters, read from the cgroup of the pid the shim reports (the
        task API's own Stats answer is a runtime-specific Any that crirt does not decode)."""
        state = await self.state(task_id)
        if state.pid <= 0:
            raise FailedPrecondition(f"task {task_id!r} is {state.status}: no cgroup to read")
        try:
            return read_stats(state.pid).as_dict()
        except ProcessLookupError:
            raise FailedPrecondition(f"task {task_id!r} exited while reading its stats") from None

    async def reopen_log(self, task_id: str) -> None:
        """Start a new CRI log file: crirt writes the task's log itself (from its FIFOs)."""
        files = self._own(task_id)
        copier = self._logs.get(files.id)
        if copier is None:
            raise FailedPrecondition(f"task {task_id!r} has no log being written")
        copier.reopen()

    async def stats_many(self, task_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """``stats`` of each task (a call to its shim each), a few at a time."""
        return await stats_of_each(self.stats, task_ids)

    async def resize(self, task_id: str, exec_id: str | None, width: int, height: int) -> None:
        """Resize the terminal of the task (or of one of its execs)."""
        client = await self._client(self._own(task_id))
        request = api.ResizePtyRequest(id=task_id, exec_id=exec_id or "", width=width, height=height)
        await call(client, "ResizePty", request, Empty)

    async def close_stdin(self, task_id: str) -> None:
        """End the task's input: the shim drops its hold on the stdin FIFO (CloseIO) and so does crirt, so
        the process reads end of file. For good: a restarted crirt does not open it again."""
        files = self._own(task_id)
        client = await self._client(files)
        await call(client, "CloseIO", api.CloseIoRequest(id=task_id, stdin=True), Empty)
        (files.dir / "stdin_closed").touch()
        server = self._attach.get(task_id)
        if server is not None:
            server.stop_input()
        stdin = self._stdin.pop(task_id, None)
        if stdin is not None:
            os.close(stdin)

    async def connect(self, task_id: str) -> api.ConnectResponse:
        """The shim's pid, the task's pid and the shim's version."""
        client = await self._client(self._own(task_id))
        return await call(client, "Connect", api.ConnectRequest(id=task_id), api.ConnectResponse)

    async def attach(self, task_id: str, *, stdin: bool, terminal: bool) -> ProcessIO:
        """A client of the task's attach socket (``crirt.shim.attach``), which crirt serves with conmon's framing
        (so the conmon driver's attacher works here too) until the task ends."""
        path = await self._attach_socket(task_id)

        async def exit_code() -> int:
            return (await self.wait(task_id)).exit_code

        return await SocketAttach.connect(path, task_id, stdin=stdin, terminal=terminal,
                                          resize=lambda w, h: self.resize(task_id, None, w, h), wait=exit_code)

    async def _attach_socket(self, task_id: str) -> Path:
        """The task's attach socket (see ``crirt.shim.taskv2_attach``), served by crirt until the task ends."""
        files = self._own(task_id)
        await self.recover()
        server = self._attach.get(task_id)
        if server is not None:
            return server.path
        copier = self._logs.get(task_id)
        if copier is None:
            raise FailedPrecondition(f"task {task_id!r} has no output to attach to")
        end_of_input = (lambda: self.close_stdin(task_id)) if (files.dir / "stdin_once").exists() else None
        server = AttachServer(files.dir / "attach", self._stdin.get(task_id), end_of_input)
        copier.listeners.append(server.output)
        self._attach[task_id] = server
        watcher = asyncio.get_running_loop().create_task(self._end_attach(task_id, server))
        self._background.add(watcher)
        watcher.add_done_callback(self._background.discard)
        return server.path

    async def _end_attach(self, task_id: str, server: AttachServer) -> None:
        """When the task ends: send its last output to the attached clients and close their connections."""
        with contextlib.suppress(CrirtError):
            await self.wait(task_id)
        await asyncio.sleep(ATTACH_SETTLE)
        copier = self._logs.get(task_id)
        if copier is not None:
            copier.drain()
            with contextlib.suppress(ValueError):
                copier.listeners.remove(server.output)
        if self._attach.get(task_id) is server:
            del self._attach[task_id]
        server.close()

    async def close(self) -> None:
        """Drop connections and log copiers (the shims and their tasks keep running). Calls still waiting, and
        any later ones, fail with ConnectionLost: a closed driver is done (crirt is shutting down)."""
        for task in list(self._background):
            task.cancel()
        for task_id in list(self._logs):
            self._detach_log(task_id)
        await self.pods.close()


def stdio_fifos(stdio: Stdio) -> list[str]:
    """The FIFOs a task with ``stdio`` gets: stdout and stderr (a terminal merges them into stdout), stdin
    when asked for."""
    return ["stdout"] + ([] if stdio.terminal else ["stderr"]) + (["stdin"] if stdio.stdin else [])
