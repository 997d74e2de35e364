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
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crirt.bus import Bus
from crirt.caching import SampleCache
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
from crirt.config import StatsConfig
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


@dataclass(frozen=True)
class _Sample:
    """What one container contributes to its pod's figures."""

    stats: ContainerStats
    raw: dict[str, Any]
    pid: int


@dataclass
class StatsService:
    """Samples containers and pods; remembers each one's previous CPU sample for ``usage_nano_cores``.

    Nothing here runs a program: a container's counters come from its shim's ``stats`` (files for the conmon
    driver), at most ``max_concurrency`` at a time and at most once per ``collect_interval``; pids come from
    the records."""

    containers: ContainerService
    registry: ShimRegistry
    sandboxes: SandboxService
    snapshots: SnapshotStore
    config: StatsConfig = field(default_factory=StatsConfig)
    _cpu: dict[str, tuple[int, int, int | None]] = field(default_factory=dict)
    """The last (timestamp, cumulative CPU ns, rate) of each container (``c:ID``) and pod (``p:ID``)."""
    _raw: SampleCache = field(init=False)
    _layers: SampleCache = field(init=False)
    slots: asyncio.Semaphore = field(init=False)
    """Bounds the samples read at once (each holds a thread while it reads)."""

    def __post_init__(self) -> None:
        self._raw = SampleCache(self.config.collect_interval)
        self._layers = SampleCache(self.config.fs_usage_interval)
        self.slots = asyncio.Semaphore(self.config.max_concurrency)

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
        """Drop the CPU samples and cached samples of containers and pods that no longer exist."""
        known = set(self.containers.records.ids()) | set(self.sandboxes.records.ids())
        for key in [k for k in self._cpu if k.partition(":")[2] not in known]:
            del self._cpu[key]
        self._raw.keep_only(known)
        self._layers.keep_only(known)

    @staticmethod
    def pid_of(record: ContainerRecord) -> int:
        """The pid of a running container's init process (from its record); 0 when it does not run."""
        return record.pid if record.state == ContainerState.CONTAINER_RUNNING else 0

    async def _shim_sample(self, record: ContainerRecord) -> tuple[dict[str, Any], int]:
        """The shim's cgroup sample (cached for one collection interval) and the container's pid; empty and 0
        when it does not run."""
        pid = self.pid_of(record)
        if pid <= 0:
            return {}, 0
        raw = self._raw.get(record.id)
        if raw is None:
            try:
                async with self.slots:
                    raw = self._raw.put(record.id, await self.registry.resolve(record.runtime_handler).stats(record.id))
            except CrirtError as exc:
                log.debug("stats of container %s: %s", record.id, exc)
                return {}, 0
        return raw, pid

    async def _sample(self, record: ContainerRecord) -> _Sample:
        raw, pid = await self._shim_sample(record)
        attributes = ContainerAttributes(id=record.id, metadata=record.config.metadata, labels=record.config.labels,
                                         annotations=record.config.annotations)
        timestamp = int(raw.get("timestamp") or time.time_ns())
        cpu = self._cpu_usage(f"c:{record.id}", timestamp, raw.get("cpu", {}).get("usage_core_nano_seconds"))
        memory = raw.get("memory")
        swap_figures = raw.get("swap")
        swap = SwapUsage(timestamp=timestamp, swap_usage_bytes=_u64(swap_figures.get("swap_usage_bytes")),
                         swap_available_bytes=_u64(swap_figures.get("swap_available_bytes"))) if swap_figures else None
        stats = ContainerStats(
            attributes=attributes, cpu=cpu,
            memory=MemoryUsage(timestamp=timestamp, **{k: _u64(memory.get(k)) for k in MEMORY_FIELDS})
            if memory else None,
            writable_layer=await self._writable_layer(record.id), swap=swap)
        return _Sample(stats, raw, pid)

    def _cpu_usage(self, key: str, timestamp: int, usage: int | None) -> CpuUsage | None:
        if usage is None:
            return None
        previous = self._cpu.get(key)
        if previous is not None and previous[0] == timestamp and previous[1] == usage:
            rate = previous[2]  # the same (cached) sample again: the same rate
        else:
            rate = nano_cores(previous[:2] if previous else None, timestamp, usage)
            self._cpu[key] = (timestamp, usage, rate)
        return CpuUsage(timestamp=timestamp, usage_core_nano_seconds=_u64(usage), usage_nano_cores=_u64(rate))

    async def writable_layer_usage(self, container_id: str) -> tuple[int, int, int] | None:
        """(timestamp, bytes, inodes) of a container's writable layer, measured at most once per
        ``fs_usage_interval``; None when it cannot be read. The walk of the tree runs in a thread."""
        cached = self._layers.get(container_id)
        if cached is not None:
            return cached or None
        timestamp = time.time_ns()
        try:
            async with self.slots:
                used, inodes = await asyncio.to_thread(self.snapshots.rootfs_usage, container_id)
        except (OSError, LookupError, CrirtError):
            self._layers.put(container_id, ())
            return None
        return self._layers.put(container_id, (timestamp, used, inodes))

    async def _writable_layer(self, container_id: str) -> FilesystemUsage | None:
        usage = await self.writable_layer_usage(container_id)
        if usage is None:
            return None
        timestamp, used, inodes = usage
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
        pids = self.pod_pids(record, [s.pid for s in samples if s.pid > 0])
        return PodSandboxStats(
            attributes=PodSandboxAttributes(id=record.id, metadata=record.config.metadata,
                                            labels=record.config.labels, annotations=record.config.annotations),
            linux=LinuxPodSandboxStats(cpu=cpu, memory=memory, network=await self._network(pids),
                                       process=process, containers=[s.stats for s in samples]))

    @staticmethod
    def pod_pids(record: SandboxRecord, container_pids: list[int]) -> list[int]:
        """Processes inside the pod's network namespace: its infra container's first, then its containers'."""
        ready = record.state == PodSandboxState.SANDBOX_READY and record.infra_pid > 0
        return [record.infra_pid, *container_pids] if ready else list(container_pids)

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
