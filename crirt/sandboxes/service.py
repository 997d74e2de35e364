"""The pod sandbox lifecycle: RunPodSandbox, StopPodSandbox, RemovePodSandbox, PodSandboxStatus,
UpdatePodSandboxResources, and the recovery that finishes what a crash left.

Rules this module keeps:
- Everything that can be checked is checked before anything is created (bad input -> INVALID_ARGUMENT,
  missing network or runtime -> FAILED_PRECONDITION), so a refused request leaves no trace.
- A sandbox name (namespace/name/uid/attempt) is reserved from the moment its record is written until the
  sandbox is removed, or until a failed RunPodSandbox has been undone (so the kubelet's retry works).
- Undoing and tearing down run as tasks detached from the caller: a passed deadline cancels the setup, never
  the cleanup. Every teardown step is idempotent and checks what really exists (mounts, the CNI cache), so
  running it again after a partial failure or a crash is always safe.
- Records are written before the work they describe (phase CREATING/STOPPING/REMOVING), so on the next start
  ``recover`` knows what to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import socket
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from crirt import logs
from crirt.bus import Bus
from crirt.commands.internal import KillPodContainersCommand, RemovePodContainersCommand
from crirt.commands.sandboxes import (
    PodSandboxStatusCommand,
    PodSandboxStatusResult,
    RemovePodSandboxCommand,
    RemovePodSandboxResult,
    RunPodSandboxCommand,
    RunPodSandboxResult,
    StopPodSandboxCommand,
    StopPodSandboxResult,
    UpdatePodSandboxResourcesCommand,
    UpdatePodSandboxResourcesResult,
)
from crirt.config import Config
from crirt.errors import AlreadyExists, CrirtError, FailedPrecondition, InvalidArgument, NotFound
from crirt.metrics.instruments import CniMetrics
from crirt.model.enums import NamespaceMode
from crirt.model.sandbox import (
    PodSandbox,
    PodSandboxConfig,
)
from crirt.network import netns, userns
from crirt.network.cni import Attachment, Cni, CniError, NetworkConfig, load_network, network_problem, pod_ips
from crirt.network.defaults import write_default_network
from crirt.sandboxes import plumbing
from crirt.sandboxes.infra import InfraRunner
from crirt.sandboxes.queries import SANDBOXES
from crirt.sandboxes.records import RECORDS, Phase, PodPaths, SandboxRecord, name_key
from crirt.shim.contract import Shim
from crirt.shim.registry import ShimRegistry
from crirt.store import Store, Table

log = logging.getLogger(__name__)

SHUTDOWN_WAIT = 30.0
"""Seconds ``close`` waits for detached cleanups still running when crirt stops."""
JANITOR_FIRST_DELAY = 5.0
JANITOR_MAX_DELAY = 300.0
ORPHAN_PLUGIN_WAIT = 30.0


class CleanupError(CrirtError):
    """Tearing a sandbox down did not fully succeed; the message lists each failed step (gRPC UNKNOWN).
    Calling the same RPC again retries exactly what is left."""


def _host_file(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _orphan_plugin_pids(container_id: str) -> list[int]:
    """Processes (CNI plugins of a crirt that crashed) still working for ``container_id``."""
    marker = f"CNI_CONTAINERID={container_id}".encode()
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                environ = Path(entry.path, "environ").read_bytes()
            except OSError:
                continue
            if marker in environ.split(b"\0"):
                pids.append(int(entry.name))
    return pids


def _unpin_all(paths: PodPaths, kinds: list[str]) -> list[str]:
    """Unpin the pod's namespaces of ``kinds`` and unmount its /dev/shm; returns what failed."""
    errors = []
    for kind in kinds:
        try:
            netns.unpin(paths.namespace(kind))
        except OSError as exc:
            errors.append(f"unpinning the {kind} namespace: {exc.strerror or exc}")
    try:
        netns.unpin(paths.shm)
    except OSError as exc:
        errors.append(f"unmounting the pod's /dev/shm: {exc.strerror or exc}")
    return errors


class SandboxService:
    """Owns the pod sandboxes: their records, namespaces, mounts, files, network and infra container."""

    def __init__(self, config: Config, store: Store, bus: Bus, registry: ShimRegistry,
                 cni_metrics: CniMetrics | None = None) -> None:
        self.config = config
        self.store = store
        self.bus = bus
        self.registry = registry
        self.cni = Cni(config.cni.bin_dirs, config.root / "cni" / "results", config.cni.plugin_timeout, cni_metrics)
        self.infra = InfraRunner(registry, config.sandboxes.infra_binary, config.cgroup_driver)
        self.pods_dir = config.state / "pods"
        self.records: Table[SandboxRecord] = store.table(RECORDS, SandboxRecord)
        self.listing: Table[PodSandbox] = store.table(SANDBOXES, PodSandbox)
        self._names = {r.name_key: r.id for r in self.records if r.phase != Phase.LEFTOVER}
        self._background: set[asyncio.Task[Any]] = set()
        self._janitor: asyncio.Task[None] | None = None
        self._cgroups: str | None = None
        self._verbose_info: dict[str, tuple[SandboxRecord, bool, str]] = {}

    def register(self, bus: Bus) -> None:
        bus.resolve_ids("sandbox", self._full_id)
        bus.register(RunPodSandboxCommand, self.run)
        bus.register(StopPodSandboxCommand, self.stop)
        bus.register(RemovePodSandboxCommand, self.remove)
        bus.register(PodSandboxStatusCommand, self.status)
        bus.register(UpdatePodSandboxResourcesCommand, self.update_resources)

    def paths(self, sandbox_id: str) -> PodPaths:
        return PodPaths(self.pods_dir, sandbox_id)

    # ---- start and stop of the daemon -------------------------------------------------------------------

    async def start(self) -> None:
        """Prepare the pods dir, write the default network if wanted, and finish what a crash left."""
        netns.ensure_shared_dir(self.pods_dir)
        self.ensure_default_network()
        await self.recover()

    def ensure_default_network(self) -> None:
        """Write the default network into ``[cni] conf_dir`` if it is wanted and the directory holds none
        (at start, and after a reload changed ``[cni]``)."""
        cni = self.config.cni
        if cni.default_network:
            written = write_default_network(cni.conf_dir, cni.default_network_name, cni.default_bridge,
                                            cni.default_subnets)
            if written:
                log.info("no CNI network config in %s: wrote the default network %s", cni.conf_dir, written)

    async def close(self) -> None:
        """Let detached cleanups finish (bounded), stop the janitor; unpin the pods dir if no pod uses it."""
        if self._janitor is not None:
            self._janitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._janitor
        pending = [t for t in self._background if not t.done()]
        if pending:
            log.info("waiting up to %.0fs for %d sandbox cleanup(s)", SHUTDOWN_WAIT, len(pending))
            await asyncio.wait(pending, timeout=SHUTDOWN_WAIT)
        if len(self.records) == 0 and not [m for m in netns.mounts_under(self.pods_dir)
                                           if m[0] != str(self.pods_dir)]:
            with contextlib.suppress(OSError):
                netns.unmount(self.pods_dir)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` detached from the caller: cancelling the caller does not cancel it."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None and not isinstance(task.exception(), CrirtError):
            log.error("sandbox cleanup task failed", exc_info=task.exception())

    async def _detached(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return await asyncio.shield(self._spawn(coro))

    # ---- lookups ------------------------------------------------------------------------------------------

    def _full_id(self, wanted: str) -> str:
        """The full id of the sandbox ``wanted`` names (for the bus's locks); ``wanted`` if none."""
        record = self.find(wanted)
        return record.id if record is not None else wanted

    def find(self, wanted: str) -> SandboxRecord | None:
        """The visible sandbox with id ``wanted`` or the one whose id starts with it (crictl's short ids)."""
        record = self.records.get(wanted)
        if record is not None:
            return record if record.listed else None
        matches = [r for r in self.records if r.listed and r.id.startswith(wanted)]
        if len(matches) > 1:
            raise InvalidArgument(f"pod sandbox id prefix {wanted!r} is ambiguous: it matches {len(matches)} "
                                  "sandboxes")
        return matches[0] if matches else None

    def _put(self, record: SandboxRecord) -> SandboxRecord:
        """Write the record (first: it is the truth), then the listing the hot path serves."""
        self.records.put(record.id, record)
        if record.listed:
            listing = record.listing()
            if self.listing.get(record.id) != listing:
                self.listing.put(record.id, listing)
        return record

    def _forget(self, record: SandboxRecord) -> None:
        """Drop a sandbox: listing first, then the record, then the name reservation."""
        if record.id in self.listing:
            self.listing.delete(record.id)
        self.records.delete(record.id)
        self._verbose_info.pop(record.id, None)
        if self._names.get(record.name_key) == record.id:
            del self._names[record.name_key]

    def _cgroup_version(self) -> str:
        """The host's cgroup layout, read once (it does not change while crirt runs)."""
        if self._cgroups is None:
            self._cgroups = plumbing.cgroup_version(netns.mounts_under(Path("/sys/fs/cgroup")))
        return self._cgroups

    def _check_handler(self, handler: str) -> None:
        """The handler must be configured (INVALID_ARGUMENT naming the known ones) and its plugin loaded
        (FAILED_PRECONDITION naming the problem): a pod whose containers could never run is refused."""
        self.registry.resolve(handler)

    def _handler_needs_infra(self, handler: str) -> bool:
        """Whether the handler's shim asks for an infra container in every pod (``Shim.needs_infra_container``)."""
        entry = self.registry.handlers.get(handler or self.registry.default)
        return bool(entry is not None and entry.shim is not None and entry.shim.needs_infra_container)

    # ---- RunPodSandbox --------------------------------------------------------------------------------------

    async def run(self, command: RunPodSandboxCommand) -> RunPodSandboxResult:
        """Create the pod's namespaces, mounts, files, network and (pid: POD) infra container; return when
        all of it is ready. Any failure, or a deadline passing, undoes everything before the error returns."""
        config: PodSandboxConfig = command.config
        options = plumbing.namespace_options(config)
        plan = plumbing.plan_namespaces(options)
        linux = config.linux
        hostname = "" if plan.host_network else plumbing.check_hostname(config.hostname)
        sysctls = plumbing.plan_sysctls(linux.sysctls if linux else {}, plan)
        parent = plumbing.cgroup_parent(self.config.cgroup_driver, linux.cgroup_parent if linux else "")
        ports = [] if plan.host_network else plumbing.port_mappings(config.port_mappings)
        plumbing.check_dns(config.dns_config)
        if config.log_directory and not config.log_directory.startswith("/"):
            raise InvalidArgument(f"log_directory {config.log_directory!r} must be an absolute path")
        self._check_handler(command.runtime_handler)
        if plan.user is not None and not self.registry.features(command.runtime_handler).user_namespaces:
            raise InvalidArgument("linux.security_context.namespace_options.userns_options: mode POD asks for a "
                                  f"user namespace, which runtime handler {command.runtime_handler or 'default'!r} "
                                  "does not support (Status lists the handlers that do)")
        for directory in (self.pods_dir, self.config.root / "rootfs") if plan.user is not None else ():
            closed = userns.unsearchable_parent(directory)
            if closed is not None:
                raise FailedPrecondition(f"pods with a user namespace need every directory above {directory} "
                                         f"searchable by others, but {closed} is not (mode "
                                         f"{closed.stat().st_mode & 0o777:o}): chmod o+x it (e.g. 711)")
        needs_infra = plan.needs_infra or self._handler_needs_infra(command.runtime_handler)
        shim: Shim | None = None
        if needs_infra:
            shim = self.registry.resolve(command.runtime_handler)
            self.infra.check_prerequisites()
        network: NetworkConfig | None = None
        if not plan.host_network:
            network, _ = load_network(self.config.cni.conf_dir)
            if network is None:
                raise FailedPrecondition(f"the pod network is not ready: {network_problem(self.config.cni.conf_dir)}")
        key = name_key(command.config.metadata)
        existing = self._names.get(key)
        if existing is not None:
            raise AlreadyExists(f"pod sandbox name {key!r} (namespace/name/uid/attempt) is reserved for sandbox "
                                f"{existing}; remove it first or use another attempt")

        sandbox_id = secrets.token_hex(32)
        logs.bind(pod=sandbox_id)
        record = SandboxRecord(
            id=sandbox_id, config=config, runtime_handler=command.runtime_handler, created_at=time.time_ns(),
            phase=Phase.CREATING, namespace_options=options, pinned=list(plan.pinned),
            shm=options.ipc == NamespaceMode.POD, network=network.name if network else "", infra=needs_infra,
            cgroup_parent=parent, hostname=hostname or socket.gethostname(),
            resources=linux.resources if linux else None, overhead=linux.overhead if linux else None)
        self._put(record)
        self._names[key] = sandbox_id
        try:
            await self.store.flush()  # a store that cannot be written (a full disk) fails the pod before it is made
            await self._setup(record, plan, network, sysctls, ports, shim)
        except BaseException as exc:
            log.info("RunPodSandbox %s (%s) failed, undoing: %s", sandbox_id, key, exc or type(exc).__name__)
            with contextlib.suppress(CrirtError):  # the original error is what the caller needs
                await self._detached(self._undo_run(record))
            raise
        return RunPodSandboxResult(pod_sandbox_id=sandbox_id)

    async def _setup(self, record: SandboxRecord, plan: plumbing.NamespacePlan, network: NetworkConfig | None,
                     sysctls: list[tuple[str, str]], ports: list[dict[str, Any]], shim: Shim | None) -> None:
        paths = self.paths(record.id)
        config = record.config
        paths.dir.mkdir(parents=True, exist_ok=True)
        if plan.pinned:
            hostname = "" if plan.host_network else config.hostname
            try:
                if plan.user is not None:
                    await userns.pin_user_namespaces(paths.dir, [k for k in plan.pinned if k != userns.USER],
                                                     plan.user, hostname, sysctls)
                else:
                    await netns.pin_namespaces(paths.dir, plan.pinned, hostname, sysctls)
            except netns.SysctlError as exc:
                raise InvalidArgument(f"linux.sysctls: {exc}") from None
        if record.shm:
            netns.mount_shm(paths.shm, self.config.sandboxes.shm_size)
        if config.log_directory:
            Path(config.log_directory).mkdir(parents=True, exist_ok=True)
        ips: list[str] = []
        if network is not None:
            meta = config.metadata
            assert meta is not None
            attachment = Attachment(container_id=record.id, netns=str(paths.namespace("net")), pod_name=meta.name,
                                    pod_namespace=meta.namespace, pod_uid=meta.uid)
            runtime_config: dict[str, Any] = {"portMappings": ports,
                                              "io.kubernetes.cri.pod-annotations": dict(config.annotations)}
            if config.dns_config is not None:
                runtime_config["dns"] = plumbing.dns_runtime_config(config.dns_config)
            # lo and eth0 are independent: bring them up concurrently, never going on before both are done.
            loopback = asyncio.ensure_future(netns.loopback_up(paths.namespace("net")))
            try:
                result = await self.cni.setup(network, attachment, runtime_config)
            finally:
                await asyncio.wait([loopback])
            await loopback
            ips = pod_ips(result)
        paths.hostname.write_text(record.hostname + "\n")
        paths.hosts.write_text(plumbing.hosts_file(record.hostname, ips,
                                                   _host_file("/etc/hosts") if plan.host_network else None))
        paths.resolv_conf.write_text(plumbing.resolv_conf(config.dns_config, _host_file("/etc/resolv.conf")))
        infra_pid = 0
        if shim is not None:
            join = {kind: paths.namespace(kind) for kind in plan.pinned}
            infra_pid = await self.infra.start(shim, record.id, config, paths.infra_bundle, join,
                                               record.cgroup_parent)
        self._put(record.model_copy(update={"phase": Phase.READY, "ips": ips, "infra_pid": infra_pid}))

    async def _undo_run(self, record: SandboxRecord) -> None:
        """Undo a failed RunPodSandbox. If some step cannot be undone now, keep a LEFTOVER record (not listed,
        name released) that the janitor and the next start retry."""
        async with self.bus.hold(f"sandbox:{record.id}"):
            errors = await self._teardown(record, stop_containers=False)
            try:  # even when the network could not be released: what is left of it lives in the CNI cache
                await asyncio.to_thread(self._remove_files, record)
            except (OSError, CleanupError) as exc:
                errors.append(f"deleting the pod's files: {exc}")
            if errors:
                self._leftover(record, errors)
                raise CleanupError("; ".join(errors))
            self._forget(record)

    def _leftover(self, record: SandboxRecord, errors: list[str]) -> None:
        log.warning("sandbox %s could not be fully cleaned up (will retry): %s", record.id, "; ".join(errors))
        if record.id in self.listing:
            self.listing.delete(record.id)
        self.records.put(record.id, record.model_copy(update={"phase": Phase.LEFTOVER,
                                                                "problem": "; ".join(errors)}))
        if self._names.get(record.name_key) == record.id:
            del self._names[record.name_key]
        self._start_janitor()

    # ---- teardown steps (idempotent) ------------------------------------------------------------------------

    async def _teardown(self, record: SandboxRecord, stop_containers: bool = True) -> list[str]:
        """Stop the pod's containers and infra container, release its network, unpin its namespaces and
        unmount its /dev/shm. Runs every step whatever fails (except that the network namespace stays pinned
        while its CNI DEL has not succeeded); returns the failures."""
        errors: list[str] = []
        paths = self.paths(record.id)
        if stop_containers:
            try:
                await self._for_containers(KillPodContainersCommand(pod_sandbox_id=record.id))
            except Exception as exc:
                errors.append(f"stopping the pod's containers: {exc}")
        if record.infra:
            try:
                await self.infra.stop(record.runtime_handler, record.id)
            except Exception as exc:
                errors.append(f"stopping the infra container: {exc}")
        network_released = True
        try:
            await self._release_network(record, paths)
        except Exception as exc:
            errors.append(f"releasing the pod network: {exc}")
            network_released = False
        # the retried DEL needs the network namespace (bridge finds its masquerade rules through it)
        kinds = [kind for kind in (*netns.PINNABLE, userns.USER) if kind != "net" or network_released]
        errors += await asyncio.to_thread(_unpin_all, paths, kinds)  # umount waits on the kernel's mount lock
        return errors

    async def _release_network(self, record: SandboxRecord, paths: PodPaths) -> None:
        """CNI DEL with the cached config and result; the netns path passed exists as a namespace or not at
        all (a stale plain file would make plugins fail)."""
        if self.cni.cached(record.id) is None:
            return
        net = paths.namespace("net")
        if net.exists() and not await asyncio.to_thread(netns.is_namespace_file, net):
            net.unlink()
        await self.cni.teardown(record.id, str(net))

    def _remove_files(self, record: SandboxRecord) -> None:
        """Delete the pod's directory; refuses (CleanupError) while anything is still mounted below it."""
        paths = self.paths(record.id)
        left = netns.mounts_under(paths.dir)
        if left:
            raise CleanupError(f"cannot delete {paths.dir}: still mounted: {', '.join(m[0] for m in left)}")
        if paths.dir.exists():
            shutil.rmtree(paths.dir)

    # ---- StopPodSandbox / RemovePodSandbox -------------------------------------------------------------------

    async def stop(self, command: StopPodSandboxCommand) -> StopPodSandboxResult:
        """Kill the pod's containers still running (SIGKILL at once) and its infra container and release its network and
        namespaces. Stopping a stopped or unknown sandbox is fine."""
        record = self.find(command.pod_sandbox_id)
        if record is not None:
            await self._stop(record)
        return StopPodSandboxResult()

    async def _stop(self, record: SandboxRecord) -> None:
        """Tear a pod down to STOPPED (under its lock, or at start before serving)."""
        if record.phase in (Phase.STOPPED, Phase.REMOVING, Phase.CREATING, Phase.LEFTOVER):
            return
        record = self._put(record.model_copy(update={"phase": Phase.STOPPING}))
        errors = await self._teardown(record)
        if errors:
            self._put(record.model_copy(update={"problem": "; ".join(errors)}))
            raise CleanupError(f"stopping pod sandbox {record.id}: " + "; ".join(errors))
        self._put(record.model_copy(update={"phase": Phase.STOPPED, "problem": "", "infra_pid": 0}))

    async def remove(self, command: RemovePodSandboxCommand) -> RemovePodSandboxResult:
        """Remove the pod's containers forcibly, tear down whatever is left and forget the sandbox.
        Removing an unknown sandbox is fine."""
        record = self.find(command.pod_sandbox_id)
        if record is not None:
            await self._remove(record)
        return RemovePodSandboxResult()

    async def _remove(self, record: SandboxRecord) -> None:
        """Remove a pod and its containers, then forget it (under its lock, or at start before serving)."""
        if record.phase in (Phase.CREATING, Phase.LEFTOVER):
            return
        record = self._put(record.model_copy(update={"phase": Phase.REMOVING}))
        errors = []
        try:  # forcibly: stopped with SIGKILL if still running
            await self._for_containers(RemovePodContainersCommand(pod_sandbox_id=record.id))
        except Exception as exc:
            errors.append(f"removing the pod's containers: {exc}")
        errors += await self._teardown(record, stop_containers=False)
        if not errors:
            try:
                await asyncio.to_thread(self._remove_files, record)
            except (OSError, CleanupError) as exc:
                errors.append(f"deleting the pod's files: {exc}")
        if errors:
            self._put(record.model_copy(update={"problem": "; ".join(errors)}))
            raise CleanupError(f"removing pod sandbox {record.id}: " + "; ".join(errors))
        self._forget(record)

    async def _for_containers(self, command: KillPodContainersCommand | RemovePodContainersCommand) -> None:
        """Ask the container service, through the bus, to deal with the pod's containers (nothing to do when no
        service handles containers)."""
        if self.bus.handles(type(command)):
            await self.bus.dispatch(command)

    # ---- PodSandboxStatus / UpdatePodSandboxResources --------------------------------------------------------

    async def status(self, command: PodSandboxStatusCommand) -> PodSandboxStatusResult:
        record = self.find(command.pod_sandbox_id)
        if record is None:
            raise NotFound(f"pod sandbox {command.pod_sandbox_id!r} not found")
        info = {"info": await self._verbose_json(record)} if command.verbose else {}
        return PodSandboxStatusResult(status=record.status(), info=info, timestamp=time.time_ns())

    async def _verbose_json(self, record: SandboxRecord) -> str:
        """The verbose info as JSON, made once per version of the record and state of its infra process."""
        alive = record.infra_pid > 0 and os.path.exists(f"/proc/{record.infra_pid}")
        cached = self._verbose_info.get(record.id)
        if cached is None or cached[0] is not record or cached[1] != alive:
            info = await asyncio.to_thread(self._verbose, record, alive)
            cached = self._verbose_info[record.id] = (record, alive, json.dumps(info))
        return cached[2]

    def _verbose(self, record: SandboxRecord, alive: bool) -> dict[str, Any]:
        """PodSandboxStatus' verbose info, from the record and files only (no runtime call)."""
        paths = self.paths(record.id)
        cached = self.cni.cached(record.id)
        details: dict[str, Any] = {
            "id": record.id,
            "phase": record.phase.value,
            "runtimeHandler": record.runtime_handler,
            "config": record.config.model_dump(mode="json"),
            "namespaces": {kind: str(paths.namespace(kind)) for kind in record.pinned},
            "shm": str(paths.shm) if record.shm else "",
            "files": {"hostname": str(paths.hostname), "hosts": str(paths.hosts),
                      "resolvConf": str(paths.resolv_conf)},
            "network": record.network,
            "ips": record.ips,
            "cniResult": cached.get("result") if cached else None,
            "cgroupDriver": self.config.cgroup_driver,
            "cgroupParent": record.cgroup_parent,
            "cgroupVersion": self._cgroup_version(),
            "infraContainer": None,
            "resources": record.resources.model_dump(mode="json") if record.resources else None,
            "overhead": record.overhead.model_dump(mode="json") if record.overhead else None,
            "problem": record.problem,
        }
        if record.infra:
            details["infraContainer"] = {"id": record.id, "bundle": str(paths.infra_bundle),
                                         "status": "running" if alive else "stopped", "pid": record.infra_pid}
        return details

    async def update_resources(self, command: UpdatePodSandboxResourcesCommand) -> UpdatePodSandboxResourcesResult:
        """Record the pod's new resources and overhead. The kubelet resizes the pod cgroup itself; crirt
        keeps the values for status and for containers created later."""
        record = self.find(command.pod_sandbox_id)
        if record is None:
            raise NotFound(f"pod sandbox {command.pod_sandbox_id!r} not found")
        self._put(record.model_copy(update={"resources": command.resources or record.resources,
                                            "overhead": command.overhead or record.overhead}))
        return UpdatePodSandboxResourcesResult()

    # ---- recovery and the janitor ------------------------------------------------------------------------------

    async def recover(self) -> None:
        """Finish what a crash (or a reboot) left: undo half-created sandboxes, finish stops and removals,
        mark sandboxes whose namespaces are gone NOTREADY (releasing their network), drop orphan files and
        CNI attachments, and make the listing match the records."""
        for record in list(self.records):
            try:
                await self._recover_one(record)
            except CrirtError as exc:
                log.warning("recovering sandbox %s: %s", record.id, exc)
            except Exception:
                log.exception("recovering sandbox %s failed", record.id)
        known = set(self.records.ids())
        for sandbox_id in self.cni.cached_ids():
            if sandbox_id not in known:
                log.info("releasing the network of unknown sandbox %s (left by a crash)", sandbox_id)
                with contextlib.suppress(CniError):
                    await self._wait_for_orphan_plugins(sandbox_id)
                    await self.cni.teardown(sandbox_id, "")
        if self.pods_dir.is_dir():
            for entry in self.pods_dir.iterdir():
                if entry.name not in known and entry.is_dir():
                    log.info("deleting files of unknown sandbox %s", entry.name)
                    for point, _ in reversed(netns.mounts_under(entry)):
                        with contextlib.suppress(OSError):
                            netns.unmount(point)
                    shutil.rmtree(entry, ignore_errors=True)
        for sandbox_id in self.listing.ids():
            record = self.records.get(sandbox_id)
            if record is None or not record.listed:
                self.listing.delete(sandbox_id)
        for record in self.records:
            if record.listed:
                self._put(record)

    async def _recover_one(self, record: SandboxRecord) -> None:
        if record.phase in (Phase.CREATING, Phase.LEFTOVER, Phase.STOPPING, Phase.REMOVING):
            await self._wait_for_orphan_plugins(record.id)
        if record.phase in (Phase.CREATING, Phase.LEFTOVER):
            log.info("undoing sandbox %s, left half-created", record.id)
            await self._undo_run(record)
        elif record.phase == Phase.REMOVING:
            log.info("finishing the removal of sandbox %s", record.id)
            await self._remove(record)
        elif record.phase == Phase.STOPPING:
            log.info("finishing the stop of sandbox %s", record.id)
            await self._stop(record)
        elif record.phase == Phase.READY and not await self._intact(record):
            log.warning("sandbox %s lost its namespaces or infra container (reboot?): stopping it", record.id)
            await self._stop(record)

    async def _intact(self, record: SandboxRecord) -> bool:
        paths = self.paths(record.id)
        mounted = {point: fstype for point, fstype in await asyncio.to_thread(netns.mounts_under, paths.dir)}
        if any(mounted.get(str(paths.namespace(kind))) != "nsfs" for kind in record.pinned):
            return False
        if record.shm and str(paths.shm) not in mounted:
            return False
        if not record.infra:
            return True
        state = await self.infra.state(record.runtime_handler, record.id)
        if state is not None and state.pid > 0 and state.pid != record.infra_pid:
            self._put(record.model_copy(update={"infra_pid": state.pid}))  # status and stats read it from now on
        return state is not None and state.status in ("running", "unknown")  # unknown: cannot tell, keep it

    async def _wait_for_orphan_plugins(self, sandbox_id: str) -> None:
        """Before undoing a crashed ADD, let CNI plugins the dead crirt started for this pod finish (they are
        not our children any more), so our DEL cannot run before their ADD completes."""
        deadline = time.monotonic() + ORPHAN_PLUGIN_WAIT
        while time.monotonic() < deadline:
            if not await asyncio.to_thread(_orphan_plugin_pids, sandbox_id):
                return
            await asyncio.sleep(0.1)

    def _start_janitor(self) -> None:
        if self._janitor is None or self._janitor.done():
            self._janitor = asyncio.get_running_loop().create_task(self._janitor_loop())

    async def _janitor_loop(self) -> None:
        """Retry LEFTOVER cleanups with a growing delay until none is left."""
        delay = JANITOR_FIRST_DELAY
        while True:
            await asyncio.sleep(delay)
            leftovers = [r for r in self.records if r.phase == Phase.LEFTOVER]
            if not leftovers:
                return
            for record in leftovers:
                try:
                    await self._undo_run(record)
                    log.info("cleaned up leftover sandbox %s", record.id)
                except CrirtError:
                    pass  # logged by _leftover; retried next round
                except Exception:
                    log.exception("cleaning up leftover sandbox %s failed", record.id)
            delay = min(delay * 2, JANITOR_MAX_DELAY)
