"""The OCI spec of a pod's infra container: Debian's static catatonit in pause mode, nothing else.

A pod that shares one PID namespace between its containers (``pid: POD``) needs a process to own that
namespace and reap zombies. crirt runs ``catatonit -P`` for it, bind-mounted read-only into an empty rootfs,
so no pause image is needed. The container joins the pod's pinned network, IPC and UTS namespaces by path
and gets a new PID (and mount) namespace; it needs no capabilities.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

OCI_VERSION = "1.0.2"
INFRA_PATH = "/catatonit"
DEFAULT_OOM_SCORE_ADJ = -998
"""What kubelet-era pause containers get (containerd's default), so the OOM killer takes them last."""

NAMESPACE_TYPES = {"user": "user", "net": "network", "ipc": "ipc", "uts": "uts"}
MASKED_PATHS = ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware"]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


def clamp_oom_score_adj(requested: int, own: int) -> int:
    """Never below crirt's own value: without CAP_SYS_RESOURCE lowering it fails (containerd's
    ``restrict_oom_score_adj``), and never outside the kernel's range."""
    return max(-1000, min(1000, max(requested, own)))


def infra_cgroups_path(driver: str, parent: str, sandbox_id: str) -> str:
    """OCI ``cgroupsPath`` of the infra container: a path under the parent for cgroupfs, and runc's
    ``slice:prefix:name`` form for systemd (a scope ``crirt-<id>.scope`` in the pod's slice)."""
    if driver == "systemd":
        return f"{parent}:crirt:{sandbox_id}"
    return f"{parent.rstrip('/')}/crirt-{sandbox_id}"


def infra_spec(
    *,
    sandbox_id: str,
    binary: Path,
    join: Mapping[str, Path],
    cgroups_path: str,
    own_oom_score_adj: int,
    oom_score_adj: int = DEFAULT_OOM_SCORE_ADJ,
    uid: int = 0,
    gid: int = 0,
    annotations: Mapping[str, str] | None = None,
    user_mappings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The infra container's ``config.json`` (the bundle's rootfs is the empty directory ``rootfs``).

    ``join`` maps pinned namespace kinds (``user``, ``net``, ``ipc``, ``uts``) to their paths; a kind not in it
    is the node's (hostNetwork, hostIPC). The PID and mount namespaces are always new. ``user_mappings`` are
    the ``uidMappings``/``gidMappings`` of a joined user namespace (runc 1.1 wants them)."""
    unknown = sorted(set(join) - set(NAMESPACE_TYPES))
    if unknown:
        raise ValueError(f"cannot join namespace kinds {unknown}; known: {sorted(NAMESPACE_TYPES)}")
    namespaces: list[dict[str, str]] = [{"type": "pid"}, {"type": "mount"}]
    namespaces += [{"type": NAMESPACE_TYPES[kind], "path": str(path)} for kind, path in sorted(join.items())]
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": False,
            "user": {"uid": uid, "gid": gid},
            "args": [INFRA_PATH, "-P"],
            "env": ["PATH=/"],
            "cwd": "/",
            "capabilities": {"bounding": [], "effective": [], "permitted": [], "inheritable": [], "ambient": []},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
            "oomScoreAdj": clamp_oom_score_adj(oom_score_adj, own_oom_score_adj),
        },
        "root": {"path": "rootfs", "readonly": True},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": INFRA_PATH, "type": "bind", "source": str(binary),
             "options": ["rbind", "ro", "nosuid", "nodev"]},
        ],
        "annotations": dict(annotations or {}),
        "linux": {
            "namespaces": namespaces,
            "cgroupsPath": cgroups_path,
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
            **(user_mappings or {}),
        },
    }


def own_oom_score_adj(path: Path = Path("/proc/self/oom_score_adj")) -> int:
    """crirt's own oom_score_adj (0 when unreadable)."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return 0
