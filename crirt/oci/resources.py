"""``linux.resources`` and ``process.oomScoreAdj`` from the CRI's ``LinuxContainerResources``.

As containerd: a zero means "not specified"; swap defaults to the memory limit (no swapping) where the node
accounts swap; hugepage limits are dropped when the node has no hugetlb controller (containerd's default,
``tolerate_missing_hugetlb_controller``). The CRI has no pids limit for containers: the kubelet sets it on
the pod's cgroup.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from crirt.errors import FailedPrecondition, InvalidArgument
from crirt.model.common import LinuxContainerResources
from crirt.oci.infra import clamp_oom_score_adj

FIELD = "config.linux.resources"
PAGE_SIZE = re.compile(r"^[0-9]+[KMGTPE]?B$")
CPUSET = re.compile(r"^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$")


@dataclass(frozen=True)
class CgroupFacts:
    """What the node's cgroups can do."""

    v2: bool = False
    """A unified (v2) hierarchy; False for v1 and hybrid."""
    swap: bool = True
    """Swap is accounted (``memory.memsw.*`` on v1, ``memory.swap.max`` on v2)."""
    hugetlb: bool = True
    """The hugetlb controller is available."""


def _cpuset(value: str, field: str) -> str:
    if value and not CPUSET.match(value):
        raise InvalidArgument(f"{field}: {value!r} is not a CPU or memory node list (like 0-3,8)")
    return value


def linux_resources(resources: LinuxContainerResources | None, cgroups: CgroupFacts) -> dict[str, Any]:
    """The ``cpu``, ``memory``, ``hugepageLimits`` and ``unified`` parts of ``linux.resources`` (the device
    rules are added by the caller). Unified (cgroup v2) keys on a v1 or hybrid node are FAILED_PRECONDITION:
    runc refuses them there."""
    if resources is None:
        return {}
    result: dict[str, Any] = {}
    if resources.cpu_period < 0:
        raise InvalidArgument(f"{FIELD}.cpu_period: {resources.cpu_period} is negative")
    if resources.cpu_shares < 0:
        raise InvalidArgument(f"{FIELD}.cpu_shares: {resources.cpu_shares} is negative")
    cpu = {key: value for key, value in (("shares", resources.cpu_shares), ("quota", resources.cpu_quota),
                                         ("period", resources.cpu_period)) if value}
    if resources.cpuset_cpus:
        cpu["cpus"] = _cpuset(resources.cpuset_cpus, f"{FIELD}.cpuset_cpus")
    if resources.cpuset_mems:
        cpu["mems"] = _cpuset(resources.cpuset_mems, f"{FIELD}.cpuset_mems")
    if cpu:
        result["cpu"] = cpu
    memory: dict[str, int] = {}
    if resources.memory_limit_in_bytes:
        memory["limit"] = resources.memory_limit_in_bytes
        if cgroups.swap:
            memory["swap"] = resources.memory_limit_in_bytes
    if resources.memory_swap_limit_in_bytes and cgroups.swap:
        memory["swap"] = resources.memory_swap_limit_in_bytes
    if memory:
        result["memory"] = memory
    for index, limit in enumerate(resources.hugepage_limits):
        if not PAGE_SIZE.match(limit.page_size):
            raise InvalidArgument(f"{FIELD}.hugepage_limits[{index}].page_size: {limit.page_size!r} is not a page "
                                  "size like 2MB or 1GB")
    if resources.hugepage_limits and cgroups.hugetlb:
        result["hugepageLimits"] = [{"pageSize": limit.page_size, "limit": limit.limit}
                                    for limit in resources.hugepage_limits]
    if resources.unified:
        if not cgroups.v2:
            raise FailedPrecondition(f"{FIELD}.unified: cgroup v2 settings ({', '.join(sorted(resources.unified))}) "
                                     "need a cgroup v2 node; this one runs cgroup v1")
        result["unified"] = dict(resources.unified)
    return result


def oom_score_adj(resources: LinuxContainerResources | None, own: int) -> int | None:
    """The requested ``oom_score_adj`` clamped to crirt's own value and the kernel's range: without
    CAP_SYS_RESOURCE runc cannot go lower (containerd's ``restrict_oom_score_adj``). None without resources:
    the container inherits crirt's."""
    if resources is None:
        return None
    return clamp_oom_score_adj(resources.oom_score_adj, own)
