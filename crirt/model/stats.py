"""Resource usage statistics and metrics of containers and pod sandboxes (Linux and Windows)."""

from __future__ import annotations

from pydantic import Field

from crirt.model.base import Model
from crirt.model.common import UInt64Value
from crirt.model.container import ContainerMetadata
from crirt.model.enums import MetricType
from crirt.model.sandbox import PodSandboxMetadata
from crirt.model.types import BoundedList, Double, Int64, StrMap, Text, UInt64


class FilesystemIdentifier(Model):
    """Identifies the filesystem a usage figure refers to."""

    mountpoint: Text = ""


class FilesystemUsage(Model):
    """Space and inodes used on one filesystem."""

    timestamp: Int64 = 0
    fs_id: FilesystemIdentifier | None = None
    used_bytes: UInt64Value | None = None
    inodes_used: UInt64Value | None = None


class PsiData(Model):
    """Pressure stall totals and moving averages for one pressure kind."""

    total: UInt64 = 0
    avg_10: Double = 0.0
    avg_60: Double = 0.0
    avg_300: Double = 0.0


class PsiStats(Model):
    """Pressure stall information, split into full and some stalls."""

    full: PsiData | None = None
    some: PsiData | None = None


class CpuUsage(Model):
    """CPU usage counters of a Linux container or pod."""

    timestamp: Int64 = 0
    usage_core_nano_seconds: UInt64Value | None = None
    usage_nano_cores: UInt64Value | None = None
    psi: PsiStats | None = None


class MemoryUsage(Model):
    """Memory usage figures of a Linux container or pod."""

    timestamp: Int64 = 0
    working_set_bytes: UInt64Value | None = None
    available_bytes: UInt64Value | None = None
    usage_bytes: UInt64Value | None = None
    rss_bytes: UInt64Value | None = None
    page_faults: UInt64Value | None = None
    major_page_faults: UInt64Value | None = None
    psi: PsiStats | None = None


class SwapUsage(Model):
    """Swap usage figures of a Linux container."""

    timestamp: Int64 = 0
    swap_available_bytes: UInt64Value | None = None
    swap_usage_bytes: UInt64Value | None = None


class IoUsage(Model):
    """I/O pressure of a Linux container or pod."""

    timestamp: Int64 = 0
    psi: PsiStats | None = None


class ContainerAttributes(Model):
    """Identity of the container a stats sample belongs to."""

    id: Text = ""
    metadata: ContainerMetadata | None = None
    labels: StrMap = Field(default_factory=dict)
    annotations: StrMap = Field(default_factory=dict)


class ContainerStats(Model):
    """One resource usage sample of a Linux container."""

    attributes: ContainerAttributes | None = None
    cpu: CpuUsage | None = None
    memory: MemoryUsage | None = None
    writable_layer: FilesystemUsage | None = None
    swap: SwapUsage | None = None
    io: IoUsage | None = None


class ContainerStatsFilter(Model):
    """Criteria for picking the containers to report stats for."""

    id: Text = ""
    pod_sandbox_id: Text = ""
    label_selector: StrMap = Field(default_factory=dict)


class NetworkInterfaceUsage(Model):
    """Traffic counters of one network interface."""

    name: Text = ""
    rx_bytes: UInt64Value | None = None
    rx_errors: UInt64Value | None = None
    tx_bytes: UInt64Value | None = None
    tx_errors: UInt64Value | None = None


class NetworkUsage(Model):
    """Network traffic of a Linux pod."""

    timestamp: Int64 = 0
    default_interface: NetworkInterfaceUsage | None = None
    interfaces: BoundedList[NetworkInterfaceUsage] = Field(default_factory=list)


class ProcessUsage(Model):
    """Number of processes in a Linux pod."""

    timestamp: Int64 = 0
    process_count: UInt64Value | None = None


class PodSandboxAttributes(Model):
    """Identity of the sandbox a stats sample belongs to."""

    id: Text = ""
    metadata: PodSandboxMetadata | None = None
    labels: StrMap = Field(default_factory=dict)
    annotations: StrMap = Field(default_factory=dict)


class LinuxPodSandboxStats(Model):
    """One resource usage sample of a Linux pod and its containers."""

    cpu: CpuUsage | None = None
    memory: MemoryUsage | None = None
    network: NetworkUsage | None = None
    process: ProcessUsage | None = None
    containers: BoundedList[ContainerStats] = Field(default_factory=list)
    io: IoUsage | None = None


class WindowsCpuUsage(Model):
    """CPU usage counters of a Windows container or pod."""

    timestamp: Int64 = 0
    usage_core_nano_seconds: UInt64Value | None = None
    usage_nano_cores: UInt64Value | None = None


class WindowsMemoryUsage(Model):
    """Memory usage figures of a Windows container or pod."""

    timestamp: Int64 = 0
    working_set_bytes: UInt64Value | None = None
    available_bytes: UInt64Value | None = None
    page_faults: UInt64Value | None = None
    commit_memory_bytes: UInt64Value | None = None


class WindowsFilesystemUsage(Model):
    """Space used on one filesystem by a Windows container."""

    timestamp: Int64 = 0
    fs_id: FilesystemIdentifier | None = None
    used_bytes: UInt64Value | None = None


class WindowsContainerStats(Model):
    """One resource usage sample of a Windows container."""

    attributes: ContainerAttributes | None = None
    cpu: WindowsCpuUsage | None = None
    memory: WindowsMemoryUsage | None = None
    writable_layer: WindowsFilesystemUsage | None = None


class WindowsNetworkInterfaceUsage(Model):
    """Traffic counters of one Windows network interface."""

    name: Text = ""
    rx_bytes: UInt64Value | None = None
    rx_packets_dropped: UInt64Value | None = None
    tx_bytes: UInt64Value | None = None
    tx_packets_dropped: UInt64Value | None = None


class WindowsNetworkUsage(Model):
    """Network traffic of a Windows pod."""

    timestamp: Int64 = 0
    default_interface: WindowsNetworkInterfaceUsage | None = None
    interfaces: BoundedList[WindowsNetworkInterfaceUsage] = Field(default_factory=list)


class WindowsProcessUsage(Model):
    """Number of processes in a Windows pod."""

    timestamp: Int64 = 0
    process_count: UInt64Value | None = None


class WindowsPodSandboxStats(Model):
    """One resource usage sample of a Windows pod and its containers."""

    cpu: WindowsCpuUsage | None = None
    memory: WindowsMemoryUsage | None = None
    network: WindowsNetworkUsage | None = None
    process: WindowsProcessUsage | None = None
    containers: BoundedList[WindowsContainerStats] = Field(default_factory=list)


class PodSandboxStats(Model):
    """One resource usage sample of a pod sandbox."""

    attributes: PodSandboxAttributes | None = None
    linux: LinuxPodSandboxStats | None = None
    windows: WindowsPodSandboxStats | None = None


class PodSandboxStatsFilter(Model):
    """Criteria for picking the sandboxes to report stats for."""

    id: Text = ""
    label_selector: StrMap = Field(default_factory=dict)


class MetricDescriptor(Model):
    """Name, help text and label keys of one metric the runtime can report."""

    name: Text = ""
    help: Text = ""
    label_keys: BoundedList[Text] = Field(default_factory=list)


class Metric(Model):
    """One sampled metric value with its label values."""

    name: Text = ""
    timestamp: Int64 = 0
    metric_type: MetricType = MetricType.COUNTER
    label_values: BoundedList[Text] = Field(default_factory=list)
    value: UInt64Value | None = None


class ContainerMetrics(Model):
    """The metrics sampled for one container."""

    container_id: Text = ""
    metrics: BoundedList[Metric] = Field(default_factory=list)


class PodSandboxMetrics(Model):
    """The metrics sampled for one pod and its containers."""

    pod_sandbox_id: Text = ""
    metrics: BoundedList[Metric] = Field(default_factory=list)
    container_metrics: BoundedList[ContainerMetrics] = Field(default_factory=list)
