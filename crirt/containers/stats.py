"""ContainerStats, ListContainerStats, StreamContainerStats, PodSandboxStats, ListPodSandboxStats and
StreamPodSandboxStats; the metrics RPCs (``crirt.containers.metrics``) are registered from here too.

Each container's cgroup counters come from its shim (``Shim.stats``: a dict with ``timestamp`` and ``cpu``,
``memory``, ``process`` sections), its writable layer's usage from the snapshotter, swap straight from the
container's cgroup. ``usage_nano_cores`` is the CPU rate since the previous sample of the same container (or
pod) kept in memory, so the first sample of each has none. A pod's CPU, memory and process count are the sums
over its containers; its network counters are those of the pod's network namespace, read from
``/proc/PID/net/dev`` of any of its processes (none when nothing runs in the pod). An exited container is
reported with what is still there (its attributes and writable layer), never as an error. The Stream* RPCs
sample exactly what their List* counterparts would and send it in batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crirt.bus import Bus
from crirt.commands.stats import (
    ContainerStatsCommand,
    ContainerStatsResult,
    ListContainerStatsCommand,
    ListContainerStatsResult,
    ListPodSandboxStatsCommand,
    ListPodSandboxStatsResult,
    PodSandboxStatsCommand,
    PodSandboxStatsResult,
    StreamContainerStatsCommand,
    StreamContainerStatsResult,
    StreamPodSandboxStatsCommand,
    StreamPodSandboxStatsResult,
)
from crirt.containers.metrics import MetricsService, net_dev_counters
from crirt.containers.records import ContainerRecord
from crirt.containers.service import ContainerService
from crirt.errors import CrirtError, NotFound
from crirt.filters import batches, id_matches, labels_match
from crirt.images.snapshots import SnapshotStore
from crirt.model.common import UInt64Value
from crirt.model.enums import ContainerState, PodSandboxState
from crirt.model.stats import (
    ContainerAttributes,
    ContainerStats,
    CpuUsage,
    FilesystemIdentifier,
    FilesystemUsage,
    LinuxPodSandboxStats,
    MemoryUsage,
    NetworkInterfaceUsage,
    NetworkUsage,
    PodSandboxAttributes,
    PodSandboxStats,
    ProcessUsage,
    SwapUsage,
)
from crirt.sandboxes.records import SandboxRecord
from crirt.sandboxes.service import SandboxService
from crirt.shim.cgroups import cgroup_dirs_of, parse_limit
from crirt.shim.registry import ShimRegistry

log = logging.getLogger(__name__)

MEMORY_FIELDS = ("working_set_bytes", "available_bytes", "usage_bytes", "rss_bytes", "page_faults",
                 "major_page_faults")
SUMMED_MEMORY = ("working_set_bytes", "usage_bytes", "rss_bytes", "page_faults", "major_page_faults")
DEFAULT_INTERFACE = "eth0"


def _u64(value: int | None) -> UInt64Value | None:
    return UInt64Value(value=max(int(value), 0)) if value is not None else None


def nano_cores(previous: tuple[int, int] | None, timestamp: int, usage: int) -> int | None:
    """The CPU rate in nanocores between two (timestamp ns, cumulative cpu ns) samples; None without a usable
    earlier sample (none, same instant, or a counter that went backwards, e.g. a restarted container)."""
    if previous is None:
        return None
    then, used = previous
    if timestamp <= then or usage < used:
        return None
    return (usage - used) * 1_000_000_000 // (timestamp - then)


def parse_net_dev(text: str) -> list[NetworkInterfaceUsage]:
    """The interfaces of a ``/proc/PID/net/dev`` text, loopback left out."""
    return [NetworkInterfaceUsage(name=name, rx_bytes=_u64(numbers[0]), rx_errors=_u64(numbers[2]),
                                  tx_bytes=_u64(numbers[8]), tx_errors=_u64(numbers[10]))
            for name, numbers in net_dev_counters(text).items()]


def read_swap(pid: int) -> tuple[int | None, int | None]:
    """(swap used, swap available) of the cgroup of ``pid``; None for what cannot be read (cgroup v2 only:
    v1 reports memory+swap together)."""
    try:
        dirs = cgroup_dirs_of(pid)
        if "memory" in dirs or "" not in dirs:
            return None, None
        used = int((dirs[""] / "memory.swap.current").read_text())
        limit = parse_limit((dirs[""] / "memory.swap.max").read_text())
    except (OSError, ValueError):
        return None, None
    return used, max(limit - used, 0) if limit is not None else None


@dataclass(frozen=True)
class _Sample:
    """What one container contributes to its pod's figures."""

    stats: ContainerStats
    raw: dict[str, Any]
    pid: int


@dataclass
class StatsService:
    """Samples containers and pods; remembers each one's previous CPU sample for ``usage_nano_cores``."""

    containers: ContainerService
    registry: ShimRegistry
    sandboxes: SandboxService
    snapshots: SnapshotStore
    _cpu: dict[str, tuple[int, int]] = field(default_factory=dict)

    def register(self, bus: Bus) -> None:
        bus.register(ContainerStatsCommand, self.container_stats)
        bus.register(ListContainerStatsCommand, self.list_container_stats)
        bus.register(PodSandboxStatsCommand, self.pod_stats)
        bus.register(ListPodSandboxStatsCommand, self.list_pod_stats)
        bus.register(StreamContainerStatsCommand, self.stream_container_stats)
        bus.register(StreamPodSandboxStatsCommand, self.stream_pod_stats)
        MetricsService(self).register(bus)

    # ---- containers ---------------------------------------------------------------------------------------

    async def container_stats(self, command: ContainerStatsCommand) -> ContainerStatsResult:
        record = self.containers.get(command.container_id)
        return ContainerStatsResult(stats=(await self._sample(record)).stats)

    async def stream_container_stats(self, command: StreamContainerStatsCommand
                                     ) -> AsyncIterator[StreamContainerStatsResult]:
        listed = await self.list_container_stats(ListContainerStatsCommand(filter=command.filter))
        for batch in batches(listed.stats):
            yield StreamContainerStatsResult(container_stats=list(batch))

    async def list_container_stats(self, command: ListContainerStatsCommand) -> ListContainerStatsResult:
        wanted = command.filter
        records = [r for r in self.containers.records
                   if wanted is None or (id_matches(wanted.id, r.id)
                                         and id_matches(wanted.pod_sandbox_id, r.sandbox_id)
                                         and labels_match(wanted.label_selector, r.config.labels))]
        samples = await asyncio.gather(*(self._sample(r) for r in records))
        self._forget_gone()
        return ListContainerStatsResult(stats=[s.stats for s in samples])

    def _forget_gone(self) -> None:
        """Drop the CPU samples of containers and pods that no longer exist."""
        known = set(self.containers.records.ids()) | set(self.sandboxes.records.ids())
        for key in [k for k in self._cpu if k.partition(":")[2] not in known]:
            del self._cpu[key]

    async def pid_of(self, record: ContainerRecord) -> int:
        """The pid of a running container's init process; 0 when it does not run."""
        if record.state != ContainerState.CONTAINER_RUNNING:
            return 0
        try:
            return (await self.registry.resolve(record.runtime_handler).state(record.id)).pid
        except CrirtError as exc:
            log.debug("state of container %s: %s", record.id, exc)
            return 0

    async def _raw(self, record: ContainerRecord) -> tuple[dict[str, Any], int]:
        """The shim's cgroup sample and the container's pid; empty and 0 when it does not run."""
        pid = await self.pid_of(record)
        if pid <= 0:
            return {}, 0
        try:
            raw = await self.registry.resolve(record.runtime_handler).stats(record.id)
        except CrirtError as exc:
            log.debug("stats of container %s: %s", record.id, exc)
            return {}, 0
        return raw, pid

    async def _sample(self, record: ContainerRecord) -> _Sample:
        raw, pid = await self._raw(record)
        attributes = ContainerAttributes(id=record.id, metadata=record.config.metadata, labels=record.config.labels,
                                         annotations=record.config.annotations)
        timestamp = int(raw.get("timestamp") or time.time_ns())
        cpu = self._cpu_usage(f"c:{record.id}", timestamp, raw.get("cpu", {}).get("usage_core_nano_seconds"))
        memory = raw.get("memory")
        swap = None
        if pid > 0:
            used, available = await asyncio.to_thread(read_swap, pid)
            if used is not None:
                swap = SwapUsage(timestamp=timestamp, swap_usage_bytes=_u64(used),
                                 swap_available_bytes=_u64(available))
        stats = ContainerStats(
            attributes=attributes, cpu=cpu,
            memory=MemoryUsage(timestamp=timestamp, **{k: _u64(memory.get(k)) for k in MEMORY_FIELDS})
            if memory else None,
            writable_layer=await self._writable_layer(record.id), swap=swap)
        return _Sample(stats, raw, pid)

    def _cpu_usage(self, key: str, timestamp: int, usage: int | None) -> CpuUsage | None:
        if usage is None:
            return None
        rate = nano_cores(self._cpu.get(key), timestamp, usage)
        self._cpu[key] = (timestamp, usage)
        return CpuUsage(timestamp=timestamp, usage_core_nano_seconds=_u64(usage), usage_nano_cores=_u64(rate))

    def writable_layer_usage(self, container_id: str) -> tuple[int, int] | None:
        """(bytes, inodes) of a container's writable layer; None when it cannot be read. Walks the tree."""
        try:
            return self.snapshots.rootfs_usage(container_id)
        except (OSError, LookupError, CrirtError):
            return None

    async def _writable_layer(self, container_id: str) -> FilesystemUsage | None:
        timestamp = time.time_ns()
        usage = await asyncio.to_thread(self.writable_layer_usage, container_id)
        if usage is None:
            return None
        used, inodes = usage
        return FilesystemUsage(timestamp=timestamp,
                               fs_id=FilesystemIdentifier(mountpoint=str(self.snapshots.rootfs_root)),
                               used_bytes=_u64(used), inodes_used=_u64(inodes))

    # ---- pods -----------------------------------------------------------------------------------------------

    async def pod_stats(self, command: PodSandboxStatsCommand) -> PodSandboxStatsResult:
        record = self.sandboxes.find(command.pod_sandbox_id)
        if record is None:
            raise NotFound(f"pod sandbox {command.pod_sandbox_id!r} not found")
        return PodSandboxStatsResult(stats=await self._pod_sample(record))

    async def stream_pod_stats(self, command: StreamPodSandboxStatsCommand
                               ) -> AsyncIterator[StreamPodSandboxStatsResult]:
        listed = await self.list_pod_stats(ListPodSandboxStatsCommand(filter=command.filter))
        for batch in batches(listed.stats):
            yield StreamPodSandboxStatsResult(pod_sandbox_stats=list(batch))

    async def list_pod_stats(self, command: ListPodSandboxStatsCommand) -> ListPodSandboxStatsResult:
        wanted = command.filter
        records = [r for r in self.sandboxes.records
                   if r.listed and r.state == PodSandboxState.SANDBOX_READY
                   and (wanted is None or (id_matches(wanted.id, r.id)
                                           and labels_match(wanted.label_selector, r.config.labels)))]
        stats = await asyncio.gather(*(self._pod_sample(r) for r in records))
        self._forget_gone()
        return ListPodSandboxStatsResult(stats=list(stats))

    async def _pod_sample(self, record: SandboxRecord) -> PodSandboxStats:
        members = [r for r in self.containers.records if r.sandbox_id == record.id]
        samples = await asyncio.gather(*(self._sample(r) for r in members))
        timestamp = time.time_ns()
        running = [s for s in samples if s.raw]
        cpu = memory = process = None
        if running:
            timestamp = max(int(s.raw["timestamp"]) for s in running)
            usages = [s.raw.get("cpu", {}).get("usage_core_nano_seconds") for s in running]
            if any(u is not None for u in usages):
                cpu = self._cpu_usage(f"p:{record.id}", timestamp, sum(u or 0 for u in usages))
            memories = [s.raw.get("memory", {}) for s in running]
            if any(memories):
                memory = MemoryUsage(timestamp=timestamp, **{
                    k: _u64(sum(m.get(k) or 0 for m in memories)) for k in SUMMED_MEMORY})
            counts = [s.raw.get("process", {}).get("process_count") for s in running]
            if any(c is not None for c in counts):
                process = ProcessUsage(timestamp=timestamp, process_count=_u64(sum(c or 0 for c in counts)))
        pids = await self.pod_pids(record, [s.pid for s in samples if s.pid > 0])
        return PodSandboxStats(
            attributes=PodSandboxAttributes(id=record.id, metadata=record.config.metadata,
                                            labels=record.config.labels, annotations=record.config.annotations),
            linux=LinuxPodSandboxStats(cpu=cpu, memory=memory, network=await self._network(pids),
                                       process=process, containers=[s.stats for s in samples]))

    async def pod_pids(self, record: SandboxRecord, container_pids: list[int]) -> list[int]:
        """Processes inside the pod's network namespace: its infra container's first, then its containers'."""
        pids = list(container_pids)
        if record.infra and record.state == PodSandboxState.SANDBOX_READY:
            with contextlib.suppress(CrirtError):
                infra = await self.sandboxes.infra.state(record.runtime_handler, record.id)
                if infra is not None and infra.pid > 0:
                    pids.insert(0, infra.pid)
        return pids

    @staticmethod
    async def net_dev(pids: list[int]) -> tuple[int, str] | None:
        """(timestamp, ``/proc/PID/net/dev`` text) through the first of the processes still alive."""
        for pid in pids:
            timestamp = time.time_ns()
            try:
                return timestamp, await asyncio.to_thread(Path(f"/proc/{pid}/net/dev").read_text)
            except (OSError, ValueError):
                continue
        return None

    async def _network(self, pids: list[int]) -> NetworkUsage | None:
        """The pod's interfaces, read through the first of its processes still alive."""
        read = await self.net_dev(pids)
        if read is None:
            return None
        timestamp, text = read
        interfaces = parse_net_dev(text)
        default = next((i for i in interfaces if i.name == DEFAULT_INTERFACE), interfaces[0] if interfaces else None)
        return NetworkUsage(timestamp=timestamp, default_interface=default, interfaces=interfaces)
