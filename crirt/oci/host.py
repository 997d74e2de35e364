"""The facts about the node that container specs depend on, read once so the spec functions stay pure."""

from __future__ import annotations

import platform
import re
from dataclasses import dataclass, field
from pathlib import Path

from crirt.oci.infra import own_oom_score_adj
from crirt.oci.process import capability_names
from crirt.oci.resources import CgroupFacts

RELEASE = re.compile(r"^(\d+)\.(\d+)")


@dataclass(frozen=True, kw_only=True)
class HostFacts:
    """What the node and crirt itself can do."""

    capabilities: frozenset[str]
    """crirt's own effective capabilities: all a container can be given."""
    machine: str
    """``uname -m``: picks the seccomp architectures and arch-specific rules."""
    kernel: tuple[int, int]
    """(major, minor): for seccomp rules with a minimum kernel."""
    oom_score_adj: int = 0
    """crirt's own: containers cannot go lower."""
    cgroups: CgroupFacts = field(default_factory=CgroupFacts)
    apparmor: bool = False
    apparmor_default_profile: str | None = None
    """The AppArmor profile loaded for RuntimeDefault; None: RuntimeDefault runs unconfined."""


def own_capabilities(status: Path = Path("/proc/self/status")) -> frozenset[str]:
    """The effective capabilities of this process (``CapEff``), as containerd reads its own."""
    for line in status.read_text().splitlines():
        if line.startswith("CapEff:"):
            return capability_names(int(line.split()[1], 16))
    raise RuntimeError(f"{status} has no CapEff line")


def apparmor_enabled(flag: Path = Path("/sys/module/apparmor/parameters/enabled")) -> bool:
    """Whether the kernel runs AppArmor."""
    try:
        return flag.read_text().strip() == "Y"
    except OSError:
        return False


def kernel_version(release: str) -> tuple[int, int]:
    """``(6, 18)`` from ``6.18.44-...``; ``(0, 0)`` when unreadable."""
    match = RELEASE.match(release)
    return (int(match[1]), int(match[2])) if match else (0, 0)


def detect_cgroups(root: Path = Path("/sys/fs/cgroup"), self_cgroup: Path = Path("/proc/self/cgroup")) -> CgroupFacts:
    """cgroup v2 only when the whole hierarchy is unified (a hybrid node's controllers are v1). Swap is
    accounted when the memory controller has swap files (v1 ``memory.memsw.*``; v2 ``memory.swap.max`` in
    crirt's own cgroup or, when crirt sits at the root, in a child)."""
    if not (root / "cgroup.controllers").exists():
        return CgroupFacts(v2=False, swap=(root / "memory" / "memory.memsw.limit_in_bytes").exists(),
                           hugetlb=(root / "hugetlb").is_dir())
    controllers = (root / "cgroup.controllers").read_text().split()
    own = next((line.split(":", 2)[2] for line in self_cgroup.read_text().splitlines() if line.startswith("0::")),
               "/")
    here = root / own.lstrip("/")
    swap = (here / "memory.swap.max").exists() or any(root.glob("*/memory.swap.max"))
    return CgroupFacts(v2=True, swap=swap, hugetlb="hugetlb" in controllers)


def detect_host_facts(*, apparmor_default_profile: str | None = None) -> HostFacts:
    """Read the facts of this node and process."""
    return HostFacts(capabilities=own_capabilities(), oom_score_adj=own_oom_score_adj(), cgroups=detect_cgroups(),
                     apparmor=apparmor_enabled(), apparmor_default_profile=apparmor_default_profile,
                     machine=platform.machine(), kernel=kernel_version(platform.release()))
