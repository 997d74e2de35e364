"""linux.resources and oomScoreAdj from LinuxContainerResources."""

from __future__ import annotations

from typing import Any

import pytest

from crirt.errors import FailedPrecondition, InvalidArgument
from crirt.model.common import LinuxContainerResources
from crirt.oci.resources import CgroupFacts, linux_resources, oom_score_adj

V1 = CgroupFacts(v2=False, swap=True, hugetlb=True)
V2 = CgroupFacts(v2=True, swap=True, hugetlb=True)


def res(facts: CgroupFacts = V1, **fields: Any) -> dict[str, Any]:
    return linux_resources(LinuxContainerResources.model_validate(fields), facts)


def test_nothing_asked_nothing_set() -> None:
    assert linux_resources(None, V1) == {}
    assert res() == {}


def test_cpu() -> None:
    assert res(cpu_shares=512, cpu_quota=50000, cpu_period=100000, cpuset_cpus="0-1,3", cpuset_mems="0") == {
        "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0-1,3", "mems": "0"}}
    assert res(cpu_quota=-1) == {"cpu": {"quota": -1}}
    with pytest.raises(InvalidArgument, match=r"config\.linux\.resources\.cpuset_cpus: 'all'"):
        res(cpuset_cpus="all")
    with pytest.raises(InvalidArgument, match=r"cpu_period: -5 is negative"):
        res(cpu_period=-5)


def test_memory_and_swap() -> None:
    limit = 256 * 1024 * 1024
    assert res(memory_limit_in_bytes=limit) == {"memory": {"limit": limit, "swap": limit}}  # no swapping
    assert res(memory_limit_in_bytes=limit, memory_swap_limit_in_bytes=2 * limit) == {
        "memory": {"limit": limit, "swap": 2 * limit}}
    no_swap = CgroupFacts(swap=False)
    assert res(no_swap, memory_limit_in_bytes=limit, memory_swap_limit_in_bytes=2 * limit) == {
        "memory": {"limit": limit}}


def test_hugepages_dropped_without_the_controller() -> None:
    limits = [{"page_size": "2MB", "limit": 0}, {"page_size": "1GB", "limit": 1 << 30}]
    assert res(hugepage_limits=limits) == {"hugepageLimits": [{"pageSize": "2MB", "limit": 0},
                                                              {"pageSize": "1GB", "limit": 1 << 30}]}
    assert res(CgroupFacts(hugetlb=False), hugepage_limits=limits) == {}
    with pytest.raises(InvalidArgument, match=r"hugepage_limits\[0\]\.page_size: '2M'"):
        res(hugepage_limits=[{"page_size": "2M", "limit": 1}])


def test_unified_needs_cgroup_v2() -> None:
    assert res(V2, unified={"memory.high": "1000000"}) == {"unified": {"memory.high": "1000000"}}
    with pytest.raises(FailedPrecondition, match=r"unified: cgroup v2 settings \(memory.high\)"):
        res(V1, unified={"memory.high": "1000000"})


def test_oom_score_adj_is_clamped_to_crirts_own() -> None:
    assert oom_score_adj(None, 0) is None
    assert oom_score_adj(LinuxContainerResources(oom_score_adj=1000), 0) == 1000  # BestEffort
    assert oom_score_adj(LinuxContainerResources(oom_score_adj=-997), 0) == 0  # Guaranteed, crirt at 0
    assert oom_score_adj(LinuxContainerResources(oom_score_adj=-997), -999) == -997
    assert oom_score_adj(LinuxContainerResources(oom_score_adj=5000), 0) == 1000
