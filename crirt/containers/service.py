"""The container lifecycle: CreateContainer, StartContainer, StopContainer, RemoveContainer, ContainerStatus,
ExecSync, ReopenContainerLog and GetContainerEvents, and the ``PodContainers`` the sandbox service uses.

Rules this module keeps:
- CreateContainer checks what it can before making anything, and undoes everything it made when a later
  step fails (rootfs, bundle, task, name reservation), shielded from the caller's cancellation.
- A container name (sandbox, name, attempt) is reserved from CreateContainer until RemoveContainer.
- Records are written before the event that reports them is published.
- Each running container has a task awaiting ``shim.wait`` (woken by the driver's one exit event source, never
  polling) that records the exit; StopContainer records the same exit itself. Whichever comes first moves the
  record to EXITED; the other does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import astuple
from pathlib import Path
from typing import Any

from crirt import logs
from crirt.bus import Bus
from crirt.cdi.registry import CdiRegistry, requested_devices
from crirt.commands.containers import (
    ContainerStatusCommand,
    ContainerStatusResult,
    CreateContainerCommand,
    CreateContainerResult,
    RemoveContainerCommand,
    RemoveContainerResult,
    ReopenContainerLogCommand,
    ReopenContainerLogResult,
    StartContainerCommand,
    StartContainerResult,
    StopContainerCommand,
    StopContainerResult,
    UpdateContainerResourcesCommand,
    UpdateContainerResourcesResult,
)
from crirt.commands.internal import KillPodContainersCommand, PodContainersResult, RemovePodContainersCommand
from crirt.commands.runtime import GetContainerEventsCommand, GetContainerEventsResult
from crirt.commands.streaming import ExecSyncCommand, ExecSyncResult
from crirt.config import Config
from crirt.containers.idmapped import IdmappedBinds
from crirt.containers.pods import Pods
from crirt.containers.queries import CONTAINERS
from crirt.containers.records import RECORDS, ContainerRecord, exit_reason, name_key
from crirt.containers.retry import Janitor, wait_for_exit
from crirt.containers.update import merged_resources, updated_config, updated_spec
from crirt.errors import AlreadyExists, CrirtError, DeadlineExceeded, FailedPrecondition, InvalidArgument, NotFound
from crirt.images.idmap import Idmap
from crirt.images.service import ImageService
from crirt.model.container import Container
from crirt.model.enums import ContainerEventType, ContainerState, PodSandboxState, Signal
from crirt.oci.devices import devices_at, host_devices
from crirt.oci.host import HostFacts, detect_host_facts
from crirt.oci.mounts import PodFiles, resolve_host_paths
from crirt.oci.resources import linux_resources
from crirt.oci.seccomp import read_localhost_profile
from crirt.oci.spec import PodNamespaces, SpecInputs, container_spec, pod_namespace_options, security_context
from crirt.oci.user import read_image_file, resolve_user
from crirt.oci.userns import plan_user_namespace
from crirt.sandboxes.records import SandboxRecord
from crirt.shim.contract import CreateTask, ExecProcess, ExitStatus, Shim, Stdio
from crirt.shim.registry import ShimRegistry
from crirt.store import Store, Table

log = logging.getLogger(__name__)

EXEC_OUTPUT_LIMIT = 16 * 1024 * 1024
"""Bytes of ExecSync output kept, stdout and stderr together (the kubelet's limit)."""
KILL_WAIT = 10.0
"""Seconds to wait for a container to die after SIGKILL."""
RUNNING = ContainerState.CONTAINER_RUNNING
LOST_EXIT_CODE = 255
"""The exit code of a container whose task vanished without a recorded exit (conmon's "unknown")."""
REASON_LOST = "Unknown"
SANDBOX_ID_ANNOTATION = "io.kubernetes.cri.sandbox-id"


def stop_signal(record: ContainerRecord) -> int:
    """The signal StopContainer sends first: the request's, else the image's ``StopSignal``, else SIGTERM."""
    if record.config.stop_signal != Signal.RUNTIME_DEFAULT:
        return int(getattr(signal, record.config.stop_signal.name))
    text = record.stop_signal.strip().upper()
    if text.isdigit():
        return int(text)
    if text:
        found = getattr(signal, text if text.startswith("SIG") else f"SIG{text}", None)
        if isinstance(found, int):
            return int(found)
        log.warning("container %s: unknown image StopSignal %r, using SIGTERM", record.id, record.stop_signal)
    return int(signal.SIGTERM)


def _write_atomically(path: Path, text: str) -> None:
    """Replace a file so a crash leaves the old or the new content, never a mix."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def _remove_tree(path: Path) -> None:
    """Remove a directory tree; an error (other than its absence) is raised, not ignored."""
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(path)


async def _all(steps: list[Callable[[], Awaitable[Any]]]) -> None:
    """Run each step in turn; the first failure is raised (the janitor retries them all)."""
    for step in steps:
        await step()


def cap_output(stdout: bytes, stderr: bytes, limit: int = EXEC_OUTPUT_LIMIT) -> tuple[bytes, bytes]:
    """Keep at most ``limit`` bytes of output in all, stdout first."""
    stdout = stdout[:limit]
    return stdout, stderr[:limit - len(stdout)]


class ContainerService:
    """Owns the containers: their records, root filesystems, bundles, tasks and exit watchers."""

    def __init__(self, config: Config, store: Store, bus: Bus, registry: ShimRegistry, pods: Pods,
                 images: ImageService, cdi: CdiRegistry) -> None:
        """``pods``: the pod sandboxes' lookups (the sandbox service); their lifecycle asks this service for its
        part through the bus (``KillPodContainersCommand``, ``RemovePodContainersCommand``)."""
        self.config = config
        self.cdi = cdi
        self.bus = bus
        self.registry = registry
        self.store = store
        self.pods = pods
        self.images = images
        self.bundles = config.state / "containers"
        self.idmapped = IdmappedBinds(config.state / "idmapped")
        self.records: Table[ContainerRecord] = store.table(RECORDS, ContainerRecord)
        self.listing: Table[Container] = store.table(CONTAINERS, Container)
        self._names = {r.name_key: r.id for r in self.records}
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._verbose_info: dict[str, tuple[ContainerRecord, str]] = {}
        self._releases: set[asyncio.Task[None]] = set()
        self._janitor = Janitor()
        self._host: HostFacts | None = None

    def register(self, bus: Bus) -> None:
        bus.resolve_ids("container", self._full_id)
        bus.register(KillPodContainersCommand, self.kill_pod_containers)
        bus.register(RemovePodContainersCommand, self.remove_pod_containers)
        bus.register(CreateContainerCommand, self.create)
        bus.register(StartContainerCommand, self.start)
        bus.register(StopContainerCommand, self.stop)
        bus.register(RemoveContainerCommand, self.remove)
        bus.register(ContainerStatusCommand, self.status)
        bus.register(ExecSyncCommand, self.exec_sync)
        bus.register(ReopenContainerLogCommand, self.reopen_log)
        bus.register(UpdateContainerResourcesCommand, self.update_resources)
        bus.register(GetContainerEventsCommand, self.events)

    async def resume(self) -> None:
        """Reconcile the records with the runtimes after crirt (re)starts, before it serves: containers that
        ran on keep being watched, exits that happened while crirt was down are recorded with conmon's exit
        code and time, and what a crash left half-made (a bundle, task or rootfs without a record) is removed.
        Every record gets its listing (a crash between the two writes leaves a record unlisted, never the
        reverse, since a listing is deleted before its record)."""
        for record in list(self.records):
            self._sync_listing(record)
            try:
                await self._reconcile(record)
            except CrirtError as exc:
                log.warning("recovering container %s: %s", record.id, exc)
        await self._remove_orphans()

    async def _reconcile(self, record: ContainerRecord) -> None:
        """Bring one record in line with what its runtime reports."""
        if record.state == RUNNING:
            if record.pid == 0:  # written by a crirt that did not keep pids: ask once, at start only
                with contextlib.suppress(CrirtError):
                    state = await self.registry.resolve(record.runtime_handler).state(record.id)
                    record = self._put(record.model_copy(update={"pid": state.pid}))
            self._watch(record)  # the watcher reads an exit that happened meanwhile at once
            return
        if record.state != ContainerState.CONTAINER_CREATED:
            return
        shim = self.registry.resolve(record.runtime_handler)
        try:
            state = await shim.state(record.id)
        except NotFound:
            log.warning("container %s was created but its task is gone; marking it exited", record.id)
            self._put(record.model_copy(update={
                "state": ContainerState.CONTAINER_EXITED, "finished_at": time.time_ns(), "exit_code": LOST_EXIT_CODE,
                "reason": REASON_LOST, "message": "the container's task was lost while crirt was not running"}))
            return
        if state.status == "created":
            return
        # StartContainer started the task but crirt died before writing it down.
        log.info("container %s was started before crirt stopped (%s); watching it", record.id, state.status)
        self._watch(self._put(record.model_copy(update={"state": RUNNING, "started_at": time.time_ns(),
                                                        "pid": state.pid})))

    async def _remove_orphans(self) -> None:
        """Remove bundles, tasks and root filesystems that belong to no record (a crash during
        CreateContainer or RemoveContainer): the runtime's task and its monitor are killed too."""
        bundles = sorted(p.name for p in self.bundles.iterdir()) if self.bundles.is_dir() else []
        made = set(bundles) | set(self.images.snapshots.rootfs_ids()) | set(self.idmapped.ids())
        for container_id in sorted(made):
            if container_id in self.records:
                continue
            log.info("removing container %s, left half-made by an earlier crirt", container_id)
            try:
                shim = self.registry.resolve(self._orphan_handler(self.bundles / container_id))
                await shim.delete(container_id)
                await self._release_binds(container_id)
                await self.images.snapshots.remove_rootfs(container_id)
            except CrirtError as exc:
                log.warning("could not remove half-made container %s: %s", container_id, exc)
                continue
            await asyncio.to_thread(shutil.rmtree, self.bundles / container_id, True)

    async def _release_binds(self, container_id: str) -> None:
        """Unmount a container's id-mapped bind sources (a pod with a user namespace); none is fine."""
        try:
            await asyncio.to_thread(self.idmapped.release, container_id)
        except OSError as exc:
            raise FailedPrecondition(f"cannot unmount the id-mapped volumes of {container_id}: {exc}") from None

    def _orphan_handler(self, bundle: Path) -> str:
        """The runtime handler of a container without a record: its pod's, from the bundle's sandbox-id
        annotation; the default handler when that cannot be told."""
        try:
            annotations = json.loads((bundle / "config.json").read_text()).get("annotations") or {}
        except (OSError, ValueError):
            return ""
        sandbox_id = str(annotations.get(SANDBOX_ID_ANNOTATION, ""))
        sandbox = self.pods.find(sandbox_id) if sandbox_id else None
        return sandbox.runtime_handler if sandbox is not None else ""

    async def close(self) -> None:
        """Stop the exit watchers and task deletions (the containers keep running; RemoveContainer deletes a task
        left behind)."""
        tasks = [*self._watchers.values(), *self._releases]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._watchers.clear()
        await self._janitor.close()

    # ---- lookups and writes -----------------------------------------------------------------------------

    def find(self, wanted: str) -> ContainerRecord | None:
        """The container with id ``wanted`` or the one whose id starts with it (crictl's short ids)."""
        record = self.records.get(wanted)
        if record is not None:
            return record
        matches = [r for r in self.records if r.id.startswith(wanted)]
        if len(matches) > 1:
            raise InvalidArgument(f"container id prefix {wanted!r} is ambiguous: it matches {len(matches)} containers")
        return matches[0] if matches else None

    def get(self, wanted: str) -> ContainerRecord:
        record = self.find(wanted)
        if record is None:
            raise NotFound(f"container {wanted!r} not found")
        return record

    def _full_id(self, wanted: str) -> str:
        """The full id of the container ``wanted`` names (for the bus's locks); ``wanted`` if none."""
        record = self.find(wanted)
        return record.id if record is not None else wanted

    def _held(self, container_id: str) -> contextlib.AbstractAsyncContextManager[None]:
        """The bus's lock of a container, for work outside a command on it (background or pod-wide work)."""
        return self.bus.hold(f"container:{container_id}")

    def _put(self, record: ContainerRecord) -> ContainerRecord:
        """Write the record (first: it is the truth), then the listing when it changed."""
        self.records.put(record.id, record)
        self._sync_listing(record)
        return record

    def _sync_listing(self, record: ContainerRecord) -> None:
        """Replace the listed container only when it changed, so the hot path's cache stays valid."""
        listing = record.listing()
        if self.listing.get(record.id) != listing:
            self.listing.put(record.id, listing)

    def _host_facts(self) -> HostFacts:
        if self._host is None:
            self._host = detect_host_facts()
        return self._host

    async def _publish(self, record: ContainerRecord, kind: ContainerEventType) -> None:
        """Publish a container event with the pod's status and the statuses of the pod's containers, once the
        change it reports is on disk."""
        await self.store.flush()
        sandbox = self.pods.find(record.sandbox_id)
        pod = sandbox.status() if sandbox is not None else None
        statuses = [r.status() for r in self.records if r.sandbox_id == record.sandbox_id]
        self.bus.publish(GetContainerEventsResult(container_id=record.id, container_event_type=kind,
                                                  created_at=time.time_ns(), pod_sandbox_status=pod,
                                                  containers_statuses=statuses))

    # ---- CreateContainer ----------------------------------------------------------------------------------

    async def create(self, command: CreateContainerCommand) -> CreateContainerResult:
        """Prepare the rootfs, bundle and task of a new container (not started); undo all of it on failure."""
        sandbox = self.pods.find(command.pod_sandbox_id)
        if sandbox is None:
            raise NotFound(f"pod sandbox {command.pod_sandbox_id!r} not found")
        if sandbox.state != PodSandboxState.SANDBOX_READY:
            raise FailedPrecondition(f"pod sandbox {sandbox.id} is not ready")
        config = command.config
        image_text = config.image.image if config.image else ""
        if not image_text:
            raise InvalidArgument("config.image.image: an image is required")
        match = self.images.records.find(image_text)
        if match is None:
            raise NotFound(f"image {image_text!r} not found: pull it first")
        image = match.record
        shim = self.registry.resolve(sandbox.runtime_handler)
        key = name_key(sandbox.id, config)
        existing = self._names.get(key)
        if existing is not None:
            raise AlreadyExists(f"container name {key!r} (sandbox/name/attempt) is reserved for container "
                                f"{existing}; remove it first or use another attempt")
        container_id = secrets.token_hex(32)
        logs.bind(pod=sandbox.id, container=container_id)
        self._names[key] = container_id
        made: list[str] = []
        try:
            record = await self._make(container_id, sandbox, command, shim, image_text, image.id,
                                      image.repo_digests[0] if image.repo_digests else image.id,
                                      image.chain_ids, made)
        except BaseException as exc:
            log.info("CreateContainer %s failed, undoing: %s", key, exc or type(exc).__name__)
            undo = asyncio.ensure_future(self._undo_create(container_id, shim, made))
            with contextlib.suppress(Exception):
                await asyncio.shield(undo)
            if self._names.get(key) == container_id:
                del self._names[key]
            raise
        await self._publish(record, ContainerEventType.CONTAINER_CREATED_EVENT)
        return CreateContainerResult(container_id=container_id)

    async def _make(self, container_id: str, sandbox: SandboxRecord, command: CreateContainerCommand, shim: Shim,
                    image_text: str, image_id: str, repo_digest: str, chain_ids: list[str],
                    made: list[str]) -> ContainerRecord:
        config = command.config
        image_config: dict[str, Any] = json.loads(self.images.content.read(image_id)).get("config") or {}
        cdi_edits = await asyncio.to_thread(self.cdi.edits_for, config) if requested_devices(config) else ()
        paths = self.pods.paths(sandbox.id)
        userns = plan_user_namespace(pod_namespace_options(sandbox.config), "linux.security_context.namespace_options")
        idmap = Idmap(paths.namespace("user"), *userns.root) if userns is not None else None
        made.append("rootfs")
        rootfs = await self.images.snapshots.prepare_rootfs(container_id, chain_ids, idmap)
        passwd, group = await asyncio.to_thread(lambda: (read_image_file(rootfs, "/etc/passwd"),
                                                         read_image_file(rootfs, "/etc/group")))
        context = security_context(config)
        user = resolve_user(context, str(image_config.get("User") or ""), passwd, group)
        pid_ns = None
        if sandbox.infra and sandbox.infra_pid > 0:
            pid_ns = f"/proc/{sandbox.infra_pid}/ns/pid"
        kinds = set(sandbox.pinned)
        namespaces = PodNamespaces(
            network=str(paths.namespace("net")) if "net" in kinds else None,
            ipc=str(paths.namespace("ipc")) if "ipc" in kinds else None,
            uts=str(paths.namespace("uts")) if "uts" in kinds else None,
            user=str(paths.namespace("user")) if "user" in kinds else None, pid=pid_ns)
        pod_files = PodFiles(
            hostname=str(paths.hostname) if paths.hostname.exists() else None,
            hosts=str(paths.hosts) if paths.hosts.exists() else None,
            resolv_conf=str(paths.resolv_conf) if paths.resolv_conf.exists() else None,
            shm=str(paths.shm) if sandbox.shm else None)
        host_paths = resolve_host_paths(config.mounts)
        spec = container_spec(SpecInputs(
            container_id=container_id, sandbox_id=sandbox.id, config=config, sandbox_config=sandbox.config,
            image_name=image_text, image_config=image_config, user=user, rootfs=str(rootfs),
            hostname=sandbox.hostname, namespaces=namespaces, pod_files=pod_files,
            cgroup_driver=self.config.cgroup_driver, cgroup_parent=sandbox.cgroup_parent, host=self._host_facts(),
            host_paths=host_paths,
            devices={d.host_path: devices_at(d.host_path) for d in config.devices},
            host_devices=host_devices() if context.privileged else (),
            rro_mounts=self.registry.features(sandbox.runtime_handler).recursive_read_only_mounts,
            seccomp_profile=await asyncio.to_thread(read_localhost_profile, context), cdi_edits=cdi_edits))
        if idmap is not None:
            made.append("binds")
            sources = [*host_paths.values(), *(f for f in astuple(pod_files) if f is not None)]
            spec["mounts"] = await asyncio.to_thread(self.idmapped.prepare, container_id, spec["mounts"], sources,
                                                     idmap.userns)
        bundle = self.bundles / container_id
        made.append("bundle")
        bundle.mkdir(parents=True)
        (bundle / "config.json").write_text(json.dumps(spec, indent=1))
        log_path = ""
        if sandbox.config.log_directory and config.log_path:
            log_path = os.path.join(sandbox.config.log_directory, config.log_path)
            Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        made.append("task")
        task = await shim.create(CreateTask(
            id=container_id, sandbox_id=sandbox.id, bundle=bundle, annotations=spec["annotations"],
            stdio=Stdio(log_path=Path(log_path) if log_path else None, stdin=config.stdin,
                        stdin_once=config.stdin_once, terminal=config.tty)))
        record = ContainerRecord(
            id=container_id, sandbox_id=sandbox.id, config=config, runtime_handler=sandbox.runtime_handler,
            image_ref=image_text, image_id=image_id, repo_digest=repo_digest,
            stop_signal=str(image_config.get("StopSignal") or ""), bundle=str(bundle), log_path=log_path,
            pid=task.pid, created_at=time.time_ns(), uid=user.uid, gid=user.gid,
            additional_gids=list(user.additional_gids))
        return self._put(record)

    async def _undo_create(self, container_id: str, shim: Shim, made: list[str]) -> None:
        """Remove what a failed CreateContainer made, newest first, every step whatever fails; what cannot be
        removed now is retried by the janitor (and at the next start, as an orphan)."""
        if container_id in self.records:
            self.listing.delete(container_id)
            self.records.delete(container_id)
        steps: list[tuple[str, Callable[[], Awaitable[Any]]]] = []
        if "task" in made:
            steps.append(("task", lambda: shim.delete(container_id)))
        if "bundle" in made:
            steps.append(("bundle", lambda: asyncio.to_thread(_remove_tree, self.bundles / container_id)))
        if "binds" in made:
            steps.append(("id-mapped binds", lambda: self._release_binds(container_id)))
        if "rootfs" in made:
            steps.append(("rootfs", lambda: self.images.snapshots.remove_rootfs(container_id)))
        failed = []
        for what, step in steps:
            try:
                await step()
            except Exception as exc:
                log.warning("undoing CreateContainer %s: removing its %s failed: %s", container_id, what, exc)
                failed.append(step)
        if failed:
            self._janitor.add(f"container {container_id}", lambda: _all(failed))

    # ---- StartContainer ---------------------------------------------------------------------------------------

    async def start(self, command: StartContainerCommand) -> StartContainerResult:
        """Start a CREATED container of a READY pod and watch for its exit. A pod being stopped takes every
        container's lock after it stopped being READY, so a start either sees it NOTREADY or is stopped by it."""
        record = self.get(command.container_id)
        if record.state != ContainerState.CONTAINER_CREATED:
            raise FailedPrecondition(f"container {record.id} is {record.state.name}, not CONTAINER_CREATED")
        pod = self.pods.find(record.sandbox_id)
        if pod is None or pod.state != PodSandboxState.SANDBOX_READY:
            raise FailedPrecondition(f"container {record.id} cannot start: its pod sandbox {record.sandbox_id} is "
                                     "not ready (stopped or being stopped)")
        shim = self.registry.resolve(record.runtime_handler)
        try:
            task = await shim.start(record.id)
        except CrirtError as exc:
            self._put(record.model_copy(update={
                "state": ContainerState.CONTAINER_EXITED, "finished_at": time.time_ns(), "exit_code": 128,
                "reason": "StartError", "message": str(exc)}))
            raise
        record = self._put(record.model_copy(update={"state": RUNNING, "started_at": time.time_ns(),
                                                     "pid": task.pid or record.pid}))
        self._watch(record)
        await self._publish(record, ContainerEventType.CONTAINER_STARTED_EVENT)
        return StartContainerResult()

    def _watch(self, record: ContainerRecord) -> None:
        task = asyncio.get_running_loop().create_task(self._watch_exit(record.id, record.runtime_handler))
        self._watchers[record.id] = task
        task.add_done_callback(lambda t: self._watchers.pop(record.id, None) if self._watchers.get(record.id) is t
                               else None)

    async def _watch_exit(self, container_id: str, handler: str) -> None:
        """Wait for the container's exit and record it; a failing wait is asked again (``retry.wait_for_exit``):
        an exit is never lost."""
        try:
            status = await wait_for_exit(lambda: self.registry.resolve(handler).wait(container_id),
                                         f"container {container_id}")
        except NotFound:
            log.warning("container %s vanished from its runtime without a recorded exit", container_id)
            await self._exited(container_id, ExitStatus(exit_code=LOST_EXIT_CODE, exited_at=time.time_ns()),
                               "the container's task vanished from its runtime without a recorded exit")
            return
        await self._exited(container_id, status)
        self._release_soon(container_id, handler)

    async def _exited(self, container_id: str, status: ExitStatus, lost: str = "") -> None:
        """Record the exit of a running container and publish it; nothing when already recorded. ``lost``
        explains an exit the runtime could not report (the reason is then ``Unknown``)."""
        lost = lost or status.lost
        record = self.records.get(container_id)
        if record is None or record.state != RUNNING:
            return
        reason = REASON_LOST if lost else exit_reason(status.exit_code, status.oom_killed)
        record = self._put(record.model_copy(update={
            "state": ContainerState.CONTAINER_EXITED,
            # conmon's exit file time is a few ms coarse: never report an end before the recorded start
            "finished_at": max(status.exited_at, record.started_at),
            "exit_code": status.exit_code, "reason": reason, "message": lost}))
        await self._publish(record, ContainerEventType.CONTAINER_STOPPED_EVENT)

    # ---- StopContainer / RemoveContainer ------------------------------------------------------------------------

    async def stop(self, command: StopContainerCommand) -> StopContainerResult:
        """Send the stop signal, wait ``timeout`` seconds, then SIGKILL. Stopping an exited or unknown container is
        fine (as containerd 2.x: the kubelet may retry a stop after a removal)."""
        record = self.find(command.container_id)
        if record is not None:
            await self._stop(record.id, float(command.timeout))
        return StopContainerResult()

    async def _stop(self, container_id: str, grace: float) -> None:
        """Stop a running container (under its lock)."""
        record = self.records.get(container_id)
        if record is None or record.state != RUNNING:
            return
        shim = self.registry.resolve(record.runtime_handler)
        status: ExitStatus | None = None
        if grace > 0:
            await shim.kill(container_id, stop_signal(record))
            with contextlib.suppress(TimeoutError):
                status = await asyncio.wait_for(shim.wait(container_id), grace)
        if status is None:
            await shim.kill(container_id, signal.SIGKILL, all_processes=True)
            try:
                status = await asyncio.wait_for(shim.wait(container_id), KILL_WAIT)
            except TimeoutError:
                raise CrirtError(f"container {container_id} did not die within {KILL_WAIT:.0f}s of SIGKILL") from None
        await self._exited(container_id, status)
        await self._release_task(container_id, shim)

    async def _release_task(self, container_id: str, shim: Shim) -> None:
        """Delete an exited container's task (the runtime's state and cgroup, the monitor's files), as containerd
        does when a task exits: RemoveContainer then only removes files. A failure is left for RemoveContainer,
        which deletes the task again."""
        try:
            await shim.delete(container_id)
        except CrirtError as exc:
            log.warning("deleting the task of exited container %s (RemoveContainer retries): %s", container_id, exc)

    def _release_soon(self, container_id: str, handler: str) -> None:
        """``_release_task`` in the background, under the container's lock, if it is still EXITED then."""

        async def release() -> None:
            async with self._held(container_id):
                record = self.records.get(container_id)
                if record is not None and record.state == ContainerState.CONTAINER_EXITED:
                    await self._release_task(container_id, self.registry.resolve(handler))

        task = asyncio.get_running_loop().create_task(release())
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def remove(self, command: RemoveContainerCommand) -> RemoveContainerResult:
        """Remove a container, killing it first if it runs. Removing an unknown container is fine."""
        record = self.find(command.container_id)
        if record is not None:
            await self._remove(record.id)
        return RemoveContainerResult()

    async def _remove(self, container_id: str) -> None:
        """Remove a container (under its lock), killing it first if it runs."""
        record = self.records.get(container_id)
        if record is None:
            return
        await self._stop(container_id, 0)
        watcher = self._watchers.pop(container_id, None)
        if watcher is not None:
            watcher.cancel()
        await self.registry.resolve(record.runtime_handler).delete(container_id)
        await self._release_binds(container_id)
        await self.images.snapshots.remove_rootfs(container_id)
        await asyncio.to_thread(shutil.rmtree, record.bundle, True)
        self.listing.delete(container_id)
        self.records.delete(container_id)
        self._verbose_info.pop(container_id, None)
        if self._names.get(record.name_key) == container_id:
            del self._names[record.name_key]
        await self._publish(record, ContainerEventType.CONTAINER_DELETED_EVENT)

    # ---- a pod's containers (asked by the sandbox service through the bus) -----------------------------------

    async def kill_pod_containers(self, command: KillPodContainersCommand) -> PodContainersResult:
        """Kill every running container of the pod with SIGKILL at once, as containerd's StopPodSandbox does.
        Created ones are locked too: a start that got its lock first is stopped here once it has run."""
        ids = [r.id for r in self.records if r.sandbox_id == command.pod_sandbox_id
               and r.state in (RUNNING, ContainerState.CONTAINER_CREATED)]
        await asyncio.gather(*(self._locked(i, self._stop(i, 0)) for i in ids))
        return PodContainersResult()

    async def remove_pod_containers(self, command: RemovePodContainersCommand) -> PodContainersResult:
        """Remove every container of the pod, killing those still running."""
        ids = [r.id for r in self.records if r.sandbox_id == command.pod_sandbox_id]
        await asyncio.gather(*(self._locked(i, self._remove(i)) for i in ids))
        return PodContainersResult()

    async def _locked(self, container_id: str, work: Coroutine[Any, Any, None]) -> None:
        async with self._held(container_id):
            await work

    # ---- ContainerStatus / ExecSync / ReopenContainerLog / GetContainerEvents -----------------------------------

    async def status(self, command: ContainerStatusCommand) -> ContainerStatusResult:
        record = self.get(command.container_id)
        info = {"info": await self._verbose_json(record)} if command.verbose else {}
        return ContainerStatusResult(status=record.status(), info=info)

    async def _verbose_json(self, record: ContainerRecord) -> str:
        """The verbose info as JSON, made once per version of the record (a record is replaced on every change,
        the bundle's spec too)."""
        cached = self._verbose_info.get(record.id)
        if cached is None or cached[0] is not record:
            cached = self._verbose_info[record.id] = (record, json.dumps(await self._verbose(record)))
        return cached[1]

    async def _verbose(self, record: ContainerRecord) -> dict[str, Any]:
        """ContainerStatus' verbose info, from the record and the bundle (no runtime call)."""
        try:
            spec = json.loads(await asyncio.to_thread(Path(record.bundle, "config.json").read_bytes))
        except (OSError, ValueError):
            spec = None
        return {"sandboxID": record.sandbox_id, "pid": record.pid if record.state == RUNNING else 0,
                "runtimeHandler": record.runtime_handler,
                "bundle": record.bundle, "imageRef": record.image_ref, "imageId": record.image_id,
                "config": record.config.model_dump(mode="json"), "runtimeSpec": spec}

    async def exec_sync(self, command: ExecSyncCommand) -> ExecSyncResult:
        """Run a command in a running container to completion (or its timeout, then DEADLINE_EXCEEDED)."""
        record = self.get(command.container_id)
        if record.state != RUNNING:
            raise FailedPrecondition(f"container {record.id} is not running")
        spec = json.loads(await asyncio.to_thread(Path(record.bundle, "config.json").read_text))
        process = {**spec["process"], "args": list(command.cmd), "terminal": False}
        shim = self.registry.resolve(record.runtime_handler)
        try:
            result = await shim.exec_sync(record.id, ExecProcess(exec_id=secrets.token_hex(16), process=process),
                                          float(command.timeout) if command.timeout > 0 else None)
        except CrirtError as exc:
            if await self._still_running(record.id, shim):
                raise
            raise FailedPrecondition(f"container {record.id} stopped while the exec was starting: {exc}") from None
        if result.timed_out:
            raise DeadlineExceeded(f"timeout {command.timeout}s exceeded: context deadline exceeded")
        stdout, stderr = cap_output(result.stdout, result.stderr)
        return ExecSyncResult(stdout=stdout, stderr=stderr, exit_code=result.exit_code)

    async def _still_running(self, container_id: str, shim: Shim) -> bool:
        """Whether the container still runs, by its record and then its runtime (after an exec failed)."""
        record = self.records.get(container_id)
        if record is None or record.state != RUNNING:
            return False
        try:
            return (await shim.state(container_id)).status == "running"
        except CrirtError:
            return False

    async def reopen_log(self, command: ReopenContainerLogCommand) -> ReopenContainerLogResult:
        """Have the container's runtime write its log to a new file at the log path (after the kubelet's
        rotation): ``Shim.reopen_log``."""
        record = self.get(command.container_id)
        if record.state != RUNNING:
            raise FailedPrecondition(f"container {record.id} is not running")
        await self.registry.resolve(record.runtime_handler).reopen_log(record.id)
        return ReopenContainerLogResult()

    async def update_resources(self, command: UpdateContainerResourcesCommand) -> UpdateContainerResourcesResult:
        """Apply new limits: the bundle spec first, then the task's cgroup (a created container has one
        already, made by the runtime's ``create``); if the runtime refuses, the old spec is put back and nothing
        has changed."""
        if command.windows is not None and command.linux is None:
            raise InvalidArgument("windows resources cannot be applied on a Linux node; send linux resources")
        record = self.get(command.container_id)
        if record.state not in (ContainerState.CONTAINER_CREATED, RUNNING):
            raise FailedPrecondition(f"container {record.id} is {record.state.name}: only created or running "
                                     "containers can be updated")
        if command.linux is None:
            return UpdateContainerResourcesResult()
        current = record.config.linux.resources if record.config.linux else None
        resources = merged_resources(current, command.linux)
        oci = linux_resources(resources, self._host_facts().cgroups)
        spec_path = Path(record.bundle, "config.json")
        old_text = await asyncio.to_thread(spec_path.read_text)
        await asyncio.to_thread(_write_atomically, spec_path, json.dumps(updated_spec(json.loads(old_text), oci),
                                                                          indent=1))
        try:
            await self.registry.resolve(record.runtime_handler).update(record.id, oci)
        except BaseException:
            await asyncio.shield(asyncio.to_thread(_write_atomically, spec_path, old_text))
            raise
        self._put(record.model_copy(update={"config": updated_config(record.config, resources)}))
        return UpdateContainerResourcesResult()

    async def events(self, command: GetContainerEventsCommand) -> AsyncIterator[GetContainerEventsResult]:
        """Container lifecycle events from now on, until the caller goes away."""
        async for event in self.bus.subscribe("GetContainerEvents"):
            if isinstance(event, GetContainerEventsResult):
                yield event
