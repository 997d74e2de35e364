"""Resource usage of a container's cgroup, read straight from cgroupfs (v1, v2 and the hybrid layout).

The OCI runtimes have no common "stats" command (``runc events --stats`` exists, runsc's differs, crun has
none), so the conmon driver reads the kernel's files itself: it finds the cgroup of the container's init
process in ``/proc/PID/cgroup``, maps each controller to its mount through ``/proc/self/mountinfo`` (which
also works on hybrid hosts where v1 controllers and a v2 tree are mounted side by side), and reads the usual
counters. Parsing is done by pure functions so it can be tested without a cgroup.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

UNLIMITED_V1 = 1 << 62
"""cgroup v1 reports "no memory limit" as a huge page-aligned number; anything this large means no limit."""


@dataclass(frozen=True)
class CgroupMount:
    """One mounted cgroup hierarchy: v1 with its controllers, or the v2 unified tree."""

    version: int
    mount_point: Path
    root: str
    """The hierarchy path mounted at ``mount_point`` ("/" unless a cgroup namespace or bind mount is involved)."""
    controllers: frozenset[str]


def _unescape_mountinfo(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as three-digit octal (\040 ...).
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[CgroupMount]:
    """The cgroup hierarchies listed in a ``/proc/PID/mountinfo`` text."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields or len(fields) < fields.index("-") + 4:
            continue
        sep = fields.index("-")
        fstype, super_options = fields[sep + 1], fields[sep + 3]
        root, mount_point = _unescape_mountinfo(fields[3]), Path(_unescape_mountinfo(fields[4]))
        if fstype == "cgroup2":
            mounts.append(CgroupMount(2, mount_point, root, frozenset()))
        elif fstype == "cgroup":
            controllers = frozenset(o for o in super_options.split(",") if o not in {"rw", "ro"})
            mounts.append(CgroupMount(1, mount_point, root, controllers))
    return mounts


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """``/proc/PID/cgroup`` as {controller: path}; the v2 entry is under the key ``""``."""
    paths = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path
    return paths


def _under(mount: CgroupMount, path: str) -> Path:
    relative = path[len(mount.root):] if mount.root != "/" and path.startswith(mount.root) else path
    return mount.mount_point / relative.lstrip("/")


STATS_CONTROLLERS = ("memory", "cpuacct", "pids")
"""The v1 controllers the stats driver reads."""


def controller_dirs(proc_cgroup: dict[str, str], mounts: list[CgroupMount],
                    controllers: tuple[str, ...] = STATS_CONTROLLERS) -> dict[str, Path]:
    """Map each named controller (by default those the driver reads) and ``""`` (the v2 tree) to a directory.

    A controller mounted as v1 is read there; otherwise its files are looked up in the v2 directory.
    """
    dirs: dict[str, Path] = {}
    unified = next((m for m in mounts if m.version == 2), None)
    if unified is not None and "" in proc_cgroup:
        dirs[""] = _under(unified, proc_cgroup[""])
    for controller in controllers:
        mount = next((m for m in mounts if m.version == 1 and controller in m.controllers), None)
        if mount is not None and controller in proc_cgroup:
            dirs[controller] = _under(mount, proc_cgroup[controller])
    return dirs


def parse_flat_keyed(text: str) -> dict[str, int]:
    """A ``key value`` per line file (memory.stat, cpu.stat) as a dict of integers."""
    values = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            values[key] = int(value)
    return values


def parse_limit(text: str) -> int | None:
    """A memory limit file (v1 ``memory.limit_in_bytes`` or v2 ``memory.max``); None when unlimited."""
    value = text.strip()
    if value == "max":
        return None
    limit = int(value)
    return None if limit >= UNLIMITED_V1 else limit


@dataclass(frozen=True)
class CgroupStats:
    """One sample of a cgroup's counters, named after the CRI's ``ContainerStats`` fields."""

    timestamp: int
    """unix nanoseconds when the sample was taken"""
    usage_core_nano_seconds: int | None = None
    usage_bytes: int | None = None
    working_set_bytes: int | None = None
    rss_bytes: int | None = None
    available_bytes: int | None = None
    page_faults: int | None = None
    major_page_faults: int | None = None
    process_count: int | None = None
    swap_usage_bytes: int | None = None
    """cgroup v2 only: v1 accounts memory and swap together"""
    swap_available_bytes: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """The sample as the shim contract's stats dict: ``timestamp`` plus ``cpu``, ``memory``, ``process``,
        ``swap`` sections holding only the counters that could be read."""
        memory = {name: getattr(self, name) for name in ("usage_bytes", "working_set_bytes", "rss_bytes",
                                                         "available_bytes", "page_faults", "major_page_faults")}
        sections = {
            "cpu": {"usage_core_nano_seconds": self.usage_core_nano_seconds},
            "memory": memory,
            "process": {"process_count": self.process_count},
            "swap": {"swap_usage_bytes": self.swap_usage_bytes, "swap_available_bytes": self.swap_available_bytes},
        }
        result: dict[str, Any] = {"timestamp": self.timestamp}
        for name, values in sections.items():
            present = {k: v for k, v in values.items() if v is not None}
            if present:
                result[name] = present
        return result


def memory_figures(version: int, usage: int, limit: int | None, stat: dict[str, int]) -> dict[str, int | None]:
    """Usage, working set (usage minus inactive file cache, as the kubelet defines it), RSS, available and
    page faults from one hierarchy's memory files."""
    prefix = "total_" if version == 1 else ""
    inactive_file = stat.get(f"{prefix}inactive_file", 0)
    working_set = max(usage - inactive_file, 0)
    return {
        "usage_bytes": usage,
        "working_set_bytes": working_set,
        "rss_bytes": stat.get(f"{prefix}rss" if version == 1 else "anon"),
        "available_bytes": max(limit - working_set, 0) if limit is not None else None,
        "page_faults": stat.get(f"{prefix}pgfault"),
        "major_page_faults": stat.get(f"{prefix}pgmajfault"),
    }


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None


_mounts: list[CgroupMount] | None = None


def cgroup_mounts() -> list[CgroupMount]:
    """The host's cgroup hierarchies, read from ``/proc/self/mountinfo`` once: they do not move while crirt
    runs, and a node's mount table (a rootfs and namespace pins per pod) is too long to parse per sample."""
    global _mounts
    if _mounts is None:
        _mounts = parse_mountinfo(Path("/proc/self/mountinfo").read_text())
    return _mounts


def cgroup_dirs_of(pid: int, controllers: tuple[str, ...] = STATS_CONTROLLERS) -> dict[str, Path]:
    """``controller_dirs`` for the cgroup of process ``pid``. Raises ProcessLookupError if the process is gone."""
    proc_cgroup = _read(Path(f"/proc/{pid}/cgroup"))
    if proc_cgroup is None:
        raise ProcessLookupError(pid)
    return controller_dirs(parse_proc_cgroup(proc_cgroup), cgroup_mounts(), controllers)


def read_stats(pid: int) -> CgroupStats:
    """Sample the cgroup of process ``pid``. Raises ProcessLookupError if the process is gone."""
    timestamp = time.time_ns()
    dirs = cgroup_dirs_of(pid)
    figures: dict[str, int | None] = {}

    if "memory" in dirs:
        memory_dir, version = dirs["memory"], 1
        usage, limit, stat = "memory.usage_in_bytes", "memory.limit_in_bytes", "memory.stat"
    else:
        memory_dir, version = dirs.get("", Path("/nonexistent")), 2
        usage, limit, stat = "memory.current", "memory.max", "memory.stat"
    usage_text = _read(memory_dir / usage)
    if usage_text is not None:
        limit_text = _read(memory_dir / limit)
        figures.update(memory_figures(version, int(usage_text), parse_limit(limit_text) if limit_text else None,
                                      parse_flat_keyed(_read(memory_dir / stat) or "")))

    if "cpuacct" in dirs and (cpu := _read(dirs["cpuacct"] / "cpuacct.usage")) is not None:
        figures["usage_core_nano_seconds"] = int(cpu)
    elif "" in dirs and (cpu_stat := _read(dirs[""] / "cpu.stat")) is not None:
        usec = parse_flat_keyed(cpu_stat).get("usage_usec")
        figures["usage_core_nano_seconds"] = usec * 1000 if usec is not None else None

    pids_dir = dirs.get("pids", dirs.get(""))
    if pids_dir is not None and (current := _read(pids_dir / "pids.current")) is not None:
        figures["process_count"] = int(current)

    if version == 2 and (swap := _read(memory_dir / "memory.swap.current")) is not None:
        figures["swap_usage_bytes"] = used = int(swap)
        swap_limit = parse_limit(_read(memory_dir / "memory.swap.max") or "max")
        figures["swap_available_bytes"] = max(swap_limit - used, 0) if swap_limit is not None else None
    return CgroupStats(timestamp=timestamp, **figures)
