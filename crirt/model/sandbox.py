"""Pod sandbox configuration, listing and status messages."""

from __future__ import annotations

from pydantic import Field

from crirt.model.base import Model
from crirt.model.common import (
    Int64Value,
    LinuxContainerResources,
    NamespaceOption,
    SecurityProfile,
    SELinuxOption,
)
from crirt.model.enums import NamespaceMode, PodSandboxState, Protocol, SupplementalGroupsPolicy
from crirt.model.types import BoundedList, Int32, Int64, StrMap, Text, UInt32


class PodSandboxMetadata(Model):
    """Name, uid, namespace and attempt that identify a pod sandbox."""

    name: Text = ""
    uid: Text = ""
    namespace: Text = ""
    attempt: UInt32 = 0


class DNSConfig(Model):
    """Resolver settings for the sandbox's resolv.conf."""

    servers: BoundedList[Text] = Field(default_factory=list)
    searches: BoundedList[Text] = Field(default_factory=list)
    options: BoundedList[Text] = Field(default_factory=list)


class PortMapping(Model):
    """A port published from the host into the sandbox."""

    protocol: Protocol = Protocol.TCP
    container_port: Int32 = 0
    host_port: Int32 = 0
    host_ip: Text = ""


class LinuxSandboxSecurityContext(Model):
    """Linux security settings that apply to the whole sandbox."""

    namespace_options: NamespaceOption | None = None
    selinux_options: SELinuxOption | None = None
    run_as_user: Int64Value | None = None
    run_as_group: Int64Value | None = None
    readonly_rootfs: bool = False
    supplemental_groups: BoundedList[Int64] = Field(default_factory=list)
    supplemental_groups_policy: SupplementalGroupsPolicy = SupplementalGroupsPolicy.Merge
    privileged: bool = False
    seccomp: SecurityProfile | None = None
    apparmor: SecurityProfile | None = None
    seccomp_profile_path: Text = ""


class LinuxPodSandboxConfig(Model):
    """The Linux-only part of a sandbox's configuration."""

    cgroup_parent: Text = ""
    security_context: LinuxSandboxSecurityContext | None = None
    sysctls: StrMap = Field(default_factory=dict)
    overhead: LinuxContainerResources | None = None
    resources: LinuxContainerResources | None = None


class WindowsNamespaceOption(Model):
    """Which network namespace a Windows sandbox uses."""

    network: NamespaceMode = NamespaceMode.POD


class WindowsSandboxSecurityContext(Model):
    """Windows security settings that apply to the whole sandbox."""

    run_as_username: Text = ""
    credential_spec: Text = ""
    host_process: bool = False
    namespace_options: WindowsNamespaceOption | None = None


class WindowsPodSandboxConfig(Model):
    """The Windows-only part of a sandbox's configuration."""

    security_context: WindowsSandboxSecurityContext | None = None


class PodSandboxConfig(Model):
    """Everything the runtime needs to create a pod sandbox."""

    metadata: PodSandboxMetadata | None = None
    hostname: Text = ""
    log_directory: Text = ""
    dns_config: DNSConfig | None = None
    port_mappings: BoundedList[PortMapping] = Field(default_factory=list)
    labels: StrMap = Field(default_factory=dict)
    annotations: StrMap = Field(default_factory=dict)
    linux: LinuxPodSandboxConfig | None = None
    windows: WindowsPodSandboxConfig | None = None


class PodSandboxStateValue(Model):
    """A sandbox state wrapped so that a filter can leave it unset."""

    state: PodSandboxState = PodSandboxState.SANDBOX_READY


class PodSandboxFilter(Model):
    """Criteria for listing sandboxes; every criterion given must match."""

    id: Text = ""
    state: PodSandboxStateValue | None = None
    label_selector: StrMap = Field(default_factory=dict)


class PodSandbox(Model):
    """A pod sandbox as it appears in listings."""

    id: Text = ""
    metadata: PodSandboxMetadata | None = None
    state: PodSandboxState = PodSandboxState.SANDBOX_READY
    created_at: Int64 = 0
    labels: StrMap = Field(default_factory=dict)
    annotations: StrMap = Field(default_factory=dict)
    runtime_handler: Text = ""


class PodIP(Model):
    """One extra IP address of a pod."""

    ip: Text = ""


class PodSandboxNetworkStatus(Model):
    """The IP addresses a sandbox got."""

    ip: Text = ""
    additional_ips: BoundedList[PodIP] = Field(default_factory=list)


class Namespace(Model):
    """The namespace options a sandbox actually runs with."""

    options: NamespaceOption | None = None


class LinuxPodSandboxStatus(Model):
    """The Linux-only part of a sandbox's status."""

    namespaces: Namespace | None = None


class PodSandboxStatus(Model):
    """The detailed status of one pod sandbox."""

    id: Text = ""
    metadata: PodSandboxMetadata | None = None
    state: PodSandboxState = PodSandboxState.SANDBOX_READY
    created_at: Int64 = 0
    network: PodSandboxNetworkStatus | None = None
    linux: LinuxPodSandboxStatus | None = None
    labels: StrMap = Field(default_factory=dict)
    annotations: StrMap = Field(default_factory=dict)
    runtime_handler: Text = ""
