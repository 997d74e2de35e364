"""Device nodes in a container: the CRI's ``devices``, and every host device for a privileged container.

The OCI spec needs each node's type and numbers, which only ``stat`` on the host can tell. ``devices_at`` and
``host_devices`` do that I/O; ``device_entries`` is the pure part that turns their findings into
``linux.devices`` and the device cgroup rules.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crirt.errors import InvalidArgument
from crirt.model.common import Device

SKIPPED_DIRS = frozenset({"pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"})
"""Directories of the host's /dev a privileged container does not get nodes from (containerd's list):
they are mounts or per-process views, not devices."""
PERMISSIONS = frozenset("rwm")


@dataclass(frozen=True)
class HostDevice:
    """A device node found on the host."""

    path: str
    type: str
    """``c`` (character) or ``b`` (block)."""
    major: int
    minor: int
    file_mode: int
    uid: int
    gid: int


def _device(path: str, info: os.stat_result) -> HostDevice | None:
    if stat.S_ISCHR(info.st_mode):
        kind = "c"
    elif stat.S_ISBLK(info.st_mode):
        kind = "b"
    else:
        return None
    return HostDevice(path=path, type=kind, major=os.major(info.st_rdev), minor=os.minor(info.st_rdev),
                      file_mode=stat.S_IMODE(info.st_mode), uid=info.st_uid, gid=info.st_gid)


def _walk(directory: str, skip: frozenset[str]) -> list[HostDevice]:
    found = []
    with os.scandir(directory) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.is_symlink():
                continue
            if entry.is_dir(follow_symlinks=False):
                if entry.name not in skip:
                    found += _walk(entry.path, skip)
                continue
            device = _device(entry.path, entry.stat(follow_symlinks=False))
            if device is not None:
                found.append(device)
    return found


def devices_at(path: str) -> dict[str, HostDevice]:
    """What a CRI device's ``host_path`` holds, keyed by the path below it: ``{"": node}`` for a device node
    (symlinks followed, as the CRI asks), one key per node of the tree for a directory (``/dev/snd`` gives
    ``{"/controlC0": ..., ...}``). InvalidArgument when it is neither."""
    try:
        real = os.path.realpath(path, strict=True)
        info = os.stat(real)
    except OSError as error:
        raise InvalidArgument(f"device {path}: {error.strerror}") from None
    if stat.S_ISDIR(info.st_mode):
        return {node.path[len(real):]: node for node in _walk(real, frozenset())}
    device = _device(real, info)
    if device is None:
        raise InvalidArgument(f"device {path}: not a character or block device")
    return {"": device}


def host_devices(root: Path = Path("/dev")) -> tuple[HostDevice, ...]:
    """Every device node of the host's /dev for privileged containers, without /dev/console and the
    directories in ``SKIPPED_DIRS`` (containerd's HostDevices)."""
    return tuple(d for d in _walk(str(root), SKIPPED_DIRS) if d.path != str(root / "console"))


def _entry(device: HostDevice, container_path: str) -> dict[str, Any]:
    return {"path": container_path, "type": device.type, "major": device.major, "minor": device.minor,
            "fileMode": device.file_mode, "uid": device.uid, "gid": device.gid}


def _rule(device: HostDevice, access: str) -> dict[str, Any]:
    return {"allow": True, "type": device.type, "major": device.major, "minor": device.minor, "access": access}


def device_entries(
    requested: Sequence[Device],
    found: Mapping[str, Mapping[str, HostDevice]],
    privileged: bool,
    host: Sequence[HostDevice],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``linux.devices`` and ``linux.resources.devices`` (the device cgroup rules).

    Every container starts from "deny all" (runc adds its standard nodes, /dev/null and friends, on top). Each
    requested device gets its node(s) at ``container_path`` and an allow rule with its ``permissions``
    (default ``rwm``); a host directory maps its tree under ``container_path``. ``found`` maps each requested
    ``host_path`` to what ``devices_at`` found there (the caller's I/O). A privileged container also gets every
    ``host`` device at its own path and may use any device."""
    nodes: dict[str, dict[str, Any]] = {}
    rules: list[dict[str, Any]] = [{"allow": False, "access": "rwm"}]
    for index, device in enumerate(requested):
        field = f"config.devices[{index}]"
        if not device.container_path.startswith("/"):
            raise InvalidArgument(f"{field}.container_path: {device.container_path!r} is not an absolute path")
        access = device.permissions or "rwm"
        if not set(access) <= PERMISSIONS:
            raise InvalidArgument(f"{field}.permissions: {access!r} is not a combination of r, w and m")
        if device.host_path not in found:
            raise InvalidArgument(f"{field}.host_path: {device.host_path!r} is not a device or a directory of "
                                  "devices")
        for suffix, node in sorted(found[device.host_path].items()):
            path = device.container_path.rstrip("/") + suffix if suffix else device.container_path
            nodes[path] = _entry(node, path)
            rules.append(_rule(node, access))
    if privileged:
        for node in host:
            nodes.setdefault(node.path, _entry(node, node.path))
        rules = [{"allow": True, "access": "rwm"}]
    return list(nodes.values()), rules
