"""ContainerStats, ListContainerStats, StreamContainerStats, PodSandboxStats, ListPodSandboxStats and
StreamPodSandboxStats (the metrics RPCs, ``crirt.containers.metrics``, read through this service).

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
from crirt.containers.netdev import net_dev_counters, read_net_devs
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


def network_usage(net_dev: tuple[int, str] | None) -> NetworkUsage | None:
    """A pod's interfaces from what ``read_net_dev`` read."""
    if net_dev is None:
        return None
    timestamp, text = net_dev
    interfaces = parse_net_dev(text)
    default = next((i for i in interfaces if i.name == DEFAULT_INTERFACE), interfaces[0] if interfaces else None)
    return NetworkUsage(timestamp=timestamp, default_interface=default, interfaces=interfaces)


@dataclass
class Read:
    """What ``StatsService.prefetch`` read or found cached: shim samples and writable-layer usage
    ((timestamp, bytes, inodes), or () where it could not be read), by container id."""

    samples: dict[str, dict[str, Any]] = field(default_factory=dict)
    layers: dict[str, tuple[int, ...]] = field(default_factory=dict)


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

    # ---- containers ---------------------------------------------------------------------------------------

    async def container_stats(self, command: ContainerStatsCommand) -> ContainerStatsResult:
        record = self.containers.get(command.container_id)
        read = await self.prefetch([record])
        return ContainerStatsResult(stats=self._sample(record, read).stats)

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
        read = await self.prefetch(records)
        samples = [self._sample(r, read) for r in records]
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

    async def prefetch(self, records: list[ContainerRecord], *, cgroups: bool = True) -> Read:
        """The samples of ``records``, from the caches where young enough; the rest is read in one batch: the
        cgroup counters by one ``stats_many`` call per runtime handler, the writable layers in one thread."""
        read = Read()
        missing: dict[str, list[str]] = {}
        layers = []
        for record in records:
            if cgroups and self.pid_of(record) > 0:
                if (sample := self._raw.get(record.id)) is not None:
                    read.samples[record.id] = sample
                else:
                    missing.setdefault(record.runtime_handler, []).append(record.id)
            if (usage := self._layers.get(record.id)) is not None:
                read.layers[record.id] = usage
            else:
                layers.append(record.id)
        await asyncio.gather(*(self._fetch_samples(handler, ids, read) for handler, ids in missing.items()),
                             self._fetch_layers(layers, read))
        return read

    async def _fetch_samples(self, handler: str, ids: list[str], read: Read) -> None:
        try:
            samples = await self.registry.resolve(handler).stats_many(ids)
        except CrirtError as exc:
            log.debug("stats of %d container(s) of handler %r: %s", len(ids), handler, exc)
            return
        for container_id, sample in samples.items():
            read.samples[container_id] = self._raw.put(container_id, sample)

    async def _fetch_layers(self, ids: list[str], read: Read) -> None:
        if ids:
            for container_id, usage in (await asyncio.to_thread(self._measure_layers, ids)).items():
                read.layers[container_id] = self._layers.put(container_id, usage)

    def _measure_layers(self, ids: list[str]) -> dict[str, tuple[int, ...]]:
        """(timestamp, bytes, inodes) of each writable layer, () where it cannot be read. Walks each tree."""
        measured: dict[str, tuple[int, ...]] = {}
        for container_id in ids:
            timestamp = time.time_ns()
            try:
                measured[container_id] = (timestamp, *self.snapshots.rootfs_usage(container_id))
            except (OSError, LookupError, CrirtError):
                measured[container_id] = ()
        return measured

    def _sample(self, record: ContainerRecord, read: Read) -> _Sample:
        """A container's stats from what ``prefetch`` read; empty figures where nothing could be read."""
        pid = self.pid_of(record)
        raw: dict[str, Any] = read.samples.get(record.id, {}) if pid > 0 else {}
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
            writable_layer=self._writable_layer(read.layers.get(record.id) or None), swap=swap)
        return _Sample(stats, raw, pid if raw else 0)

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

    def _writable_layer(self, usage: tuple[int, ...] | None) -> FilesystemUsage | None:
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
        [stats] = await self._pod_samples([record])
        return PodSandboxStatsResult(stats=stats)

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
        stats = await self._pod_samples(records)
        self._forget_gone()
        return ListPodSandboxStatsResult(stats=stats)

    def members(self, pods: list[SandboxRecord]) -> dict[str, list[ContainerRecord]]:
        """The containers of each pod, by pod id."""
        members: dict[str, list[ContainerRecord]] = {pod.id: [] for pod in pods}
        for record in self.containers.records:
            if record.sandbox_id in members:
                members[record.sandbox_id].append(record)
        return members

    async def _pod_samples(self, pods: list[SandboxRecord]) -> list[PodSandboxStats]:
        """The stats of each pod: its containers' samples read in one batch, its network in one thread."""
        members = self.members(pods)
        read = await self.prefetch([r for group in members.values() for r in group])
        samples = {pod.id: [self._sample(r, read) for r in members[pod.id]] for pod in pods}
        net_devs = await asyncio.to_thread(read_net_devs, [
            self.pod_pids(pod, [s.pid for s in samples[pod.id] if s.pid > 0]) for pod in pods])
        return [self._pod_sample(pod, samples[pod.id], net_dev) for pod, net_dev in zip(pods, net_devs, strict=True)]

    def _pod_sample(self, record: SandboxRecord, samples: list[_Sample],
                    net_dev: tuple[int, str] | None) -> PodSandboxStats:
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
        return PodSandboxStats(
            attributes=PodSandboxAttributes(id=record.id, metadata=record.config.metadata,
                                            labels=record.config.labels, annotations=record.config.annotations),
            linux=LinuxPodSandboxStats(cpu=cpu, memory=memory, network=network_usage(net_dev),
                                       process=process, containers=[s.stats for s in samples]))

    @staticmethod
    def pod_pids(record: SandboxRecord, container_pids: list[int]) -> list[int]:
        """Processes inside the pod's network namespace: its infra container's first, then its containers'."""
        ready = record.state == PodSandboxState.SANDBOX_READY and record.infra_pid > 0
        return [record.infra_pid, *container_pids] if ready else list(container_pids)
