"""The mounts of a container: the standard filesystems, the pod's files, the CRI's bind mounts, and the paths
masked or made read-only.

Pure, apart from ``resolve_host_paths`` (the caller's I/O: the CRI asks runtimes to follow symlinks in a
mount's host path and to report a missing one).
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from crirt.errors import InvalidArgument, Unimplemented
from crirt.model.common import Mount
from crirt.model.container import LinuxContainerSecurityContext
from crirt.model.enums import MountPropagation

DEFAULT_MASKED_PATHS = (
    "/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
    "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap",
)
"""containerd's (and the kubelet's) default list."""
DEFAULT_READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

PROPAGATION = {
    MountPropagation.PROPAGATION_PRIVATE: "rprivate",
    MountPropagation.PROPAGATION_HOST_TO_CONTAINER: "rslave",
    MountPropagation.PROPAGATION_BIDIRECTIONAL: "rshared",
}


@dataclass(frozen=True)
class PodFiles:
    """Host paths of the pod's files that every container of the pod gets; None leaves one out."""

    hostname: str | None = None
    hosts: str | None = None
    resolv_conf: str | None = None
    shm: str | None = None
    """The pod's /dev/shm directory (a tmpfs); ignored when the pod uses the node's IPC namespace."""


def default_mounts(privileged: bool) -> list[dict[str, Any]]:
    """containerd's standard filesystems (without /run). sysfs and the cgroup filesystem are read-only
    unless the container is privileged."""
    mode = "rw" if privileged else "ro"
    return [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", mode]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", mode]},
    ]


def _bind(source: str, destination: str, options: list[str]) -> dict[str, Any]:
    return {"destination": destination, "type": "bind", "source": source, "options": ["rbind", *options]}


def _cri_mount(mount: Mount, index: int, host_paths: Mapping[str, str], rro_supported: bool) -> dict[str, Any]:
    field = f"config.mounts[{index}]"
    if not mount.container_path.startswith("/") or "\x00" in mount.container_path:
        raise InvalidArgument(f"{field}.container_path: {mount.container_path!r} is not an absolute path")
    if mount.image is not None:
        raise Unimplemented(f"{field}.image: image volume mounts are not supported by crirt yet")
    if not mount.host_path or "\x00" in mount.host_path:
        raise InvalidArgument(f"{field}.host_path: {mount.host_path!r} is not a host path")
    if mount.uid_mappings or mount.gid_mappings:
        raise InvalidArgument(f"{field}: id-mapped mounts need user namespaces, which crirt does not support yet")
    options = [PROPAGATION[mount.propagation]]
    if mount.recursive_read_only:
        if not mount.readonly:
            raise InvalidArgument(f"{field}.recursive_read_only: needs readonly (host path {mount.host_path})")
        if mount.propagation != MountPropagation.PROPAGATION_PRIVATE:
            raise InvalidArgument(f"{field}.recursive_read_only: needs propagation PROPAGATION_PRIVATE, got "
                                  f"{mount.propagation.name} (host path {mount.host_path})")
        if not rro_supported:
            raise InvalidArgument(f"{field}.recursive_read_only: the runtime handler does not support recursive "
                                  f"read-only mounts (host path {mount.host_path})")
        options.append("rro")
    else:
        options.append("ro" if mount.readonly else "rw")
    return _bind(host_paths.get(mount.host_path, mount.host_path), mount.container_path, options)


def _depth(mount: dict[str, Any]) -> int:
    return posixpath.normpath(mount["destination"]).count("/")


def container_mounts(
    mounts: Sequence[Mount],
    pod_files: PodFiles,
    *,
    privileged: bool,
    readonly_rootfs: bool,
    host_ipc: bool,
    host_paths: Mapping[str, str],
    rro_supported: bool,
) -> tuple[list[dict[str, Any]], str | None]:
    """The OCI ``mounts`` and the ``rootfsPropagation`` they need (None: runc's default).

    The CRI's mounts are rbind mounts with their propagation (``rprivate``/``rslave``/``rshared``) and
    ``rw``, ``ro`` or ``rro`` (recursive read-only: readonly, private propagation and a handler that supports
    it, as the CRI requires). SELinux relabelling is not done (no SELinux here). The pod's /etc/hostname,
    /etc/hosts and /etc/resolv.conf follow (read-only with a read-only rootfs, as containerd does), and
    /dev/shm: the pod's, or the node's for a pod on the node's IPC namespace; each is left out where a CRI
    mount already covers its path. The kubelet's termination-message file is one of the CRI's mounts. A
    standard filesystem is dropped where a bind covers its path (and everything under /dev when /dev is a CRI
    mount). Binds come after the standard filesystems, shallower paths first, so none hides another."""
    binds = [_cri_mount(m, i, host_paths, rro_supported) for i, m in enumerate(mounts)]
    covered = {posixpath.normpath(b["destination"]) for b in binds}
    file_options = ["rprivate", "ro" if readonly_rootfs else "rw"]
    pod = [(pod_files.hostname, "/etc/hostname", file_options), (pod_files.hosts, "/etc/hosts", file_options),
           (pod_files.resolv_conf, "/etc/resolv.conf", file_options),
           ("/dev/shm" if host_ipc else pod_files.shm, "/dev/shm", ["rprivate", "rw"])]
    binds += [_bind(source, target, options) for source, target, options in pod
              if source is not None and target not in covered]
    binds.sort(key=_depth)
    targets = {posixpath.normpath(b["destination"]) for b in binds}
    standard = [m for m in default_mounts(privileged) if m["destination"] not in targets
                and not ("/dev" in covered and m["destination"].startswith("/dev/"))]
    propagations = {option for b in binds for option in b["options"]}
    rootfs = "rshared" if "rshared" in propagations else "rslave" if "rslave" in propagations else None
    return standard + binds, rootfs


def masked_and_readonly_paths(context: LinuxContainerSecurityContext) -> tuple[list[str], list[str]]:
    """``maskedPaths`` and ``readonlyPaths``: none for a privileged container; otherwise the request's lists,
    each replacing crirt's default when it is not empty. (proto3 cannot tell an empty list from an unset
    one; the kubelet sends its defaults for procMount Default and empty lists only for procMount Unmasked,
    which needs user namespaces, so an empty list meaning "the default" keeps crictl-style requests safe.)"""
    if context.privileged:
        return [], []
    return (list(context.masked_paths or DEFAULT_MASKED_PATHS),
            list(context.readonly_paths or DEFAULT_READONLY_PATHS))


def resolve_host_paths(mounts: Sequence[Mount]) -> dict[str, str]:
    """The real path of each CRI mount's host path, symlinks followed (I/O, for ``container_mounts``).
    A missing host path is INVALID_ARGUMENT, as the CRI asks."""
    resolved = {}
    for index, mount in enumerate(mounts):
        if mount.image is not None or not mount.host_path:
            continue
        try:
            resolved[mount.host_path] = os.path.realpath(mount.host_path, strict=True)
        except OSError as error:
            raise InvalidArgument(f"config.mounts[{index}].host_path: {mount.host_path}: {error.strerror}") from None
    return resolved
