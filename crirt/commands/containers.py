"""Commands that manage the lifecycle, resources and logs of containers."""

from __future__ import annotations

import posixpath

from pydantic import Field, field_validator

from crirt.commands.base import Command, Result
from crirt.model.common import LinuxContainerResources
from crirt.model.container import (
    Container,
    ContainerConfig,
    ContainerFilter,
    ContainerMetadata,
    ContainerStatus,
    WindowsContainerResources,
)
from crirt.model.sandbox import PodSandboxConfig
from crirt.model.types import BoundedList, Int64, RequiredId, StrMap, Text


class NamedContainerMetadata(ContainerMetadata):
    """Container metadata whose name must be given."""

    name: RequiredId


class NamedContainerConfig(ContainerConfig):
    """A container configuration that must carry a named metadata, and a log path inside the log directory."""

    metadata: NamedContainerMetadata

    @field_validator("log_path")
    @classmethod
    def _check_log_path(cls, log_path: str) -> str:
        return relative_log_path(log_path)


def relative_log_path(log_path: str) -> str:
    """``log_path`` if it names a file inside the sandbox's log directory, which the CRI makes it relative to;
    an absolute path or one whose ``..`` leaves the directory would put the log elsewhere on the host. The
    messages leave the value out, so a hostile request cannot fill them."""
    if not log_path:
        return log_path
    if "\x00" in log_path:
        raise ValueError("must not contain NUL")
    if log_path.startswith("/"):
        raise ValueError("must be relative to the sandbox's log_directory, not absolute")
    normal = posixpath.normpath(log_path)
    if normal == "." or normal == ".." or normal.startswith("../"):
        raise ValueError("must name a file inside the sandbox's log_directory")
    return log_path


class CreateContainerResult(Result):
    """Id of the newly created (not yet started) container."""

    container_id: Text = ""


class CreateContainerCommand(Command):
    """Create a container inside an existing sandbox."""

    rpc = "CreateContainer"
    result = CreateContainerResult

    pod_sandbox_id: RequiredId
    config: NamedContainerConfig
    sandbox_config: PodSandboxConfig | None = None

    def lock_keys(self) -> tuple[str, ...]:
        """Serialize with the sandbox's own lifecycle so it cannot be stopped mid-creation."""
        return (f"sandbox:{self.pod_sandbox_id}",)


class StartContainerResult(Result):
    """Acknowledges that the container is running."""


class StartContainerCommand(Command):
    """Start a created container."""

    rpc = "StartContainer"
    result = StartContainerResult
    run_to_completion = True  # a task the runtime started is recorded and watched, whoever waits

    container_id: RequiredId

    def lock_keys(self) -> tuple[str, ...]:
        """Serialize with everything else touching this container."""
        return (f"container:{self.container_id}",)


class StopContainerResult(Result):
    """Acknowledges that the container has exited."""


class StopContainerCommand(Command):
    """Stop a container, killing it once the grace period (seconds) runs out."""

    rpc = "StopContainer"
    result = StopContainerResult

    container_id: RequiredId
    timeout: Int64 = 0

    def lock_keys(self) -> tuple[str, ...]:
        """Serialize with everything else touching this container."""
        return (f"container:{self.container_id}",)


class RemoveContainerResult(Result):
    """Acknowledges that the container is gone."""


class RemoveContainerCommand(Command):
    """Remove a container, forcibly stopping it first if needed."""

    rpc = "RemoveContainer"
    result = RemoveContainerResult

    container_id: RequiredId

    def lock_keys(self) -> tuple[str, ...]:
        """Serialize with everything else touching this container."""
        return (f"container:{self.container_id}",)


class ListContainersResult(Result):
    """The containers that matched."""

    containers: BoundedList[Container] = Field(default_factory=list)


class ListContainersCommand(Command):
    """List the containers matching an optional filter."""

    rpc = "ListContainers"
    result = ListContainersResult

    filter: ContainerFilter | None = None


class StreamContainersResult(Result):
    """One batch of matching containers."""

    containers: BoundedList[Container] = Field(default_factory=list)


class StreamContainersCommand(Command):
    """List the containers matching an optional filter, in several batches."""

    rpc = "StreamContainers"
    result = StreamContainersResult
    streaming = True

    filter: ContainerFilter | None = None


class ContainerStatusResult(Result):
    """Status of one container, with free-form details when verbose."""

    status: ContainerStatus | None = None
    info: StrMap = Field(default_factory=dict)


class ContainerStatusCommand(Command):
    """Ask for the status of one container."""

    rpc = "ContainerStatus"
    result = ContainerStatusResult

    container_id: RequiredId
    verbose: bool = False


class UpdateContainerResourcesResult(Result):
    """Acknowledges a container resource update."""


class UpdateContainerResourcesCommand(Command):
    """Change the resource limits of a running or created container."""

    rpc = "UpdateContainerResources"
    result = UpdateContainerResourcesResult

    container_id: RequiredId
    linux: LinuxContainerResources | None = None
    windows: WindowsContainerResources | None = None
    annotations: StrMap = Field(default_factory=dict)

    def lock_keys(self) -> tuple[str, ...]:
        """Serialize with everything else touching this container."""
        return (f"container:{self.container_id}",)


class ReopenContainerLogResult(Result):
    """Acknowledges that the container log file was reopened."""


class ReopenContainerLogCommand(Command):
    """Reopen a container's log file, typically after the kubelet rotated it."""

    rpc = "ReopenContainerLog"
    result = ReopenContainerLogResult

    container_id: RequiredId

    def lock_keys(self) -> tuple[str, ...]:
        """Serialize with everything else touching this container."""
        return (f"container:{self.container_id}",)


class CheckpointContainerResult(Result):
    """Acknowledges that the checkpoint archive was written."""


class CheckpointContainerCommand(Command):
    """Checkpoint a container into an archive at the given location."""

    rpc = "CheckpointContainer"
    result = CheckpointContainerResult

    container_id: RequiredId
    location: Text = ""
    timeout: Int64 = 0

    def lock_keys(self) -> tuple[str, ...]:
        """Serialize with everything else touching this container."""
        return (f"container:{self.container_id}",)
