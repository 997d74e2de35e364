"""Handlers for the runtime-wide RPCs: Version, Status, RuntimeConfig and UpdateRuntimeConfig."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path

from crirt import __version__
from crirt.bus import Bus
from crirt.cdi.registry import CdiRegistry
from crirt.commands.runtime import (
    RuntimeConfigCommand,
    RuntimeConfigResult,
    StatusCommand,
    StatusResult,
    UpdateRuntimeConfigCommand,
    UpdateRuntimeConfigResult,
    VersionCommand,
    VersionResult,
)
from crirt.config import Config
from crirt.errors import InvalidArgument
from crirt.metrics.instruments import RpcMetrics
from crirt.model.base import Model
from crirt.model.enums import CgroupDriver
from crirt.model.runtime import (
    LinuxRuntimeConfiguration,
    RuntimeCondition,
    RuntimeFeatures,
    RuntimeHandler,
    RuntimeHandlerFeatures,
    RuntimeStatus,
)
from crirt.network.cni import network_problem
from crirt.shim.registry import ShimRegistry
from crirt.stalls import StallWatch
from crirt.store import Store

CRI_API_VERSION = "v1"
KUBELET_API_VERSION = "0.1.0"  # the version string every CRI runtime answers in VersionResponse.version
CNI_CONFIG_SUFFIXES = (".conf", ".conflist", ".json")
RUNTIME_FEATURES = RuntimeFeatures(supplemental_groups_policy=True)
"""Handler-independent features: both SupplementalGroupsPolicy values are resolved by crirt itself (from the
image's /etc/group) for every handler, and ContainerStatus.user reports the result. No user namespaces."""


class NodeSettings(Model):
    """What the kubelet told crirt about the node (persisted across restarts)."""

    pod_cidr: str = ""


def cni_config_files(conf_dir: Path) -> list[Path]:
    """The CNI network config files in ``conf_dir``, in the order CNI users pick them (by name)."""
    try:
        return sorted(p for p in conf_dir.iterdir() if p.suffix in CNI_CONFIG_SUFFIXES and p.is_file())
    except OSError:
        return []


@dataclass
class RuntimeInfo:
    """Answers the runtime-wide RPCs from the config, the shim registry and the node settings."""

    config: Config
    registry: ShimRegistry
    rpcs: RpcMetrics
    """The front end's per-RPC figures, summed up for ``rpcMetrics``."""
    store: Store
    stalls: StallWatch | None = None
    """The loop-stall watchdog when ``[debug] loop_stall_ms`` turns it on."""
    cdi: CdiRegistry | None = None
    """The CDI spec directories' devices (reported as last read: Status reads no file)."""

    def register(self, bus: Bus) -> None:
        bus.register(VersionCommand, self.version)
        bus.register(StatusCommand, self.status)
        bus.register(RuntimeConfigCommand, self.runtime_config)
        bus.register(UpdateRuntimeConfigCommand, self.update_runtime_config)

    @property
    def _node(self) -> NodeSettings:
        return self.store.table("node", NodeSettings).get("settings") or NodeSettings()

    async def version(self, command: VersionCommand) -> VersionResult:
        return VersionResult(version=KUBELET_API_VERSION, runtime_name="crirt", runtime_version=__version__,
                             runtime_api_version=CRI_API_VERSION)

    async def status(self, command: StatusCommand) -> StatusResult:
        conditions = [self._runtime_condition(), self._network_condition()]
        if self.registry.problems:
            conditions.append(RuntimeCondition(type="ShimPluginsReady", status=False, reason="ShimPluginError",
                                               message="; ".join(self.registry.problems)))
        handlers = [
            RuntimeHandler(name=name, features=RuntimeHandlerFeatures(
                recursive_read_only_mounts=h.features.recursive_read_only_mounts,
                user_namespaces=h.features.user_namespaces))
            for name, h in [("", self.registry.handlers.get(self.registry.default)), *self.registry.handlers.items()]
            if h is not None
        ]
        info = self._verbose_info() if command.verbose else {}
        return StatusResult(status=RuntimeStatus(conditions=conditions), info=info, runtime_handlers=handlers,
                            features=RUNTIME_FEATURES)

    def _runtime_condition(self) -> RuntimeCondition:
        if self.registry.default_ready():
            return RuntimeCondition(type="RuntimeReady", status=True)
        handler = self.registry.handlers.get(self.registry.default)
        reason = handler.problem if handler else f"default runtime {self.registry.default!r} is not configured"
        return RuntimeCondition(type="RuntimeReady", status=False, reason="DefaultRuntimeUnavailable",
                                message=f"default runtime handler {self.registry.default!r}: {reason}")

    def _network_condition(self) -> RuntimeCondition:
        problem = network_problem(self.config.cni.conf_dir)
        if problem is None:
            return RuntimeCondition(type="NetworkReady", status=True)
        return RuntimeCondition(type="NetworkReady", status=False, reason="NetworkPluginNotReady", message=problem)

    def _verbose_info(self) -> dict[str, str]:
        handlers = {
            name: {"shim": h.plugin, "ready": h.shim is not None and not h.problem, "problem": h.problem,
                   "features": h.features.model_dump()}
            for name, h in self.registry.handlers.items()
        }
        return {
            "config": json.dumps({**self.config.model_dump(mode="json"),  # containerd's names for the two dirs
                                  "rootDir": str(self.config.root), "stateDir": str(self.config.state)}),
            "handlerStatus": json.dumps(handlers),
            "defaultRuntime": json.dumps(self.registry.default),
            "cniConfigFiles": json.dumps([str(p) for p in cni_config_files(self.config.cni.conf_dir)]),
            "podCIDR": json.dumps(self._node.pod_cidr),
            "rpcMetrics": json.dumps(self.rpcs.summary()),
            **({"loopStalls": json.dumps(self.stalls.report())} if self.stalls is not None else {}),
            **({"cdi": json.dumps(self.cdi.status())} if self.cdi is not None else {}),
        }

    async def runtime_config(self, command: RuntimeConfigCommand) -> RuntimeConfigResult:
        driver = CgroupDriver.SYSTEMD if self.config.cgroup_driver == "systemd" else CgroupDriver.CGROUPFS
        return RuntimeConfigResult(linux=LinuxRuntimeConfiguration(cgroup_driver=driver))

    async def update_runtime_config(self, command: UpdateRuntimeConfigCommand) -> UpdateRuntimeConfigResult:
        network = command.runtime_config.network_config if command.runtime_config else None
        if network is not None and network.pod_cidr:
            settings = NodeSettings(pod_cidr=_check_cidrs(network.pod_cidr))
            self.store.table("node", NodeSettings).put("settings", settings)
        return UpdateRuntimeConfigResult()


def _check_cidrs(value: str) -> str:
    """The kubelet sends one CIDR, or an IPv4 and an IPv6 one separated by a comma (dual stack)."""
    parts = value.split(",")
    try:
        if len(parts) > 2:
            raise ValueError("at most two CIDRs (one per IP family)")
        for part in parts:
            ipaddress.ip_network(part.strip(), strict=False)
    except ValueError as exc:
        raise InvalidArgument(
            f"runtime_config.network_config.pod_cidr {value[:100]!r} is not a CIDR list: {exc}") from None
    return ",".join(part.strip() for part in parts)
