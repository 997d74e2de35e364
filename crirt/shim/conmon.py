"""The OCI-CLI + conmon driver: containers run by an OCI runtime CLI (runc, crun, runsc), monitored by conmon.

This is CRI-O's model. For every container crirt starts one ``conmon`` (a small C program) in a new session;
conmon forks once more, asks the runtime to ``create`` the container, reports the container's pid on a sync
pipe, then stays with the container for its whole life: it owns the container's stdio, writes the CRI-format
log, serves the attach socket and the control fifo (terminal resize), and writes the exit code to a file in
the exit directory when the container ends. Nothing of it lives in crirt's process, so containers keep
running, logging and reporting their exit while crirt restarts; a new crirt finds everything again from the
files below and the runtime's own state. Every other operation (start, kill, state, exec, update, ps,
delete) is a plain call of the runtime's CLI, always with the same global flags (``--root`` plus any extra
ones: runsc needs e.g. ``--network=host`` on every call).

Files under the driver's ``state_dir``::

    exits/<id>                  exit code, written by conmon (--exit-dir); its mtime is the exit time
    sockets/<id> -> <bundle>    symlink made by conmon; the attach socket is sockets/<id>/attach
    containers/<id>/            conmon's working and --persist-dir directory
        conmon.pid              conmon's pid (-P)
        pid                     the container's init pid (-p, written by the runtime)
        started                 made once the container was started
        log-path                the path of the container's CRI log, if it has one
        conmon.log              what conmon printed before it detached (its errors end up here)
        oom                     created by conmon when the kernel OOM-killed the container
        exec/<exec-id>/         process.json and pid file of an exec; runtime.log of an interactive exec
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crirt.errors import AlreadyExists, CrirtError, FailedPrecondition, InvalidArgument, NotFound
from crirt.proc import Completed, ProcessTimeout, nonblocking_pipe, read_pipe, readable, wait_exit
from crirt.proc import run as run_process
from crirt.shim.attach import SocketAttach
from crirt.shim.cgroups import read_stats
from crirt.shim.contract import CreateTask, ExecProcess, ExecResult, ExitStatus, ProcessIO, Stdio, TaskState
from crirt.shim.exitwatch import ExitWatcher
from crirt.shim.interactive import ForegroundExec, read_pid_file

log = logging.getLogger(__name__)

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
"""Container and exec ids become file names, so they are restricted to a safe alphabet."""

UNKNOWN_EXIT_CODE = 255
"""Reported when a container is gone but conmon died before it could record the exit code."""

EXEC_OUTPUT_LIMIT = 16 << 20
"""At most this many bytes of an ``exec_sync``'s stdout and stderr together are kept; the rest is read and
dropped (the kubelet's own limit)."""

EXEC_DRAIN = 0.5
"""Seconds ``exec_sync`` waits, once the process has exited, for output a background child of it still holds
open (a probe like ``sh -c 'echo ok; sleep 100 &'``); then it answers with what was read."""

EXEC_KILL_WAIT = 5.0
"""Seconds the runtime gets to exit after ``exec_sync`` killed its process at the time limit."""

KILLED_EXIT_CODE = 137

CTL_RESIZE = 1
"""conmon's control fifo message type for a terminal resize (``"1 <height> <width>\\n"``)."""

CTL_REOPEN_LOG = b"2 0 0\n"
"""conmon's control fifo message asking it to reopen the log file."""

REOPEN_WAIT = 2.0
"""Seconds ``reopen_log`` waits for conmon to create the new log file (conmon reopens it after reading its fifo)."""

MAX_TERMINAL_SIZE = 1000
"""conmon ignores resize messages with more rows or columns than this."""


class RuntimeFailure(CrirtError):
    """The OCI runtime or conmon failed; the message says which command and what the runtime printed.

    Not one of the mapped error kinds, so the gRPC front end answers UNKNOWN with this message, as CRI-O and
    containerd do for runtime errors.
    """


# ---------------------------------------------------------------------------------------------------------
# Pure helpers


def check_id(value: str, what: str = "container id") -> str:
    """Return ``value`` if it is safe to use as a file name; InvalidArgument otherwise."""
    if not ID_PATTERN.fullmatch(value):
        raise InvalidArgument(f"{what} {value!r} must match {ID_PATTERN.pattern}")
    return value


@dataclass(frozen=True)
class ContainerFiles:
    """Where the driver and conmon keep one container's files (see the module docstring)."""

    state_dir: Path
    id: str

    @property
    def dir(self) -> Path:
        return self.state_dir / "containers" / self.id

    @property
    def conmon_pid(self) -> Path:
        return self.dir / "conmon.pid"

    @property
    def pid(self) -> Path:
        return self.dir / "pid"

    @property
    def conmon_log(self) -> Path:
        return self.dir / "conmon.log"

    @property
    def log_path(self) -> Path:
        """Holds the path of the container's CRI log (absent without one): what ``reopen_log`` waits for."""
        return self.dir / "log-path"

    @property
    def started(self) -> Path:
        """Made by ``start``: the container has been started (so an exec need not ask the runtime)."""
        return self.dir / "started"

    @property
    def oom(self) -> Path:
        return self.dir / "oom"

    @property
    def exit(self) -> Path:
        return self.state_dir / "exits" / self.id

    @property
    def socket_link(self) -> Path:
        return self.state_dir / "sockets" / self.id

    @property
    def attach(self) -> Path:
        return self.socket_link / "attach"

    def exec_dir(self, exec_id: str) -> Path:
        return self.dir / "exec" / exec_id


def conmon_argv(*, conmon: Path, runtime: Path, runtime_args: Sequence[str], files: ContainerFiles, bundle: Path,
                stdio: Stdio, systemd_cgroup: bool) -> list[str]:
    """The command line that makes conmon create container ``files.id`` from ``bundle``."""
    cid = files.id
    argv = [
        str(conmon), "--api-version", "1",
        "-c", cid, "-u", cid, "-n", cid,
        "-r", str(runtime), "-b", str(bundle),
        "-p", str(files.pid), "-P", str(files.conmon_pid), "--persist-dir", str(files.dir),
        "--exit-dir", str(files.exit.parent), "--socket-dir-path", str(files.socket_link.parent),
        "-l", f"k8s-file:{stdio.log_path}" if stdio.log_path is not None else "none",
    ]
    argv += [f"--runtime-arg={arg}" for arg in runtime_args]
    if systemd_cgroup:
        argv.append("--systemd-cgroup")
    if stdio.terminal:
        argv.append("--terminal")
    if stdio.stdin:
        argv.append("--stdin")
        if not stdio.stdin_once:
            argv.append("--leave-stdin-open")
    return argv


def exec_conmon_argv(*, conmon: Path, runtime: Path, runtime_args: Sequence[str], container_id: str,
                     exec_dir: Path, exec_args: Sequence[str]) -> list[str]:
    """The command line that makes conmon run the process of ``exec_dir/process.json`` in a container and report
    its pid and exit code on the sync pipe, as CRI-O's ExecSync does.

    conmon runs ``runtime exec --detach`` and, as a child subreaper, waits for the process itself, so it reports
    the exit as soon as the process ends, whoever still holds its output. ``--sync``: conmon stays the caller's
    child (no daemon); ``-l passthrough``: the process gets conmon's own stdout and stderr (the caller's pipes)
    rather than conmon's; ``--log-level error``: conmon's warnings would land in the process's stderr.
    ``exec_args`` go to the runtime's ``exec`` (``--runtime-opt``)."""
    return [
        str(conmon), "--api-version", "1", "--sync", "--exec", "-c", container_id, "-u", exec_dir.name,
        "-r", str(runtime), "-p", str(exec_dir / "pid"), "--exec-process-spec", str(exec_dir / "process.json"),
        "-l", "passthrough", "--log-level", "error",
        *[f"--runtime-arg={arg}" for arg in runtime_args], *[f"--runtime-opt={arg}" for arg in exec_args],
    ]


def parse_exec_report(text: bytes) -> tuple[int | None, int | None]:
    """conmon's sync pipe messages of an exec: (the process's pid, its exit code), each None if conmon did not
    send it (the runtime could not start the process; conmon died before the process ended)."""
    values = [parse_sync_message(line)[0] for line in text.splitlines() if line.strip()]
    if not values or values[0] <= 0:
        return None, None
    return values[0], values[1] if len(values) > 1 else None


def parse_sync_message(line: bytes) -> tuple[int, str]:
    """conmon's sync pipe message ``{"data": N, "message": "..."}``: the container pid, or -1 and the error."""
    try:
        message = json.loads(line)
        return int(message["data"]), str(message.get("message", ""))
    except (ValueError, KeyError, TypeError) as exc:
        raise RuntimeFailure(f"conmon sent an unreadable sync message: {line[:200]!r}") from exc


_LOGRUS_MSG = re.compile(r'\bmsg="((?:[^"\\]|\\.)*)"')


def runtime_error_text(output: str, limit: int = 2000) -> str:
    """The human part of what a runtime printed on failure, trimmed to ``limit`` characters.

    runc and runsc log through logrus (``time=... level=error msg="..."``) or, with ``--log-format json``,
    one JSON object per line; crun prints plain text. The messages are extracted and joined.
    """
    messages = []
    for raw in output.splitlines():
        line = raw.strip()
        if not line:
            continue
        text = line
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                text = str(json.loads(line).get("msg", line))
        elif match := _LOGRUS_MSG.search(line):
            text = json.loads(f'"{match.group(1)}"') if "\\" in match.group(1) else match.group(1)
        messages.append(text.strip())
    joined = "; ".join(m for m in messages if m)
    return joined if len(joined) <= limit else joined[: limit - 3] + "..."


def looks_missing(text: str) -> bool:
    """Whether a runtime's error text says the container does not exist (runc, crun, runsc wordings)."""
    lowered = text.lower()
    return any(phrase in lowered for phrase in ("does not exist", "not found", "no such file or directory"))


@dataclass(frozen=True)
class RuntimeState:
    """The fields of the OCI ``state`` output the driver uses."""

    id: str
    status: str
    pid: int


def parse_state(text: str) -> RuntimeState:
    """The JSON printed by ``runtime state ID``."""
    data = json.loads(text)
    return RuntimeState(id=data["id"], status=data["status"], pid=int(data.get("pid") or 0))


def parse_exit_code(text: str) -> int:
    """The content of a conmon exit file: the exit code in decimal (128+N for a signal)."""
    return int(text.strip())


def is_conmon_of(cmdline: bytes, container_id: str) -> bool:
    """Whether a ``/proc/PID/cmdline`` is a conmon monitoring ``container_id`` (guards against pid reuse)."""
    args = cmdline.split(b"\0")
    cid = container_id.encode()
    return (bool(args) and os.path.basename(args[0]) == b"conmon"
            and any(a == b"-c" and b == cid for a, b in itertools.pairwise(args)))


def resize_message(width: int, height: int) -> bytes:
    """The control fifo line asking conmon to resize the container's terminal."""
    return f"{CTL_RESIZE} {height} {width}\n".encode()


# ---------------------------------------------------------------------------------------------------------
# Small process helpers


def _conmon_pid(files: ContainerFiles) -> int | None:
    """conmon's pid if its pid file names a live conmon of this container."""
    try:
        pid = int(files.conmon_pid.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None
    return pid if is_conmon_of(cmdline, files.id) else None


def _read_available(fd: int) -> bytes:
    """What a non-blocking pipe holds now, up to EOF (its writers are gone) or until it is empty."""
    chunks = []
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _kill_quietly(pid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


# ---------------------------------------------------------------------------------------------------------
# The driver


class ConmonRuntime:
    """Runs containers with an OCI runtime CLI under conmon. One instance per runtime configuration; it holds
    no per-container state in memory, so any instance (e.g. in a restarted crirt) can drive any container
    created with the same ``state_dir`` and runtime root.

    Besides the contract's task methods, its public names are the driver API that plugins may build on
    (versioned with ``API_VERSION``, see docs/plugins.md): ``files``/``owned``, ``known_to_runtime``,
    ``run_runtime``/``runtime_call``/``container_call``, ``exit_status``, and the hooks ``conmon_command``, ``discard``,
    ``exec_flags`` and ``kill_exec``. Names with a leading underscore may change in any release."""

    def __init__(self, *, runtime: Path, root: Path, state_dir: Path, conmon: Path,
                 global_args: Sequence[str] = (), systemd_cgroup: bool = False,
                 command_timeout: float = 60.0, sweep_interval: float = 30.0) -> None:
        """``runtime``/``conmon``: binaries; ``root``: the runtime's ``--root``; ``global_args``: extra flags
        given to the runtime on every call; ``command_timeout``: seconds before a hung runtime call is killed;
        ``sweep_interval``: seconds between checks for exits that no event reported (conmon killed)."""
        self.runtime = runtime
        self.root = root
        self.state_dir = state_dir
        self.conmon = conmon
        self.systemd_cgroup = systemd_cgroup
        self.command_timeout = command_timeout
        self.global_args = [f"--root={root}", *(["--systemd-cgroup"] if systemd_cgroup else []), *global_args]
        self._exits = ExitWatcher(state_dir / "exits", self._check_exit, sweep_interval)

    @property
    def name(self) -> str:
        return self.runtime.name

    def files(self, container_id: str) -> ContainerFiles:
        return ContainerFiles(self.state_dir, check_id(container_id))

    def owned(self, container_id: str) -> ContainerFiles:
        """The files of a container this driver created; NotFound if there are none."""
        files = self.files(container_id)
        if not files.dir.is_dir():
            raise NotFound(f"container {container_id!r} not found by {self.name}")
        return files

    # -- running the runtime CLI

    async def run_runtime(self, args: list[str], **options: Any) -> Completed:
        """Run ``runtime <global args> <args>`` with ``options`` (those of ``crirt.shim.run_program``: stdin,
        output, ...); RuntimeFailure if it outlives ``command_timeout``."""
        try:
            return await run_process([str(self.runtime), *self.global_args, *args], time_limit=self.command_timeout,
                                     grace=self.command_timeout, **options)
        except ProcessTimeout:
            raise RuntimeFailure(f"{self.name} {args[0]} did not finish within {self.command_timeout:g}s") from None

    async def runtime_call(self, *args: str) -> tuple[int, str, str]:
        """Run ``runtime <global args> <args>``; return (exit code, stdout, stderr). Killed past
        ``command_timeout``; a cancelled caller lets it finish first, so no runtime step is cut in half."""
        done = await self.run_runtime(list(args))
        return done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")

    async def container_call(self, container_id: str, *args: str) -> str:
        """Run a runtime command about an existing container; NotFound if the runtime does not know it,
        RuntimeFailure with the runtime's message for any other failure."""
        check_id(container_id)
        code, out, err = await self.runtime_call(*args)
        if code != 0:
            if await self._lookup(container_id) is None:
                raise NotFound(f"container {container_id!r} not found by {self.name}")
            raise RuntimeFailure(f"{self.name} {args[0]} {container_id}: {runtime_error_text(err) or f'exit {code}'}")
        return out

    def known_to_runtime(self, container_id: str) -> bool:
        """Whether the runtime keeps state for the id under its root, checked without running it: runc and crun
        keep a directory named after the container, runsc files whose names start with it."""
        try:
            return any(entry.name.startswith(container_id) for entry in os.scandir(self.root))
        except FileNotFoundError:
            return False

    async def _lookup(self, container_id: str) -> RuntimeState | None:
        """The runtime's state of a container, None if it does not know the id."""
        code, out, err = await self.runtime_call("state", container_id)
        if code == 0:
            return parse_state(out)
        text = runtime_error_text(err)
        if looks_missing(text):
            return None
        raise RuntimeFailure(f"{self.name} state {container_id}: {text or f'exit {code}'}")

    async def features(self) -> dict[str, Any] | None:
        """The runtime's ``features`` JSON (OCI runtime features), None if it has no such command."""
        code, out, _ = await self.runtime_call("features")
        if code != 0:
            return None
        try:
            features = json.loads(out)
        except ValueError:
            return None
        return features if isinstance(features, dict) else None

    # -- lifecycle

    async def create(self, task: CreateTask) -> TaskState:
        """Create (not start) the container through conmon and return its state with the init pid.

        On any failure, and on cancellation, everything this call made is removed again (``discard``): conmon,
        the runtime's container and the files."""
        self._check_new(task)
        files = await self._fresh_files(task.id)
        try:
            if task.stdio.log_path is not None:
                files.log_path.write_text(str(task.stdio.log_path))
            pid = await self._spawn_conmon(files, await self.conmon_command(task, files))
        except BaseException:
            await asyncio.shield(self.discard(files))
            raise
        return TaskState(id=task.id, status="created", pid=pid)

    async def conmon_command(self, task: CreateTask, files: ContainerFiles) -> list[str]:
        """The conmon command line that creates ``task`` (hook: a driver may put its own files in ``files.dir``
        and run another program as conmon's runtime; what it makes there ``discard`` removes on failure)."""
        return conmon_argv(conmon=self.conmon, runtime=self.runtime, runtime_args=self.global_args, files=files,
                           bundle=task.bundle, stdio=task.stdio, systemd_cgroup=self.systemd_cgroup)

    def _check_new(self, task: CreateTask) -> None:
        """What must hold before a container is created: a bundle, a log directory, an id not yet taken."""
        if not (task.bundle / "config.json").is_file():
            raise InvalidArgument(f"bundle {task.bundle} of container {task.id!r} has no config.json")
        log_path = task.stdio.log_path
        if log_path is not None and not log_path.parent.is_dir():
            raise InvalidArgument(f"log directory {log_path.parent} of container {task.id!r} does not exist")
        if self.known_to_runtime(task.id):
            raise AlreadyExists(f"container {task.id!r} already exists in {self.name}")

    async def _fresh_files(self, container_id: str) -> ContainerFiles:
        """The container's directories, empty: leftovers of an earlier attempt are removed first."""
        files = self.files(container_id)
        if files.dir.exists():
            log.warning("removing leftovers of an earlier attempt to create container %s", container_id)
            await self.discard(files)
        for directory in (files.dir, files.exit.parent, files.socket_link.parent, self.root):
            directory.mkdir(parents=True, exist_ok=True)
        return files

    async def _spawn_conmon(self, files: ContainerFiles, argv: list[str]) -> int:
        """Start conmon in its own session and read the container pid it reports on the sync pipe."""
        read_fd, write_fd = nonblocking_pipe()
        try:
            try:
                conmon_log = os.open(files.conmon_log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
                try:
                    # Popen (vfork) rather than the loop's spawn: much cheaper on uvloop (see crirt.proc).
                    child = subprocess.Popen(  # noqa: ASYNC220 - returns once the child has exec'd
                        argv, stdin=subprocess.DEVNULL, stdout=conmon_log, stderr=conmon_log, cwd=files.dir,
                        env={**os.environ, "_OCI_SYNCPIPE": str(write_fd)}, pass_fds=(write_fd,),
                        start_new_session=True)
                finally:
                    os.close(conmon_log)
            finally:
                os.close(write_fd)  # from now on EOF on the sync pipe means conmon is gone
            waiting = asyncio.ensure_future(wait_exit(child))
            try:
                # The process we started only forks the real monitor and exits.
                code = await asyncio.wait_for(asyncio.shield(waiting), self.command_timeout)
                if code != 0:
                    raise RuntimeFailure(f"conmon failed for container {files.id} (exit {code}): "
                                         f"{self._conmon_output(files)}")
                line = (await asyncio.wait_for(read_pipe(read_fd, line=True), self.command_timeout)).split(b"\n")[0]
            except TimeoutError:
                raise RuntimeFailure(f"{self.name} create {files.id} did not finish within "
                                     f"{self.command_timeout:g}s") from None
            finally:
                if child.poll() is None:
                    child.kill()
                await waiting
        finally:
            os.close(read_fd)
        if not line:
            raise RuntimeFailure(f"conmon exited before reporting container {files.id}'s pid: "
                                 f"{self._conmon_output(files)}")
        pid, message = parse_sync_message(line)
        if pid <= 0:
            raise RuntimeFailure(f"{self.name} create {files.id}: {runtime_error_text(message) or 'failed'}")
        return pid

    @staticmethod
    def _conmon_output(files: ContainerFiles) -> str:
        try:
            text = files.conmon_log.read_text(errors="replace").strip()
        except FileNotFoundError:
            text = ""
        return text[-2000:] or "no output"

    async def discard(self, files: ContainerFiles) -> None:
        """Remove a container whatever its state: conmon, the runtime's container, the files (hook: a driver
        that made more extends it)."""
        conmon_pid = _conmon_pid(files)
        if conmon_pid is not None:
            _kill_quietly(conmon_pid)
        code, _, err = await self.runtime_call("delete", "--force", files.id)
        if code != 0 and not looks_missing(runtime_error_text(err)):
            log.warning("%s delete --force %s failed: %s", self.name, files.id, runtime_error_text(err))
        await asyncio.to_thread(self._remove_files, files)

    @staticmethod
    def _remove_files(files: ContainerFiles) -> None:
        with contextlib.suppress(OSError):
            bundle = Path(os.readlink(files.socket_link))
            for fifo in ("ctl", "winsz"):  # conmon's control fifos; the bundle itself belongs to the caller
                (bundle / fifo).unlink(missing_ok=True)
        files.socket_link.unlink(missing_ok=True)
        files.exit.unlink(missing_ok=True)
        shutil.rmtree(files.dir, ignore_errors=True)

    async def start(self, container_id: str) -> TaskState:
        """Start a created container's init process."""
        await self.container_call(container_id, "start", container_id)
        files = self.files(container_id)
        files.started.touch()
        return TaskState(id=container_id, status="running", pid=read_pid_file(files.pid) or 0)

    async def kill(self, container_id: str, sig: int, all_processes: bool = False) -> None:
        """Signal the init process (or every process, with ``all_processes``). A stopped container has
        nothing to signal: that is not an error, so stopping twice or racing an exit is harmless."""
        args = ["kill", *(["--all"] if all_processes else []), check_id(container_id), str(int(sig))]
        code, _, err = await self.runtime_call(*args)
        if code == 0:
            return
        state = await self._lookup(container_id)
        if state is None:
            raise NotFound(f"container {container_id!r} not found by {self.name}")
        if state.status != "stopped":
            raise RuntimeFailure(f"{self.name} kill {container_id}: {runtime_error_text(err) or f'exit {code}'}")

    async def state(self, container_id: str) -> TaskState:
        """The runtime's view of the container, with the exit code once it has stopped."""
        state = await self._lookup(check_id(container_id))
        if state is None:
            raise NotFound(f"container {container_id!r} not found by {self.name}")
        if state.status == "stopped":
            exit_status = self.exit_status(container_id)
            return TaskState(id=state.id, status=state.status,
                             exit_code=exit_status.exit_code if exit_status is not None else None)
        return TaskState(id=state.id, status=state.status, pid=state.pid)

    def exit_status(self, container_id: str) -> ExitStatus | None:
        """The exit recorded by conmon, or None while the container runs (or if nothing was recorded)."""
        files = self.files(container_id)
        try:
            text = files.exit.read_text()
            exited_at = files.exit.stat().st_mtime_ns
        except FileNotFoundError:
            return None
        return ExitStatus(exit_code=parse_exit_code(text), exited_at=exited_at, oom_killed=files.oom.exists())

    async def wait(self, container_id: str) -> ExitStatus:
        """Wait until the container has exited and return how.

        conmon's exit file arrives as an inotify event (one watch for every container of the driver, see
        ``crirt.shim.exitwatch``); it works for containers created by an earlier crirt process too."""
        status = self.exit_status(container_id)
        if status is not None:
            return status
        return await self._exits.wait(check_id(container_id))

    async def _check_exit(self, container_id: str) -> ExitStatus | None:
        """The container's exit if it has ended, None while it runs. If conmon is gone without writing the file
        (it was killed), the runtime decides: a stopped or vanished container gets ``UNKNOWN_EXIT_CODE``."""
        status = self.exit_status(container_id)
        if status is not None:
            return status
        files = self.files(container_id)
        if _conmon_pid(files) is not None:
            return None
        status = self.exit_status(container_id)  # conmon may have written it just before exiting
        if status is not None:
            return status
        state = await self._lookup(container_id)
        if state is None and not files.dir.exists():
            raise NotFound(f"container {container_id!r} not found by {self.name}")
        if state is None or state.status == "stopped":
            log.warning("conmon of container %s is gone and left no exit code", container_id)
            return ExitStatus(exit_code=UNKNOWN_EXIT_CODE, exited_at=time.time_ns(),
                              lost="the container's monitor (conmon) died without recording its exit")
        return None  # no monitor, but the runtime says it runs: the next sweep asks again

    async def delete(self, container_id: str) -> ExitStatus | None:
        """Remove the container (killing it if it still runs) and its files; return its exit if known.
        Deleting a container that does not exist is not an error."""
        files = self.files(container_id)
        if not files.dir.exists() and not self.known_to_runtime(container_id):
            return None
        code, _, err = await self.runtime_call("delete", "--force", container_id)
        if code != 0 and not looks_missing(runtime_error_text(err)):
            raise RuntimeFailure(f"{self.name} delete {container_id}: {runtime_error_text(err) or f'exit {code}'}")
        await self._wait_for_conmon_exit(files, grace=5.0)
        status = self.exit_status(container_id)
        await asyncio.to_thread(self._remove_files, files)
        return status

    @staticmethod
    async def _wait_for_conmon_exit(files: ContainerFiles, grace: float) -> None:
        """Give conmon ``grace`` seconds to record the exit and leave (told by a pidfd); kill it if it lingers."""
        pid = _conmon_pid(files)
        if pid is None:
            return
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return
        try:
            await asyncio.wait_for(readable(pidfd), grace)
        except TimeoutError:
            log.warning("conmon %d of container %s did not exit; killing it", pid, files.id)
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        finally:
            os.close(pidfd)

    # -- processes in a running container

    def _write_exec_spec(self, files: ContainerFiles, exec_id: str, process: dict[str, Any]) -> Path:
        exec_dir = files.exec_dir(check_id(exec_id, "exec id"))
        exec_dir.mkdir(parents=True, exist_ok=True)
        spec = exec_dir / "process.json"
        spec.write_text(json.dumps(process))
        return exec_dir

    async def exec_sync(self, container_id: str, process: ExecProcess, time_limit: float | None) -> ExecResult:
        """Run a process in the container to completion and capture its output. Past ``time_limit`` seconds the
        process is SIGKILLed and the result is marked ``timed_out``.

        conmon runs the exec (``exec_conmon_argv``) and reports the exit as soon as the process ends; what the
        process printed is read from crirt's own pipes, and a background child still holding them gets
        ``EXEC_DRAIN`` seconds more (kubernetes#92057): what was read by then is the answer."""
        if process.stdio.terminal or process.process.get("terminal"):
            raise InvalidArgument("exec_sync cannot allocate a terminal")
        files = self.owned(container_id)
        if self.exit_status(container_id) is not None:
            raise FailedPrecondition(f"container {container_id!r} has stopped, not running")
        if not files.started.exists():  # created and not started (or started by a crirt that kept no mark)
            state = await self._lookup(container_id)
            if state is None or state.status != "running":
                raise FailedPrecondition(f"container {container_id!r} is {state.status if state else 'gone'}, "
                                         "not running")
        exec_dir = self._write_exec_spec(files, process.exec_id, process.process)
        argv = exec_conmon_argv(conmon=self.conmon, runtime=self.runtime, runtime_args=self.global_args,
                                container_id=container_id, exec_dir=exec_dir, exec_args=self.exec_flags(exec_dir))
        report_fd, write_fd = nonblocking_pipe()
        try:
            try:
                # The exec's directory is conmon's working directory: an OOM kill it notices is marked there,
                # not in the container's directory.
                done = await run_process(argv, env={**os.environ, "_OCI_SYNCPIPE": str(write_fd)},
                                         pass_fds=(write_fd,), cwd=str(exec_dir), time_limit=time_limit,
                                         grace=EXEC_KILL_WAIT, output_limit=EXEC_OUTPUT_LIMIT, drain=EXEC_DRAIN,
                                         stop=lambda: self.kill_exec(container_id, exec_dir))
            except ProcessTimeout:
                return ExecResult(exit_code=KILLED_EXIT_CODE, timed_out=True)
            finally:
                os.close(write_fd)
            pid, exit_code = parse_exec_report(_read_available(report_fd))
        finally:
            os.close(report_fd)
            await asyncio.to_thread(shutil.rmtree, exec_dir, True)
        if pid is None:
            text = runtime_error_text(done.stderr.decode(errors="replace"))
            raise RuntimeFailure(f"{self.name} exec {container_id}: {text or f'conmon exit {done.returncode}'}")
        if exit_code is None:
            raise RuntimeFailure(f"conmon of exec {process.exec_id!r} in container {container_id!r} ended "
                                 f"(exit {done.returncode}) without reporting the process's exit code")
        return ExecResult(exit_code=exit_code, stdout=done.stdout, stderr=done.stderr)

    async def exec_interactive(self, container_id: str, process: ExecProcess) -> ForegroundExec:
        """Start a process in the container for a streaming session: ``runtime exec`` in the foreground with
        pipes, or a pty with ``process.stdio.terminal`` (see ``crirt.shim.interactive``). A process that cannot
        start ends with the runtime's exit code (255 for runc) and its message on stderr or the terminal."""
        exec_dir = self._write_exec_spec(self.owned(container_id), process.exec_id,
                                         {**process.process, "terminal": process.stdio.terminal})
        pid_file = exec_dir / "pid"
        # With --log the runtime's own errors go there, and to stderr as plain text instead of log lines.
        argv = [str(self.runtime), *self.global_args, f"--log={exec_dir / 'runtime.log'}", "exec",
                "--process", str(exec_dir / "process.json"), "--pid-file", str(pid_file), container_id]
        return await ForegroundExec.start(argv, terminal=process.stdio.terminal, stdin=process.stdio.stdin,
                                          pid_file=pid_file, cleanup=lambda: shutil.rmtree(exec_dir, True))

    def exec_flags(self, exec_dir: Path) -> list[str]:
        """More flags for the runtime's ``exec`` in ``exec_sync`` (none for runc): a hook for drivers whose
        runtime needs them to kill the process later (see ``kill_exec``)."""
        return []

    async def kill_exec(self, container_id: str, exec_dir: Path) -> None:
        """SIGKILL an exec'd process: runc's pid file holds its host pid."""
        if (pid := read_pid_file(exec_dir / "pid")) is not None:
            _kill_quietly(pid)

    async def update(self, container_id: str, resources: dict[str, Any]) -> None:
        """Apply new OCI ``linux.resources`` to the container's cgroup."""
        spec = self.owned(container_id).dir / "resources.json"
        spec.write_text(json.dumps(resources))
        try:
            await self.container_call(container_id, "update", "--resources", str(spec), container_id)
        finally:
            spec.unlink(missing_ok=True)

    async def close(self) -> None:
        """Stop watching for exits; every container's conmon goes on without crirt."""
        self._exits.close()

    async def stats(self, container_id: str) -> dict[str, Any]:
        """A sample of the container's cgroup counters (see ``crirt.shim.cgroups.CgroupStats.as_dict``), read
        from the kernel's files through the init pid the runtime wrote: no runtime call."""
        files = self.owned(container_id)
        return await asyncio.to_thread(self._read_stats, files)

    async def stats_many(self, container_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """``stats`` of several containers, read in one worker thread (one hand-off for a whole node's list,
        rather than one per container competing with the event loop for the GIL)."""
        return await asyncio.to_thread(self._read_many, [self.owned(i) for i in container_ids])

    def _read_many(self, many: list[ContainerFiles]) -> dict[str, dict[str, Any]]:
        samples = {}
        for files in many:
            with contextlib.suppress(CrirtError):
                samples[files.id] = self._read_stats(files)
        return samples

    def _read_stats(self, files: ContainerFiles) -> dict[str, Any]:
        pid = read_pid_file(files.pid)
        if pid is None or self.exit_status(files.id) is not None:
            raise FailedPrecondition(f"container {files.id!r} has stopped: no cgroup to read")
        try:
            return read_stats(pid).as_dict()
        except ProcessLookupError:
            raise FailedPrecondition(f"container {files.id!r} exited while reading its stats") from None

    # -- conmon's sockets and fifos

    async def attach(self, container_id: str, *, stdin: bool, terminal: bool) -> ProcessIO:
        """A client of conmon's attach socket for the container (see ``crirt.shim.attach``)."""
        files = self.owned(container_id)
        if self.exit_status(container_id) is not None:
            raise FailedPrecondition(f"container {container_id!r} has exited: nothing to attach to")

        async def exit_code() -> int:
            return (await self.wait(container_id)).exit_code

        return await SocketAttach.connect(files.attach, container_id, stdin=stdin, terminal=terminal,
                                          resize=lambda w, h: self.resize(container_id, None, w, h), wait=exit_code)

    async def resize(self, container_id: str, exec_id: str | None, width: int, height: int) -> None:
        """Resize the container's terminal through conmon's control fifo. An interactive exec's terminal is
        resized through the object ``exec_interactive`` returned, not here."""
        if exec_id is not None:
            raise InvalidArgument(f"exec {exec_id!r}: resize an interactive exec through its session; "
                                  "detached execs have no terminal")
        if not (0 <= width <= MAX_TERMINAL_SIZE and 0 <= height <= MAX_TERMINAL_SIZE):
            raise InvalidArgument(f"terminal size {width}x{height} is outside 0..{MAX_TERMINAL_SIZE}")
        self._tell_conmon(container_id, resize_message(width, height))

    async def reopen_log(self, container_id: str) -> None:
        """Ask conmon to reopen the container's log file (control fifo message ``2 0 0``) and return once the
        new file exists (the kubelet checks for it as soon as the call returns)."""
        self._tell_conmon(container_id, CTL_REOPEN_LOG)
        try:
            log_path = Path(self.files(container_id).log_path.read_text())
        except FileNotFoundError:
            return  # no log file (or a container of a crirt that did not record its path)
        deadline = time.monotonic() + REOPEN_WAIT
        while not log_path.exists():
            if time.monotonic() > deadline or _conmon_pid(self.files(container_id)) is None:
                raise RuntimeFailure(f"conmon of container {container_id!r} did not reopen its log {log_path} "
                                     f"within {REOPEN_WAIT:g}s")
            await asyncio.sleep(0.005)

    def _tell_conmon(self, container_id: str, message: bytes) -> None:
        """Write ``message`` to conmon's control fifo (``<bundle>/ctl``); FailedPrecondition without a conmon."""
        files = self.owned(container_id)
        try:
            fifo = Path(os.readlink(files.socket_link)) / "ctl"
        except FileNotFoundError:
            raise FailedPrecondition(f"container {container_id!r} has no running conmon") from None
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno in (errno.ENXIO, errno.ENOENT):  # no reader: conmon is gone
                raise FailedPrecondition(f"container {container_id!r} has no running conmon") from None
            raise
        try:
            os.write(fd, message)
        finally:
            os.close(fd)
