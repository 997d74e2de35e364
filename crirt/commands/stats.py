"""Commands that report resource usage statistics and metrics of containers and sandboxes."""

from __future__ import annotations

from pydantic import Field

from crirt.commands.base import Command, Result
from crirt.model.stats import (
    ContainerStats,
    ContainerStatsFilter,
    MetricDescriptor,
    PodSandboxMetrics,
    PodSandboxStats,
    PodSandboxStatsFilter,
)
from crirt.model.types import BoundedList, RequiredId


class ContainerStatsResult(Result):
    """Usage sample of one container."""

    stats: ContainerStats | None = None


class ContainerStatsCommand(Command):
    """Sample the resource usage of one container."""

    rpc = "ContainerStats"
    result = ContainerStatsResult

    container_id: RequiredId


class ListContainerStatsResult(Result):
    """Usage samples of the matching containers."""

    stats: BoundedList[ContainerStats] = Field(default_factory=list)


class ListContainerStatsCommand(Command):
    """Sample the resource usage of the containers matching an optional filter."""

    rpc = "ListContainerStats"
    result = ListContainerStatsResult

    filter: ContainerStatsFilter | None = None


class StreamContainerStatsResult(Result):
    """One batch of container usage samples."""

    container_stats: BoundedList[ContainerStats] = Field(default_factory=list)


class StreamContainerStatsCommand(Command):
    """Sample the matching containers' resource usage, in several batches."""

    rpc = "StreamContainerStats"
    result = StreamContainerStatsResult
    streaming = True

    filter: ContainerStatsFilter | None = None


class PodSandboxStatsResult(Result):
    """Usage sample of one sandbox."""

    stats: PodSandboxStats | None = None


class PodSandboxStatsCommand(Command):
    """Sample the resource usage of one sandbox and its containers."""

    rpc = "PodSandboxStats"
    result = PodSandboxStatsResult

    pod_sandbox_id: RequiredId


class ListPodSandboxStatsResult(Result):
    """Usage samples of the matching sandboxes."""

    stats: BoundedList[PodSandboxStats] = Field(default_factory=list)


class ListPodSandboxStatsCommand(Command):
    """Sample the resource usage of the sandboxes matching an optional filter."""

    rpc = "ListPodSandboxStats"
    result = ListPodSandboxStatsResult

    filter: PodSandboxStatsFilter | None = None


class StreamPodSandboxStatsResult(Result):
    """One batch of sandbox usage samples."""

    pod_sandbox_stats: BoundedList[PodSandboxStats] = Field(default_factory=list)


class StreamPodSandboxStatsCommand(Command):
    """Sample the matching sandboxes' resource usage, in several batches."""

    rpc = "StreamPodSandboxStats"
    result = StreamPodSandboxStatsResult
    streaming = True

    filter: PodSandboxStatsFilter | None = None


class ListMetricDescriptorsResult(Result):
    """Descriptions of every metric the runtime can report."""

    descriptors: BoundedList[MetricDescriptor] = Field(default_factory=list)


class ListMetricDescriptorsCommand(Command):
    """Ask which metrics ListPodSandboxMetrics reports."""

    rpc = "ListMetricDescriptors"
    result = ListMetricDescriptorsResult


class ListPodSandboxMetricsResult(Result):
    """Metrics of every sandbox."""

    pod_metrics: BoundedList[PodSandboxMetrics] = Field(default_factory=list)


class ListPodSandboxMetricsCommand(Command):
    """Sample the metrics of all sandboxes and their containers."""

    rpc = "ListPodSandboxMetrics"
    result = ListPodSandboxMetricsResult


class StreamPodSandboxMetricsResult(Result):
    """One batch of sandbox metrics."""

    pod_sandbox_metrics: BoundedList[PodSandboxMetrics] = Field(default_factory=list)


class StreamPodSandboxMetricsCommand(Command):
    """Sample the metrics of all sandboxes and their containers, in several batches."""

    rpc = "StreamPodSandboxMetrics"
    result = StreamPodSandboxMetricsResult
    streaming = True
