"""Host facts, read from files so they can be checked without the host's."""

from __future__ import annotations

from pathlib import Path

from crirt.oci.host import apparmor_enabled, detect_cgroups, detect_host_facts, kernel_version, own_capabilities


def test_own_capabilities_from_status(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nCapPrm:\t000001fffeffffff\nCapEff:\t0000000000200400\n")
    assert own_capabilities(status) == {"CAP_SYS_ADMIN", "CAP_NET_BIND_SERVICE"}


def test_apparmor_and_kernel(tmp_path: Path) -> None:
    flag = tmp_path / "enabled"
    flag.write_text("Y\n")
    assert apparmor_enabled(flag) and not apparmor_enabled(tmp_path / "missing")
    assert kernel_version("6.18.44-fc-v669") == (6, 18) and kernel_version("weird") == (0, 0)


def test_cgroup_v1_hybrid_and_v2(tmp_path: Path) -> None:
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    (v1 / "unified").mkdir()
    (v1 / "memory" / "memory.memsw.limit_in_bytes").write_text("")
    facts = detect_cgroups(v1)
    assert not facts.v2 and facts.swap and not facts.hugetlb
    v2 = tmp_path / "v2"
    (v2 / "system.slice" / "crirt.service").mkdir(parents=True)
    (v2 / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids\n")
    (v2 / "system.slice" / "crirt.service" / "memory.swap.max").write_text("max\n")
    self_cgroup = tmp_path / "cgroup"
    self_cgroup.write_text("0::/system.slice/crirt.service\n")
    facts = detect_cgroups(v2, self_cgroup)
    assert facts.v2 and facts.swap and facts.hugetlb


def test_detect_on_this_node() -> None:
    facts = detect_host_facts()
    assert facts.capabilities and facts.kernel > (3, 0) and facts.machine
