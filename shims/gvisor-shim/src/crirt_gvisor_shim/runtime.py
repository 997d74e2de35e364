"""crirt's OCI-CLI + conmon driver adapted to runsc: one gVisor sandbox per pod, its containers inside it.

The pod's first container (crirt's infra container, annotated ``io.kubernetes.cri.container-type=sandbox``)
creates the sandbox and runs exactly like a runc container under conmon. Every later container of the pod
(``container-type=container`` plus ``io.kubernetes.cri.sandbox-id``) is a *sub-container*, and runsc treats
those differently from runc in two ways that break conmon's usual model:

- its stdio is that of the ``runsc start`` call (runsc hands those fds to the sandbox), not of ``runsc create``;
- ``runsc create`` writes the *sandbox's* pid to ``--pid-file``, which is not conmon's child, so conmon finds
  no child to wait for and records -1.

So for a sub-container conmon's runtime is ``holder.sh``: it runs ``runsc create`` (which hands a terminal's
master to conmon's console socket, if the container has one) and leaves a small shell process behind as
conmon's child. That holder keeps conmon's stdio pipes open and, once crirt has run ``runsc start`` with those
pipes (opened through ``/proc/<holder>/fd``), runs ``runsc wait`` and exits with the container's exit code.
conmon then logs the container's output in CRI format and records the right exit code, and nothing lives in
crirt's process.

Files added to the driver's per-container directory (``containers/<id>/``) for a sub-container::

    sandbox     the id of the pod's sandbox (root) container
    start       fifo: crirt writes "start" after a successful ``runsc start`` ("abort" otherwise)
    start.log   runsc's log of the ``runsc start`` call (its error message when start fails)
    wait.log    what ``runsc wait`` printed on stderr
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from crirt.errors import FailedPrecondition, InvalidArgument, Unimplemented
from crirt.shim import CreateTask, ExitStatus, TaskState, run_program, stats_of_each
from crirt.shim.conmon import (
    UNKNOWN_EXIT_CODE,
    ConmonRuntime,
    ContainerFiles,
    RuntimeFailure,
    conmon_argv,
    runtime_error_text,
)

CONTAINER_TYPE = "io.kubernetes.cri.container-type"
SANDBOX_ID = "io.kubernetes.cri.sandbox-id"
HOLDER = Path(__file__).with_name("holder.sh")
SHELL = Path("/bin/sh")
KILLED = 128 + 9
HOST_NETWORK = "--network=host"
UNPRIVILEGED_PORTS = "net.ipv4.ip_unprivileged_port_start"
RUNSC_CAPABILITIES = frozenset({
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
})
"""The capabilities runsc 20221219 knows (Linux's up to CAP_AUDIT_READ, 37): it refuses a spec naming any other
("unknown capability"), such as CAP_PERFMON, CAP_BPF or CAP_CHECKPOINT_RESTORE, which a privileged container
or one adding ALL gets."""


def sandbox_of(annotations: dict[str, str]) -> str | None:
    """The sandbox a container joins (``container-type=container``), or None when it creates its own sandbox
    (``sandbox``, or no type at all, as runsc itself decides)."""
    kind = annotations.get(CONTAINER_TYPE)
    if kind in (None, "sandbox"):
        return None
    if kind != "container":
        raise InvalidArgument(f"annotation {CONTAINER_TYPE}={kind!r}: runsc knows 'sandbox' and 'container'")
    sandbox = annotations.get(SANDBOX_ID, "")
    if not sandbox:
        raise InvalidArgument(f"a gVisor container of type 'container' needs the annotation {SANDBOX_ID}")
    return sandbox


def runsc_capabilities(spec: dict[str, Any]) -> bool:
    """Drop the capabilities runsc does not know from every set of the spec's process (gVisor implements none
    of them, so nothing is lost); True if the spec changed."""
    sets = (spec.get("process") or {}).get("capabilities") or {}
    changed = False
    for name, caps in sets.items():
        kept = [cap for cap in caps if cap in RUNSC_CAPABILITIES]
        if kept != caps:
            sets[name], changed = kept, True
    return changed


def refuse_bidirectional(spec: dict[str, Any]) -> None:
    """INVALID_ARGUMENT for a mount with bidirectional propagation (``rshared``): mounts made inside the sandbox
    live in the sentry's own VFS and never reach the host, and runsc refuses an ``rshared`` root."""
    shared = [mount.get("destination", "?") for mount in spec.get("mounts") or []
              if "rshared" in (mount.get("options") or [])]
    if shared or (spec.get("linux") or {}).get("rootfsPropagation") == "rshared":
        raise InvalidArgument(f"config.mounts: {', '.join(map(repr, shared)) or 'a mount'} asks for "
                              "PROPAGATION_BIDIRECTIONAL, which gVisor cannot provide (mounts made inside the "
                              "sandbox never reach the host); use PROPAGATION_HOST_TO_CONTAINER or PRIVATE")


def join_sandbox_pid_namespace(spec: dict[str, Any]) -> bool:
    """A sub-container that joins a PID namespace by path joins the pod's (``pid: POD``): runsc shares a PID
    namespace only between sub-containers naming the same path, never with the sandbox's root container, so
    drop the entry and runsc runs it in the sandbox's root namespace, where the infra container is pid 1 (as
    with runc). True if the spec changed."""
    linux = spec.get("linux") or {}
    namespaces = linux.get("namespaces") or []
    kept = [ns for ns in namespaces if not (ns.get("type") == "pid" and ns.get("path"))]
    if len(kept) == len(namespaces):
        return False
    linux["namespaces"] = kept
    return True


def network_namespace(spec: dict[str, Any]) -> str | None:
    """The path of the network namespace the spec joins (a pod's own), or None (the node's, or a new one)."""
    for namespace in (spec.get("linux") or {}).get("namespaces") or []:
        if namespace.get("type") == "network":
            return namespace.get("path") or None
    return None


async def open_low_ports(spec: dict[str, Any], path: str) -> None:
    """Let the pod's processes bind ports below 1024 in its network namespace (``UNPRIVILEGED_PORTS``, 0 unless
    the pod's sysctls say otherwise). With ``--network=host`` the sentry opens the pod's sockets on the host as
    the sandbox process, which keeps no capability but CAP_SYS_CHROOT, so a container allowed to bind port 80
    (CAP_NET_BIND_SERVICE inside gVisor) would get EACCES from the host kernel. containerd sets the same for
    every pod with its own network namespace."""
    value = str(((spec.get("linux") or {}).get("sysctl") or {}).get(UNPRIVILEGED_PORTS, "0"))
    if not value.isdigit():
        raise InvalidArgument(f"sysctl {UNPRIVILEGED_PORTS}={value!r}: not a port number")
    target = "/proc/sys/" + UNPRIVILEGED_PORTS.replace(".", "/")
    done = await run_program(["nsenter", f"--net={path}", str(SHELL), "-c", f"echo {value} > {target}"])
    if done.returncode != 0:
        raise RuntimeFailure(f"setting {UNPRIVILEGED_PORTS} in network namespace {path}: "
                             f"{done.stderr.decode(errors='replace').strip()}")


def uts_namespace(spec: dict[str, Any]) -> tuple[bool, str | None]:
    """(whether the spec lists a UTS namespace, the path it joins if any)."""
    for namespace in (spec.get("linux") or {}).get("namespaces") or []:
        if namespace.get("type") == "uts":
            return True, namespace.get("path") or None
    return False, None


async def namespace_hostname(path: str) -> str:
    """The host name set in the UTS namespace pinned at ``path``."""
    done = await run_program(["nsenter", f"--uts={path}", "cat", "/proc/sys/kernel/hostname"])
    if done.returncode != 0:
        raise RuntimeFailure(f"reading the host name of UTS namespace {path}: "
                             f"{done.stderr.decode(errors='replace').strip()}")
    return done.stdout.decode().strip()


def parse_stats_event(text: str) -> dict[str, Any]:
    """``runsc events --stats ID`` (one JSON event, ``data`` in runc's stats layout) as the shim contract's
    stats dict. gVisor accounts memory inside its own kernel: usage is what the container's processes use
    there, and there is no page cache split, so the working set is the usage."""
    event = json.loads(text)
    data = event.get("data") or {}
    result: dict[str, Any] = {"timestamp": time.time_ns()}
    cpu = ((data.get("cpu") or {}).get("usage") or {}).get("total")
    if cpu is not None:
        result["cpu"] = {"usage_core_nano_seconds": int(cpu)}
    memory = ((data.get("memory") or {}).get("usage") or {}).get("usage")
    if memory is not None:
        result["memory"] = {"usage_bytes": int(memory), "working_set_bytes": int(memory)}
    pids = (data.get("pids") or {}).get("current")
    if pids is not None:
        result["process"] = {"process_count": int(pids)}
    return result


def _holder_pid(files: ContainerFiles) -> int | None:
    """The holder's pid if the pid file names a live holder.sh (guards against pid reuse)."""
    try:
        pid = int(files.pid.read_text())
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None
    return pid if str(HOLDER).encode() in args and files.id.encode() in args else None


class GvisorRuntime(ConmonRuntime):
    """The conmon driver for runsc, with sub-containers run through ``holder.sh`` (see the module docstring)."""

    @staticmethod
    def _sandbox_file(files: ContainerFiles) -> Path:
        return files.dir / "sandbox"

    async def conmon_command(self, task: CreateTask, files: ContainerFiles) -> list[str]:
        """The spec's annotations decide, as they do for runsc: a sandbox container runs like a runc container,
        a sub-container with ``holder.sh`` as conmon's runtime (which runs ``runsc create``)."""
        try:
            spec = json.loads((task.bundle / "config.json").read_text())
        except (OSError, ValueError):
            return await super().conmon_command(task, files)  # runsc reports the broken bundle
        sandbox = sandbox_of(spec.get("annotations") or {})
        refuse_bidirectional(spec)
        changed = runsc_capabilities(spec)
        if sandbox is None:
            changed = await self._name_sandbox(spec) or changed
            netns = network_namespace(spec)
            if netns is not None and HOST_NETWORK in self.global_args:
                await open_low_ports(spec, netns)
        else:
            changed = join_sandbox_pid_namespace(spec) or changed
        if changed:
            (task.bundle / "config.json").write_text(json.dumps(spec))
        if sandbox is None:
            return await super().conmon_command(task, files)
        if not self.known_to_runtime(sandbox):
            raise FailedPrecondition(f"container {task.id!r} joins gVisor sandbox {sandbox!r}, which runsc does "
                                     "not know (the pod's sandbox container is gone)")
        self._sandbox_file(files).write_text(sandbox)
        os.mkfifo(files.dir / "start", 0o600)
        return conmon_argv(conmon=self.conmon, runtime=SHELL,
                           runtime_args=[str(HOLDER), str(self.runtime), *self.global_args, "--"],
                           files=files, bundle=task.bundle, stdio=task.stdio, systemd_cgroup=self.systemd_cgroup)

    @staticmethod
    async def _name_sandbox(spec: dict[str, Any]) -> bool:
        """gVisor gives each sandbox its own UTS namespace named after the root spec's ``hostname``, ignoring the
        namespace the spec joins: copy the host name of that namespace (the pod's) into the spec, or the node's
        for a pod on the node's UTS namespace (hostNetwork); True if the spec changed."""
        listed, joined = uts_namespace(spec)
        if spec.get("hostname") or (listed and joined is None):
            return False
        spec["hostname"] = await namespace_hostname(joined) if joined else socket.gethostname()
        return True

    async def start(self, container_id: str) -> TaskState:
        """A sub-container starts with the holder's stdio (conmon's pipes); then the holder may wait for it."""
        files = self.owned(container_id)
        if not self._sandbox_file(files).exists():
            return await super().start(container_id)
        holder = _holder_pid(files)
        if holder is None:
            raise FailedPrecondition(f"container {container_id!r} has no monitor (its conmon is gone)")
        start_log = files.dir / "start.log"
        stdio = []
        try:
            for fd, mode in ((0, os.O_RDONLY), (1, os.O_WRONLY), (2, os.O_WRONLY)):
                try:
                    stdio.append(os.open(f"/proc/{holder}/fd/{fd}", mode | os.O_CLOEXEC))
                except FileNotFoundError:  # conmon gave the runtime no such stream (a terminal replaces them)
                    stdio.append(os.open(os.devnull, mode | os.O_CLOEXEC))
            code = (await self.run_runtime([f"--log={start_log}", "--log-format=json", "start", container_id],
                                           stdin=stdio[0], output=(stdio[1], stdio[2]))).returncode
        finally:
            for fd in stdio:
                os.close(fd)
        if code != 0:
            await self._tell_holder(files, "abort")
            text = runtime_error_text(start_log.read_text(errors="replace")) if start_log.exists() else ""
            raise RuntimeFailure(f"{self.name} start {container_id}: {text or f'exit {code}'}")
        if not await self._tell_holder(files, "start"):
            raise RuntimeFailure(f"container {container_id!r} started, but its monitor is gone: its exit will "
                                 "not be recorded")
        files.started.touch()
        return TaskState(id=container_id, status="running", pid=holder)

    @staticmethod
    async def _tell_holder(files: ContainerFiles, word: str) -> bool:
        """Write ``word`` to the holder's fifo; False if no holder is reading it."""
        fifo = files.dir / "start"
        deadline = time.monotonic() + 2.0
        while True:
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as exc:
                # ENXIO: nobody has the fifo open for reading yet (the holder may be about to): retry briefly.
                if exc.errno == errno.ENXIO and time.monotonic() < deadline and _holder_pid(files) is not None:
                    await asyncio.sleep(0.01)
                    continue
                if exc.errno in (errno.ENXIO, errno.ENOENT):
                    return False
                raise
            try:
                os.write(fd, f"{word}\n".encode())
            finally:
                os.close(fd)
            return True

    async def discard(self, files: ContainerFiles) -> None:
        await self._end_holder(files)
        await super().discard(files)

    async def delete(self, container_id: str) -> ExitStatus | None:
        await self._end_holder(self.files(container_id))
        return await super().delete(container_id)

    async def _end_holder(self, files: ContainerFiles) -> None:
        """A holder still waiting for its start is told to give up, so conmon records 128 and leaves."""
        if (files.dir / "start").exists():
            await self._tell_holder(files, "abort")

    def exit_status(self, container_id: str) -> ExitStatus | None:
        """conmon's record; a sub-container counts as OOM-killed when its sandbox was (the kernel's OOM killer
        acts on the sandbox's cgroup, which conmon watches for the sandbox container only). Its processes then
        died with the sandbox, which ``runsc wait`` cannot report (the holder records 255): they were killed, 137."""
        status = super().exit_status(container_id)
        try:
            sandbox = self._sandbox_file(self.files(container_id)).read_text().strip()
        except FileNotFoundError:
            return status
        if status is None or not self.files(sandbox).oom.exists():
            return status
        code = KILLED if status.exit_code == UNKNOWN_EXIT_CODE else status.exit_code
        return status.model_copy(update={"oom_killed": True, "exit_code": code})

    async def stats(self, container_id: str) -> dict[str, Any]:
        """What the sandbox's kernel accounts for the container (``runsc events --stats``: one runsc call, which
        crirt makes at most once per stats collection interval)."""
        if self.exit_status(self.owned(container_id).id) is not None:
            raise FailedPrecondition(f"container {container_id!r} has stopped: runsc reports no stats")
        try:
            return parse_stats_event(await self.container_call(container_id, "events", "--stats", container_id))
        except (ValueError, TypeError, AttributeError) as exc:
            raise RuntimeFailure(f"{self.name} events --stats {container_id}: unreadable output ({exc})") from None

    async def stats_many(self, container_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """``stats`` (a runsc call) of each container, a few at a time: the sandbox's kernel keeps the counters,
        not the host's cgroup files the conmon driver reads in one batch."""
        return await stats_of_each(self.stats, container_ids)

    def exec_flags(self, exec_dir: Path) -> list[str]:
        """runsc's ``--pid-file`` names the host ``runsc exec`` process; the process to kill on a timeout is
        the one inside the sandbox, whose pid ``--internal-pid-file`` records."""
        return ["--internal-pid-file", str(exec_dir / "internal-pid")]

    async def kill_exec(self, container_id: str, exec_dir: Path) -> None:
        """Kill the exec'd process inside the sandbox (``runsc kill --pid``), then the host side."""
        try:
            pid = int((exec_dir / "internal-pid").read_text().strip())
        except (OSError, ValueError):
            pid = 0
        if pid > 0:
            await self.runtime_call("kill", "--pid", str(pid), container_id, "9")
        await super().kill_exec(container_id, exec_dir)

    async def update(self, container_id: str, resources: dict[str, Any]) -> None:
        raise Unimplemented("runsc 20221219 has no 'update' command: resources of a gVisor container cannot be "
                            "changed while it runs")
