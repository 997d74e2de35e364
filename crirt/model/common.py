"""Data messages shared by containers, sandboxes and images: mounts, devices, ids, security knobs."""

from __future__ import annotations

from pydantic import Field

from crirt.model.base import Model
from crirt.model.enums import MountPropagation, NamespaceMode, SecurityProfileType
from crirt.model.types import BoundedList, Bytes, Int64, StrMap, Text, UInt32, UInt64


class KeyValue(Model):
    """A name/value pair, such as one environment variable."""

    key: Text = ""
    value: Bytes = b""


class Int64Value(Model):
    """A signed 64-bit value wrapped so that unset and zero differ."""

    value: Int64 = 0


class UInt64Value(Model):
    """An unsigned 64-bit value wrapped so that unset and zero differ."""

    value: UInt64 = 0


class ImageSpec(Model):
    """An image reference, plus how the user wrote it and which runtime handler it is for."""

    image: Text = ""
    annotations: StrMap = Field(default_factory=dict)
    user_specified_image: Text = ""
    runtime_handler: Text = ""
    image_ref: Text = ""


class IDMapping(Model):
    """One contiguous range of ids mapped between container and host."""

    host_id: UInt32 = 0
    container_id: UInt32 = 0
    length: UInt32 = 0


class Mount(Model):
    """A host path or an image mounted into a container."""

    container_path: Text = ""
    host_path: Text = ""
    readonly: bool = False
    selinux_relabel: bool = False
    propagation: MountPropagation = MountPropagation.PROPAGATION_PRIVATE
    uid_mappings: BoundedList[IDMapping] = Field(default_factory=list)
    gid_mappings: BoundedList[IDMapping] = Field(default_factory=list)
    recursive_read_only: bool = False
    image: ImageSpec | None = None
    image_sub_path: Text = ""


class Device(Model):
    """A host device node made visible inside a container."""

    container_path: Text = ""
    host_path: Text = ""
    permissions: Text = ""


class CDIDevice(Model):
    """A device requested through its fully qualified CDI name."""

    name: Text = ""


class UserNamespace(Model):
    """User namespace mode and its uid/gid mappings."""

    mode: NamespaceMode = NamespaceMode.POD
    uids: BoundedList[IDMapping] = Field(default_factory=list)
    gids: BoundedList[IDMapping] = Field(default_factory=list)


class NamespaceOption(Model):
    """Which network, PID and IPC namespaces a Linux sandbox or container uses."""

    network: NamespaceMode = NamespaceMode.POD
    pid: NamespaceMode = NamespaceMode.POD
    ipc: NamespaceMode = NamespaceMode.POD
    target_id: Text = ""
    userns_options: UserNamespace | None = None


class SecurityProfile(Model):
    """A seccomp or AppArmor profile selection."""

    profile_type: SecurityProfileType = SecurityProfileType.RuntimeDefault
    localhost_ref: Text = ""


class SELinuxOption(Model):
    """The SELinux label parts to apply."""

    user: Text = ""
    role: Text = ""
    type: Text = ""
    level: Text = ""


class Capability(Model):
    """Linux capabilities to add or drop."""

    add_capabilities: BoundedList[Text] = Field(default_factory=list)
    drop_capabilities: BoundedList[Text] = Field(default_factory=list)
    add_ambient_capabilities: BoundedList[Text] = Field(default_factory=list)


class HugepageLimit(Model):
    """A hugepage limit for one page size."""

    page_size: Text = ""
    limit: UInt64 = 0


class LinuxContainerResources(Model):
    """Linux cgroup limits of a container, or of a whole pod when used for sandboxes."""

    cpu_period: Int64 = 0
    cpu_quota: Int64 = 0
    cpu_shares: Int64 = 0
    memory_limit_in_bytes: Int64 = 0
    oom_score_adj: Int64 = 0
    cpuset_cpus: Text = ""
    cpuset_mems: Text = ""
    hugepage_limits: BoundedList[HugepageLimit] = Field(default_factory=list)
    unified: StrMap = Field(default_factory=dict)
    memory_swap_limit_in_bytes: Int64 = 0
