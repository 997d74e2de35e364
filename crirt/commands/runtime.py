"""Commands about the runtime as a whole: version, health, configuration and container events."""

from __future__ import annotations

from pydantic import Field

from crirt.commands.base import Command, Result
from crirt.model.container import ContainerStatus
from crirt.model.enums import ContainerEventType
from crirt.model.runtime import (
    LinuxRuntimeConfiguration,
    RuntimeConfig,
    RuntimeFeatures,
    RuntimeHandler,
    RuntimeStatus,
)
from crirt.model.sandbox import PodSandboxStatus
from crirt.model.types import BoundedList, Int64, StrMap, Text


class VersionResult(Result):
    """Name and versions of the runtime and of the CRI API it speaks."""

    version: Text = ""
    runtime_name: Text = ""
    runtime_version: Text = ""
    runtime_api_version: Text = ""


class VersionCommand(Command):
    """Ask which runtime this is and which CRI version it implements."""

    rpc = "Version"
    result = VersionResult

    version: Text = ""


class StatusResult(Result):
    """Runtime health, handlers and features, with free-form details when verbose."""

    status: RuntimeStatus | None = None
    info: StrMap = Field(default_factory=dict)
    runtime_handlers: BoundedList[RuntimeHandler] = Field(default_factory=list)
    features: RuntimeFeatures | None = None


class StatusCommand(Command):
    """Ask whether the runtime and its network are ready."""

    rpc = "Status"
    result = StatusResult

    verbose: bool = False


class UpdateRuntimeConfigResult(Result):
    """Acknowledges a runtime configuration update."""


class UpdateRuntimeConfigCommand(Command):
    """Push new node-level settings (such as the pod CIDR) to the runtime."""

    rpc = "UpdateRuntimeConfig"
    result = UpdateRuntimeConfigResult

    runtime_config: RuntimeConfig | None = None


class RuntimeConfigResult(Result):
    """The runtime's own settings the kubelet must agree with."""

    linux: LinuxRuntimeConfiguration | None = None


class RuntimeConfigCommand(Command):
    """Ask for the runtime settings the kubelet has to match, such as the cgroup driver."""

    rpc = "RuntimeConfig"
    result = RuntimeConfigResult


class GetContainerEventsResult(Result):
    """One container lifecycle event, with the statuses it affected."""

    container_id: Text = ""
    container_event_type: ContainerEventType = ContainerEventType.CONTAINER_CREATED_EVENT
    created_at: Int64 = 0
    pod_sandbox_status: PodSandboxStatus | None = None
    containers_statuses: BoundedList[ContainerStatus] = Field(default_factory=list)


class GetContainerEventsCommand(Command):
    """Subscribe to container lifecycle events until the caller goes away."""

    rpc = "GetContainerEvents"
    result = GetContainerEventsResult
    streaming = True
