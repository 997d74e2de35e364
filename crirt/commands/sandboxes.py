"""Commands that create, inspect, list, resize and tear down pod sandboxes."""

from __future__ import annotations

from pydantic import Field

from crirt.commands.base import Command, Result
from crirt.model.common import LinuxContainerResources
from crirt.model.container import ContainerStatus
from crirt.model.sandbox import (
    PodSandbox,
    PodSandboxConfig,
    PodSandboxFilter,
    PodSandboxMetadata,
    PodSandboxStatus,
)
from crirt.model.types import BoundedList, Int64, RequiredId, StrMap, Text


class NamedPodSandboxMetadata(PodSandboxMetadata):
    """Sandbox metadata whose name, uid and namespace must all be given."""

    name: RequiredId
    uid: RequiredId
    namespace: RequiredId


class NamedPodSandboxConfig(PodSandboxConfig):
    """A sandbox configuration that must carry identifying metadata."""

    metadata: NamedPodSandboxMetadata


class RunPodSandboxResult(Result):
    """Id of the sandbox that is now ready."""

    pod_sandbox_id: Text = ""


class RunPodSandboxCommand(Command):
    """Create and start a pod sandbox."""

    rpc = "RunPodSandbox"
    result = RunPodSandboxResult

    config: NamedPodSandboxConfig
    runtime_handler: Text = ""

    def lock_keys(self) -> tuple[str, ...]:
        """The sandbox has no id yet: lock its pod attempt so duplicate requests do not race."""
        meta = self.config.metadata
        return (f"sandbox-name:{meta.namespace}/{meta.name}/{meta.uid}/{meta.attempt}",)


class StopPodSandboxResult(Result):
    """Acknowledges that the sandbox and its containers are stopped."""


class StopPodSandboxCommand(Command):
    """Stop a sandbox's containers and release its network; stopping twice is fine."""

    rpc = "StopPodSandbox"
    result = StopPodSandboxResult
    run_to_completion = True

    pod_sandbox_id: RequiredId

    def lock_keys(self) -> tuple[str, ...]:
        """Serialize with everything else touching this sandbox."""
        return (f"sandbox:{self.pod_sandbox_id}",)


class RemovePodSandboxResult(Result):
    """Acknowledges that the sandbox is gone."""


class RemovePodSandboxCommand(Command):
    """Remove a sandbox and its containers; removing an unknown sandbox is fine."""

    rpc = "RemovePodSandbox"
    result = RemovePodSandboxResult
    run_to_completion = True

    pod_sandbox_id: RequiredId

    def lock_keys(self) -> tuple[str, ...]:
        """Serialize with everything else touching this sandbox."""
        return (f"sandbox:{self.pod_sandbox_id}",)


class PodSandboxStatusResult(Result):
    """Status of one sandbox, optionally with its containers' statuses and free-form details."""

    status: PodSandboxStatus | None = None
    info: StrMap = Field(default_factory=dict)
    containers_statuses: BoundedList[ContainerStatus] = Field(default_factory=list)
    timestamp: Int64 = 0


class PodSandboxStatusCommand(Command):
    """Ask for the status of one sandbox."""

    rpc = "PodSandboxStatus"
    result = PodSandboxStatusResult

    pod_sandbox_id: RequiredId
    verbose: bool = False


class ListPodSandboxResult(Result):
    """The sandboxes that matched."""

    items: BoundedList[PodSandbox] = Field(default_factory=list)


class ListPodSandboxCommand(Command):
    """List the sandboxes matching an optional filter."""

    rpc = "ListPodSandbox"
    result = ListPodSandboxResult

    filter: PodSandboxFilter | None = None


class StreamPodSandboxesResult(Result):
    """One batch of matching sandboxes."""

    pod_sandboxes: BoundedList[PodSandbox] = Field(default_factory=list)


class StreamPodSandboxesCommand(Command):
    """List the sandboxes matching an optional filter, in several batches."""

    rpc = "StreamPodSandboxes"
    result = StreamPodSandboxesResult
    streaming = True

    filter: PodSandboxFilter | None = None


class UpdatePodSandboxResourcesResult(Result):
    """Acknowledges a sandbox resource update."""


class UpdatePodSandboxResourcesCommand(Command):
    """Change the pod-level resources and overhead of a sandbox."""

    rpc = "UpdatePodSandboxResources"
    result = UpdatePodSandboxResourcesResult

    pod_sandbox_id: RequiredId
    overhead: LinuxContainerResources | None = None
    resources: LinuxContainerResources | None = None

    def lock_keys(self) -> tuple[str, ...]:
        """Serialize with everything else touching this sandbox."""
        return (f"sandbox:{self.pod_sandbox_id}",)
