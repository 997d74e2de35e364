"""Runtime-wide messages: health conditions, handlers, features and runtime configuration."""

from __future__ import annotations

from pydantic import Field

from crirt.model.base import Model
from crirt.model.enums import CgroupDriver
from crirt.model.types import BoundedList, Text


class RuntimeCondition(Model):
    """One named health condition of the runtime."""

    type: Text = ""
    status: bool = False
    reason: Text = ""
    message: Text = ""


class RuntimeStatus(Model):
    """The runtime's health conditions."""

    conditions: BoundedList[RuntimeCondition] = Field(default_factory=list)


class RuntimeHandlerFeatures(Model):
    """Optional features a runtime handler supports."""

    recursive_read_only_mounts: bool = False
    user_namespaces: bool = False


class RuntimeHandler(Model):
    """A runtime handler (e.g. an OCI runtime) and its features."""

    name: Text = ""
    features: RuntimeHandlerFeatures | None = None


class RuntimeFeatures(Model):
    """Optional features the runtime as a whole supports."""

    supplemental_groups_policy: bool = False
    user_namespaces_host_network: bool = False


class NetworkConfig(Model):
    """Node network settings the kubelet pushes to the runtime."""

    pod_cidr: Text = ""


class RuntimeConfig(Model):
    """Runtime settings the kubelet can update at run time."""

    network_config: NetworkConfig | None = None


class LinuxRuntimeConfiguration(Model):
    """Linux settings the runtime reports back to the kubelet."""

    cgroup_driver: CgroupDriver = CgroupDriver.SYSTEMD
