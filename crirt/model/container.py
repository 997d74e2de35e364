"""Container configuration, listing and status messages."""

from __future__ import annotations

from pydantic import Field

from crirt.model.base import Model
from crirt.model.common import (
    Capability,
    CDIDevice,
    Device,
    ImageSpec,
    Int64Value,
    KeyValue,
    LinuxContainerResources,
    Mount,
    NamespaceOption,
    SecurityProfile,
    SELinuxOption,
)
from crirt.model.enums import ContainerState, Signal, SupplementalGroupsPolicy
from crirt.model.types import BoundedList, Int32, Int64, StrMap, Text, UInt32, UInt64


class ContainerMetadata(Model):
    """Name and attempt that identify a container inside its pod."""

    name: Text = ""
    attempt: UInt32 = 0


class LinuxContainerSecurityContext(Model):
    """Linux security settings of one container."""

    capabilities: Capability | None = None
    privileged: bool = False
    namespace_options: NamespaceOption | None = None
    selinux_options: SELinuxOption | None = None
    run_as_user: Int64Value | None = None
    run_as_group: Int64Value | None = None
    run_as_username: Text = ""
    readonly_rootfs: bool = False
    supplemental_groups: BoundedList[Int64] = Field(default_factory=list)
    supplemental_groups_policy: SupplementalGroupsPolicy = SupplementalGroupsPolicy.Merge
    no_new_privs: bool = False
    masked_paths: BoundedList[Text] = Field(default_factory=list)
    readonly_paths: BoundedList[Text] = Field(default_factory=list)
    seccomp: SecurityProfile | None = None
    apparmor: SecurityProfile | None = None
    apparmor_profile: Text = ""
    seccomp_profile_path: Text = ""


class LinuxContainerConfig(Model):
    """The Linux-only part of a container's configuration."""

    resources: LinuxContainerResources | None = None
    security_context: LinuxContainerSecurityContext | None = None


class WindowsCpuGroupAffinity(Model):
    """A CPU mask within one Windows processor group."""

    cpu_mask: UInt64 = 0
    cpu_group: UInt32 = 0


class WindowsContainerResources(Model):
    """Resource limits of a Windows container."""

    cpu_shares: Int64 = 0
    cpu_count: Int64 = 0
    cpu_maximum: Int64 = 0
    memory_limit_in_bytes: Int64 = 0
    rootfs_size_in_bytes: Int64 = 0
    affinity_cpus: BoundedList[WindowsCpuGroupAffinity] = Field(default_factory=list)


class WindowsContainerSecurityContext(Model):
    """Windows security settings of one container."""

    run_as_username: Text = ""
    credential_spec: Text = ""
    host_process: bool = False


class WindowsContainerConfig(Model):
    """The Windows-only part of a container's configuration."""

    resources: WindowsContainerResources | None = None
    security_context: WindowsContainerSecurityContext | None = None


class ContainerConfig(Model):
    """Everything the runtime needs to create a container."""

    metadata: ContainerMetadata | None = None
    image: ImageSpec | None = None
    command: BoundedList[Text] = Field(default_factory=list)
    args: BoundedList[Text] = Field(default_factory=list)
    working_dir: Text = ""
    envs: BoundedList[KeyValue] = Field(default_factory=list)
    mounts: BoundedList[Mount] = Field(default_factory=list)
    devices: BoundedList[Device] = Field(default_factory=list)
    labels: StrMap = Field(default_factory=dict)
    annotations: StrMap = Field(default_factory=dict)
    log_path: Text = ""
    stdin: bool = False
    stdin_once: bool = False
    tty: bool = False
    linux: LinuxContainerConfig | None = None
    windows: WindowsContainerConfig | None = None
    CDI_devices: BoundedList[CDIDevice] = Field(default_factory=list)
    stop_signal: Signal = Signal.RUNTIME_DEFAULT


class ContainerStateValue(Model):
    """A container state wrapped so that a filter can leave it unset."""

    state: ContainerState = ContainerState.CONTAINER_CREATED


class ContainerFilter(Model):
    """Criteria for listing containers; every criterion given must match."""

    id: Text = ""
    state: ContainerStateValue | None = None
    pod_sandbox_id: Text = ""
    label_selector: StrMap = Field(default_factory=dict)


class Container(Model):
    """A container as it appears in listings."""

    id: Text = ""
    pod_sandbox_id: Text = ""
    metadata: ContainerMetadata | None = None
    image: ImageSpec | None = None
    image_ref: Text = ""
    state: ContainerState = ContainerState.CONTAINER_CREATED
    created_at: Int64 = 0
    labels: StrMap = Field(default_factory=dict)
    annotations: StrMap = Field(default_factory=dict)
    image_id: Text = ""


class ContainerResources(Model):
    """The resource limits currently applied to a container."""

    linux: LinuxContainerResources | None = None
    windows: WindowsContainerResources | None = None


class LinuxContainerUser(Model):
    """Uid, gid and supplementary groups of a container's first process."""

    uid: Int64 = 0
    gid: Int64 = 0
    supplemental_groups: BoundedList[Int64] = Field(default_factory=list)


class ContainerUser(Model):
    """The identity a container's first process really runs as."""

    linux: LinuxContainerUser | None = None


class ContainerStatus(Model):
    """The detailed status of one container."""

    id: Text = ""
    metadata: ContainerMetadata | None = None
    state: ContainerState = ContainerState.CONTAINER_CREATED
    created_at: Int64 = 0
    started_at: Int64 = 0
    finished_at: Int64 = 0
    exit_code: Int32 = 0
    image: ImageSpec | None = None
    image_ref: Text = ""
    reason: Text = ""
    message: Text = ""
    labels: StrMap = Field(default_factory=dict)
    annotations: StrMap = Field(default_factory=dict)
    mounts: BoundedList[Mount] = Field(default_factory=list)
    log_path: Text = ""
    resources: ContainerResources | None = None
    image_id: Text = ""
    user: ContainerUser | None = None
    stop_signal: Signal = Signal.RUNTIME_DEFAULT
