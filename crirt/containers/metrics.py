"""ListMetricDescriptors, ListPodSandboxMetrics and StreamPodSandboxMetrics: cAdvisor's container metrics.

The kubelet's PodAndContainerStatsFromCRI feature serves these on ``/metrics/cadvisor`` instead of asking
cAdvisor. Names, help texts, label keys and types follow containerd's CRI plugin (itself after cAdvisor): every
metric has the labels ``pod, namespace, container, id, image``; network metrics add ``interface``, filesystem
and disk metrics ``device``. Values are the CRI's unsigned integers, so times are whole seconds, as containerd
and CRI-O report them. A running container's figures come from its cgroup (v1, v2 or the hybrid layout: v1 files
when the memory controller is mounted as v1, else the unified tree), its processes' ``/proc`` entries and its
writable layer; a pod's from its network namespace. Only ready pods and their running containers are reported.
Every value is read at call time, so ``timestamp`` is 0 as the CRI asks of live values.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from crirt.bus import Bus
from crirt.commands.stats import (
    ListMetricDescriptorsCommand,
    ListMetricDescriptorsResult,
    ListPodSandboxMetricsCommand,
    ListPodSandboxMetricsResult,
    StreamPodSandboxMetricsCommand,
    StreamPodSandboxMetricsResult,
)
from crirt.containers.netdev import net_dev_counters, read_net_dev
from crirt.containers.records import ContainerRecord
from crirt.containers.stats import StatsService
from crirt.filters import batches
from crirt.model.common import UInt64Value
from crirt.model.enums import MetricType, PodSandboxState
from crirt.model.stats import ContainerMetrics, Metric, MetricDescriptor, PodSandboxMetrics
from crirt.sandboxes.records import SandboxRecord
from crirt.shim.cgroups import cgroup_dirs_of, memory_figures, parse_flat_keyed, parse_limit

BASE_KEYS = ("pod", "namespace", "container", "id", "image")
NS_PER_S = 1_000_000_000
US_PER_S = 1_000_000
UINT64_MAX = (1 << 64) - 1
COUNTER, GAUGE = MetricType.COUNTER, MetricType.GAUGE
POD_BATCH = 50
"""Pods per StreamPodSandboxMetrics message: a container's metrics take ~10 KB, so 50 pods of 10 containers stay far
below the 16 MiB message limit."""


@dataclass(frozen=True)
class Descriptor:
    """One metric crirt reports: its name, help text, type and the label keys after the base ones."""

    name: str
    help: str
    kind: MetricType
    extra_keys: tuple[str, ...] = ()

    @property
    def label_keys(self) -> tuple[str, ...]:
        return BASE_KEYS + self.extra_keys


DESCRIPTORS = (
    Descriptor("container_cpu_usage_seconds_total", "Cumulative CPU time consumed in seconds.", COUNTER),
    Descriptor("container_cpu_user_seconds_total", "Cumulative user CPU time consumed in seconds.", COUNTER),
    Descriptor("container_cpu_system_seconds_total", "Cumulative system CPU time consumed in seconds.", COUNTER),
    Descriptor("container_cpu_cfs_periods_total", "Number of elapsed enforcement period intervals.", COUNTER),
    Descriptor("container_cpu_cfs_throttled_periods_total", "Number of throttled period intervals.", COUNTER),
    Descriptor("container_cpu_cfs_throttled_seconds_total", "Total time duration the container has been throttled.",
               COUNTER),
    Descriptor("container_memory_usage_bytes",
               "Current memory usage in bytes, including all memory regardless of when it was accessed.", GAUGE),
    Descriptor("container_memory_max_usage_bytes", "Maximum memory usage recorded in bytes.", GAUGE),
    Descriptor("container_memory_working_set_bytes", "Current working set in bytes.", GAUGE),
    Descriptor("container_memory_rss", "Size of RSS (anonymous memory) in bytes.", GAUGE),
    Descriptor("container_memory_cache", "Number of bytes of page cache memory.", GAUGE),
    Descriptor("container_memory_mapped_file", "Size of memory mapped files in bytes.", GAUGE),
    Descriptor("container_memory_total_active_file_bytes", "Active file-backed memory in bytes.", GAUGE),
    Descriptor("container_memory_total_inactive_file_bytes", "Inactive file-backed memory in bytes.", GAUGE),
    Descriptor("container_memory_kernel_usage", "Size of kernel memory allocated in bytes.", GAUGE),
    Descriptor("container_memory_swap", "Container swap usage in bytes.", GAUGE),
    Descriptor("container_memory_failcnt", "Number of memory usage hits limits (cgroup v1 only).", COUNTER),
    Descriptor("container_memory_failures_total", "Cumulative count of memory allocation failures.", COUNTER,
               ("failure_type", "scope")),
    Descriptor("container_oom_events_total", "Count of out of memory events observed for the container.", COUNTER),
    Descriptor("container_processes", "Number of processes running inside the container.", GAUGE),
    Descriptor("container_threads", "Number of threads running inside the container.", GAUGE),
    Descriptor("container_threads_max",
               "Maximum number of threads allowed inside the container, infinity if value is zero.", GAUGE),
    Descriptor("container_file_descriptors", "Number of open file descriptors for the container.", GAUGE),
    Descriptor("container_sockets", "Number of open sockets for the container.", GAUGE),
    Descriptor("container_ulimits_soft", "Soft ulimit values for the container root process.", GAUGE, ("ulimit",)),
    Descriptor("container_spec_cpu_period", "CPU period of the container.", GAUGE),
    Descriptor("container_spec_cpu_quota", "CPU quota of the container.", GAUGE),
    Descriptor("container_spec_cpu_shares", "CPU share of the container.", GAUGE),
    Descriptor("container_spec_memory_limit_bytes", "Memory limit for the container, 0 when unlimited.", GAUGE),
    Descriptor("container_spec_memory_reservation_limit_bytes", "Memory reservation limit for the container.",
               GAUGE),
    Descriptor("container_spec_memory_swap_limit_bytes", "Memory swap limit for the container, 0 when unlimited.",
               GAUGE),
    Descriptor("container_fs_usage_bytes", "Number of bytes consumed by the container's writable layer.", GAUGE,
               ("device",)),
    Descriptor("container_fs_limit_bytes", "Number of bytes the filesystem of the writable layer holds.", GAUGE,
               ("device",)),
    Descriptor("container_fs_inodes_total", "Number of inodes of the filesystem of the writable layer.", GAUGE,
               ("device",)),
    Descriptor("container_fs_inodes_free", "Number of free inodes of the filesystem of the writable layer.", GAUGE,
               ("device",)),
    Descriptor("container_fs_reads_bytes_total", "Cumulative count of bytes read.", COUNTER, ("device",)),
    Descriptor("container_fs_writes_bytes_total", "Cumulative count of bytes written.", COUNTER, ("device",)),
    Descriptor("container_fs_reads_total", "Cumulative count of reads completed.", COUNTER, ("device",)),
    Descriptor("container_fs_writes_total", "Cumulative count of writes completed.", COUNTER, ("device",)),
    Descriptor("container_network_receive_bytes_total", "Cumulative count of bytes received.", COUNTER,
               ("interface",)),
    Descriptor("container_network_receive_packets_total", "Cumulative count of packets received.", COUNTER,
               ("interface",)),
    Descriptor("container_network_receive_packets_dropped_total",
               "Cumulative count of packets dropped while receiving.", COUNTER, ("interface",)),
    Descriptor("container_network_receive_errors_total", "Cumulative count of errors encountered while receiving.",
               COUNTER, ("interface",)),
    Descriptor("container_network_transmit_bytes_total", "Cumulative count of bytes transmitted.", COUNTER,
               ("interface",)),
    Descriptor("container_network_transmit_packets_total", "Cumulative count of packets transmitted.", COUNTER,
               ("interface",)),
    Descriptor("container_network_transmit_packets_dropped_total",
               "Cumulative count of packets dropped while transmitting.", COUNTER, ("interface",)),
    Descriptor("container_network_transmit_errors_total",
               "Cumulative count of errors encountered while transmitting.", COUNTER, ("interface",)),
    Descriptor("container_last_seen", "Last time a container was seen by the exporter.", GAUGE),
    Descriptor("container_start_time_seconds", "Start time of the container since unix epoch in seconds.", GAUGE),
)
BY_NAME = {d.name: d for d in DESCRIPTORS}

NET_DEV_COLUMNS = {  # metric -> column of /proc/PID/net/dev
    "container_network_receive_bytes_total": 0,
    "container_network_receive_packets_total": 1,
    "container_network_receive_errors_total": 2,
    "container_network_receive_packets_dropped_total": 3,
    "container_network_transmit_bytes_total": 8,
    "container_network_transmit_packets_total": 9,
    "container_network_transmit_errors_total": 10,
    "container_network_transmit_packets_dropped_total": 11,
}

V1_FILES = {
    "cpuacct": ("cpuacct.usage", "cpuacct.stat"),
    "cpu": ("cpu.stat", "cpu.cfs_period_us", "cpu.cfs_quota_us", "cpu.shares"),
    "memory": ("memory.usage_in_bytes", "memory.max_usage_in_bytes", "memory.limit_in_bytes",
               "memory.soft_limit_in_bytes", "memory.memsw.usage_in_bytes", "memory.memsw.limit_in_bytes",
               "memory.failcnt", "memory.kmem.usage_in_bytes", "memory.stat", "memory.oom_control"),
    "pids": ("pids.current", "pids.max", "cgroup.procs"),
    "blkio": ("blkio.throttle.io_service_bytes", "blkio.throttle.io_serviced"),
}
V2_FILES = ("cpu.stat", "cpu.max", "cpu.weight", "memory.current", "memory.peak", "memory.max", "memory.min",
            "memory.swap.current", "memory.swap.max", "memory.stat", "memory.events", "pids.current", "pids.max",
            "cgroup.procs", "io.stat")


class Sample(NamedTuple):
    """One value of one metric, with the label values that follow the base ones."""

    name: str
    labels: tuple[str, ...]
    value: int


def _samples(pairs: list[tuple[str, int | None]]) -> list[Sample]:
    return [Sample(name, (), value) for name, value in pairs if value is not None]


def _int(text: str | None) -> int | None:
    """A number file's value; None when missing or not a number (``max``)."""
    value = (text or "").strip()
    return int(value) if value.lstrip("-").isdigit() else None


def _spec_limit(text: str | None) -> int | None:
    """A limit file as cAdvisor reports it: 0 when unlimited, None when the file is missing."""
    if text is None:
        return None
    try:
        return parse_limit(text) or 0
    except ValueError:
        return None


# ---- pure: cgroup files -> samples ----------------------------------------------------------------------------


def cpu_samples(version: int, files: Mapping[str, str], clk_tck: int) -> list[Sample]:
    """CPU time and CFS throttling; v1 from cpuacct and cpu, v2 from cpu.stat (microseconds)."""
    stat = parse_flat_keyed(files.get("cpu.stat", ""))
    if version == 1:
        usage = _int(files.get("cpuacct.usage"))
        ticks = parse_flat_keyed(files.get("cpuacct.stat", ""))
        user, system = ticks.get("user"), ticks.get("system")
        throttled = stat.get("throttled_time")
        return _samples([
            ("container_cpu_usage_seconds_total", usage // NS_PER_S if usage is not None else None),
            ("container_cpu_user_seconds_total", user // clk_tck if user is not None else None),
            ("container_cpu_system_seconds_total", system // clk_tck if system is not None else None),
            ("container_cpu_cfs_periods_total", stat.get("nr_periods")),
            ("container_cpu_cfs_throttled_periods_total", stat.get("nr_throttled")),
            ("container_cpu_cfs_throttled_seconds_total", throttled // NS_PER_S if throttled is not None else None),
        ])
    in_seconds = {key: stat[key] // US_PER_S for key in ("usage_usec", "user_usec", "system_usec", "throttled_usec")
                  if key in stat}
    return _samples([
        ("container_cpu_usage_seconds_total", in_seconds.get("usage_usec")),
        ("container_cpu_user_seconds_total", in_seconds.get("user_usec")),
        ("container_cpu_system_seconds_total", in_seconds.get("system_usec")),
        ("container_cpu_cfs_periods_total", stat.get("nr_periods")),
        ("container_cpu_cfs_throttled_periods_total", stat.get("nr_throttled")),
        ("container_cpu_cfs_throttled_seconds_total", in_seconds.get("throttled_usec")),
    ])


def memory_samples(version: int, files: Mapping[str, str]) -> list[Sample]:
    """Usage, working set (as the stats RPCs compute it), the memory.stat breakdown, faults and OOM kills."""
    stat = parse_flat_keyed(files.get("memory.stat", ""))
    if version == 1:
        usage = _int(files.get("memory.usage_in_bytes"))
        peak = _int(files.get("memory.max_usage_in_bytes"))
        memsw = _int(files.get("memory.memsw.usage_in_bytes"))
        swap = memsw - usage if memsw is not None and usage is not None else None
        kernel, failcnt = _int(files.get("memory.kmem.usage_in_bytes")), _int(files.get("memory.failcnt"))
        oom = parse_flat_keyed(files.get("memory.oom_control", "")).get("oom_kill")
        own, total = "", "total_"
    else:
        usage, peak = _int(files.get("memory.current")), _int(files.get("memory.peak"))
        swap, kernel, failcnt = _int(files.get("memory.swap.current")), stat.get("kernel"), None
        oom = parse_flat_keyed(files.get("memory.events", "")).get("oom_kill")
        own = total = ""
    working_set = memory_figures(version, usage, None, stat)["working_set_bytes"] if usage is not None else None
    samples = _samples([
        ("container_memory_usage_bytes", usage),
        ("container_memory_max_usage_bytes", peak),
        ("container_memory_working_set_bytes", working_set),
        ("container_memory_rss", stat.get(f"{total}rss" if version == 1 else "anon")),
        ("container_memory_cache", stat.get(f"{total}cache" if version == 1 else "file")),
        ("container_memory_mapped_file", stat.get(f"{total}mapped_file" if version == 1 else "file_mapped")),
        ("container_memory_total_active_file_bytes", stat.get(f"{total}active_file")),
        ("container_memory_total_inactive_file_bytes", stat.get(f"{total}inactive_file")),
        ("container_memory_kernel_usage", kernel),
        ("container_memory_swap", swap),
        ("container_memory_failcnt", failcnt),
        ("container_oom_events_total", oom),
    ])
    for kind in ("pgfault", "pgmajfault"):
        for scope, prefix in (("container", own), ("hierarchy", total)):
            if f"{prefix}{kind}" in stat:
                samples.append(Sample("container_memory_failures_total", (kind, scope), stat[f"{prefix}{kind}"]))
    return samples


def weight_to_shares(weight: int) -> int:
    """The cgroup v1 cpu.shares a v2 cpu.weight stands for (the inverse of runc's conversion)."""
    return 2 + (weight - 1) * 262142 // 9999


def spec_samples(version: int, files: Mapping[str, str]) -> list[Sample]:
    """The limits in force, read back from the cgroup (so they show what the runtime applied)."""
    if version == 1:
        quota = _int(files.get("cpu.cfs_quota_us"))
        return _samples([
            ("container_spec_cpu_period", _int(files.get("cpu.cfs_period_us"))),
            ("container_spec_cpu_quota", quota if quota is not None and quota > 0 else None),
            ("container_spec_cpu_shares", _int(files.get("cpu.shares"))),
            ("container_spec_memory_limit_bytes", _spec_limit(files.get("memory.limit_in_bytes"))),
            ("container_spec_memory_reservation_limit_bytes", _spec_limit(files.get("memory.soft_limit_in_bytes"))),
            ("container_spec_memory_swap_limit_bytes", _spec_limit(files.get("memory.memsw.limit_in_bytes"))),
        ])
    quota_text, _, period_text = files.get("cpu.max", "").partition(" ")
    weight = _int(files.get("cpu.weight"))
    return _samples([
        ("container_spec_cpu_period", _int(period_text)),
        ("container_spec_cpu_quota", _int(quota_text)),
        ("container_spec_cpu_shares", weight_to_shares(weight) if weight is not None else None),
        ("container_spec_memory_limit_bytes", _spec_limit(files.get("memory.max"))),
        ("container_spec_memory_reservation_limit_bytes", _spec_limit(files.get("memory.min"))),
        ("container_spec_memory_swap_limit_bytes", _spec_limit(files.get("memory.swap.max"))),
    ])


def procs(files: Mapping[str, str]) -> list[int]:
    """The process ids listed in the cgroup's cgroup.procs."""
    return [int(line) for line in files.get("cgroup.procs", "").split() if line.isdigit()]


def task_samples(files: Mapping[str, str]) -> list[Sample]:
    """Processes (cgroup.procs), threads (pids.current) and the thread limit (pids.max, 0 for none)."""
    limit = files.get("pids.max")
    return _samples([
        ("container_processes", len(procs(files)) if "cgroup.procs" in files else None),
        ("container_threads", _int(files.get("pids.current"))),
        ("container_threads_max", (_int(limit) or 0) if limit is not None else None),
    ])


def parse_blkio(text: str) -> dict[str, dict[str, int]]:
    """A v1 ``blkio.throttle.*`` file (``MAJ:MIN Op value`` lines) as {device: {op: value}}."""
    devices: dict[str, dict[str, int]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2].isdigit():
            devices.setdefault(parts[0], {})[parts[1].lower()] = int(parts[2])
    return devices


def parse_io_stat(text: str) -> dict[str, dict[str, int]]:
    """A v2 ``io.stat`` file (``MAJ:MIN key=value ...`` lines) as {device: {key: value}}."""
    devices = {}
    for line in text.splitlines():
        device, *pairs = line.split() or [""]
        if device:
            devices[device] = {k: int(v) for k, _, v in (p.partition("=") for p in pairs) if v.isdigit()}
    return devices


def io_samples(version: int, files: Mapping[str, str], device_name: Callable[[str], str]) -> list[Sample]:
    """Bytes and operations read and written per block device."""
    if version == 1:
        volume = parse_blkio(files.get("blkio.throttle.io_service_bytes", ""))
        ops = parse_blkio(files.get("blkio.throttle.io_serviced", ""))
        per_device = {dev: (volume.get(dev, {}).get("read"), volume.get(dev, {}).get("write"),
                            ops.get(dev, {}).get("read"), ops.get(dev, {}).get("write"))
                      for dev in sorted(volume.keys() | ops.keys())}
    else:
        per_device = {dev: (v.get("rbytes"), v.get("wbytes"), v.get("rios"), v.get("wios"))
                      for dev, v in sorted(parse_io_stat(files.get("io.stat", "")).items())}
    names = ("container_fs_reads_bytes_total", "container_fs_writes_bytes_total", "container_fs_reads_total",
             "container_fs_writes_total")
    return [Sample(name, (device_name(dev),), value) for dev, values in per_device.items()
            for name, value in zip(names, values, strict=True) if value is not None]


def cgroup_samples(version: int, files: Mapping[str, str], clk_tck: int,
                   device_name: Callable[[str], str] = str) -> list[Sample]:
    """Every metric a container's cgroup files give."""
    return (cpu_samples(version, files, clk_tck) + memory_samples(version, files) + spec_samples(version, files)
            + task_samples(files) + io_samples(version, files, device_name))


def open_files_soft_limit(limits: str) -> int | None:
    """The soft ``Max open files`` of a ``/proc/PID/limits`` text; None when unlimited or absent."""
    for line in limits.splitlines():
        if line.startswith("Max open files"):
            return _int(line[len("Max open files"):].split()[0])
    return None


def network_samples(interfaces: Mapping[str, list[int]]) -> list[Sample]:
    """The pod's traffic counters, one set per interface."""
    return [Sample(name, (interface,), counters[column]) for interface, counters in interfaces.items()
            for name, column in NET_DEV_COLUMNS.items()]


def filesystem_samples(device: str, fs: os.statvfs_result, used_bytes: int | None) -> list[Sample]:
    """The writable layer's usage and the size and inodes of the filesystem holding it."""
    samples = [Sample("container_fs_limit_bytes", (device,), fs.f_blocks * fs.f_frsize),
               Sample("container_fs_inodes_total", (device,), fs.f_files),
               Sample("container_fs_inodes_free", (device,), fs.f_ffree)]
    if used_bytes is not None:
        samples.insert(0, Sample("container_fs_usage_bytes", (device,), used_bytes))
    return samples


def to_metrics(base: tuple[str, ...], samples: list[Sample]) -> list[Metric]:
    """CRI metrics from samples; the label values line up with the descriptor's keys."""
    metrics = []
    for sample in samples:
        descriptor = BY_NAME[sample.name]
        labels = [*base, *sample.labels]
        if len(labels) != len(descriptor.label_keys):
            raise ValueError(f"metric {sample.name} has {len(labels)} label values for {descriptor.label_keys}")
        metrics.append(Metric(name=sample.name, metric_type=descriptor.kind, label_values=labels,
                              value=UInt64Value(value=min(max(sample.value, 0), UINT64_MAX))))
    return metrics


def container_labels(pod: SandboxRecord, record: ContainerRecord) -> tuple[str, ...]:
    meta, container = pod.config.metadata, record.config.metadata
    return (meta.name if meta else "", meta.namespace if meta else "", container.name if container else "",
            record.id, record.image_ref)


def pod_labels(pod: SandboxRecord) -> tuple[str, ...]:
    meta = pod.config.metadata
    return meta.name if meta else "", meta.namespace if meta else "", "", pod.id, ""


# ---- reading the host ---------------------------------------------------------------------------------------


def read_cgroup(pid: int) -> tuple[int, dict[str, str]]:
    """(cgroup version, {file name: text}) of the cgroup of ``pid``; files that cannot be read are left out.
    Raises ProcessLookupError if the process is gone."""
    dirs = cgroup_dirs_of(pid, tuple(V1_FILES))
    if "memory" in dirs:
        version = 1
        wanted = [(dirs[c], name) for c, names in V1_FILES.items() if c in dirs for name in names]
        if "pids" not in dirs:
            wanted.append((dirs["memory"], "cgroup.procs"))
    elif "" in dirs:
        version, wanted = 2, [(dirs[""], name) for name in V2_FILES]
    else:
        return 2, {}
    files = {}
    for directory, name in wanted:
        try:
            files[name] = (directory / name).read_text()
        except OSError:
            continue
    return version, files


def block_device_name(device: str) -> str:
    """``/dev/NAME`` of a ``MAJ:MIN`` block device, or ``MAJ:MIN`` itself when sysfs does not know it."""
    try:
        return f"/dev/{os.path.basename(os.readlink(f'/sys/dev/block/{device}'))}"
    except OSError:
        return device


def descriptor_counts(pids: list[int]) -> tuple[int, int]:
    """(open file descriptors, of which sockets) over the given processes."""
    fds = sockets = 0
    for pid in pids:
        try:
            names = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for name in names:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{name}")
            except OSError:
                continue
            fds += 1
            sockets += target.startswith("socket:")
    return fds, sockets


def process_samples(pid: int) -> list[Sample]:
    """Everything read from the cgroup and ``/proc`` of a running container whose init process is ``pid``."""
    try:
        version, files = read_cgroup(pid)
    except (ProcessLookupError, FileNotFoundError):
        return []
    samples = cgroup_samples(version, files, os.sysconf("SC_CLK_TCK"), block_device_name)
    fds, sockets = descriptor_counts(procs(files) or [pid])
    samples += [Sample("container_file_descriptors", (), fds), Sample("container_sockets", (), sockets)]
    try:
        soft = open_files_soft_limit(Path(f"/proc/{pid}/limits").read_text())
    except OSError:
        soft = None
    if soft is not None:
        samples.append(Sample("container_ulimits_soft", ("max_open_files",), soft))
    return samples


@dataclass
class MetricsService:
    """Answers the metrics RPCs, reading containers and pods through the stats service."""

    stats: StatsService

    def register(self, bus: Bus) -> None:
        bus.register(ListMetricDescriptorsCommand, self.descriptors)
        bus.register(ListPodSandboxMetricsCommand, self.list)
        bus.register(StreamPodSandboxMetricsCommand, self.stream)

    async def descriptors(self, command: ListMetricDescriptorsCommand) -> ListMetricDescriptorsResult:
        return ListMetricDescriptorsResult(descriptors=[
            MetricDescriptor(name=d.name, help=d.help, label_keys=list(d.label_keys)) for d in DESCRIPTORS])

    async def list(self, command: ListPodSandboxMetricsCommand) -> ListPodSandboxMetricsResult:
        return ListPodSandboxMetricsResult(pod_metrics=await self._all())

    async def stream(self, command: StreamPodSandboxMetricsCommand) -> AsyncIterator[StreamPodSandboxMetricsResult]:
        for batch in batches(await self._all(), POD_BATCH):
            yield StreamPodSandboxMetricsResult(pod_sandbox_metrics=list(batch))

    async def _all(self) -> list[PodSandboxMetrics]:
        """Every ready pod's metrics: the writable layers through the stats service's cache, everything read from
        cgroup files and ``/proc`` in one worker thread."""
        stats = self.stats
        pods = [r for r in stats.sandboxes.records if r.listed and r.state == PodSandboxState.SANDBOX_READY]
        members = stats.members(pods)
        running = {pod.id: [(r, pid) for r in members[pod.id] if (pid := stats.pid_of(r)) > 0] for pod in pods}
        read = await stats.prefetch([r for group in running.values() for r, _ in group], cgroups=False)
        usages = {container_id: usage or None for container_id, usage in read.layers.items()}
        read = await asyncio.to_thread(self._read, pods, running, usages)
        now = int(time.time())
        return [PodSandboxMetrics(
            pod_sandbox_id=pod.id, metrics=to_metrics(pod_labels(pod), read[pod.id][0]),
            container_metrics=[ContainerMetrics(container_id=r.id, metrics=to_metrics(
                container_labels(pod, r), [*samples, Sample("container_last_seen", (), now),
                                           Sample("container_start_time_seconds", (), r.started_at // NS_PER_S)]))
                for (r, _), samples in zip(running[pod.id], read[pod.id][1], strict=True)])
            for pod in pods]

    def _read(self, pods: list[SandboxRecord], running: dict[str, list[tuple[ContainerRecord, int]]],
              usages: dict[str, tuple[int, ...] | None]) -> dict[str, tuple[list[Sample], list[list[Sample]]]]:
        """For each pod: its network samples, and each running container's cgroup, ``/proc`` and filesystem
        samples. Reads files only: runs in a worker thread."""
        filesystem = self._filesystem()
        read = {}
        for pod in pods:
            net_dev = read_net_dev(self.stats.pod_pids(pod, [pid for _, pid in running[pod.id]]))
            network = network_samples(net_dev_counters(net_dev[1])) if net_dev else []
            containers = []
            for record, pid in running[pod.id]:
                usage = usages.get(record.id)
                containers.append([*process_samples(pid), *filesystem(usage[1] if usage else None)])
            read[pod.id] = (network, containers)
        return read

    def _filesystem(self) -> Callable[[int | None], list[Sample]]:
        """The writable-layer samples for a layer of ``used`` bytes (None when unknown); none at all when the
        filesystem of the writable layers cannot be read."""
        root = self.stats.snapshots.rootfs_root
        try:
            fs = os.statvfs(root)
            st_dev = os.stat(root).st_dev
        except OSError:
            return lambda used: []
        device = block_device_name(f"{os.major(st_dev)}:{os.minor(st_dev)}")
        return lambda used: filesystem_samples(device, fs, used)
