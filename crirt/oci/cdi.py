"""CDI edits made to a container's OCI spec: the pure part of CDI (``crirt.cdi.registry`` finds the edits and
completes their device nodes from the host).

The edits apply in order, each kind as the CDI reference implementation makes it: an environment variable
replaces one of the same name, a device node or mount replaces the one at the same container path (mounts are
then ordered parents first), hooks and additional groups are appended.
"""

from __future__ import annotations

import copy
import posixpath
from collections.abc import Mapping, Sequence
from typing import Any

from crirt.cdi.schema import ContainerEdits, DeviceNode, Hook, Mount


def _set_env(env: list[str], entry: str) -> None:
    key = entry.split("=", 1)[0] + "="
    for i, existing in enumerate(env):
        if existing.startswith(key):
            env[i] = entry
            return
    env.append(entry)


def _device(node: DeviceNode, uid: int, gid: int) -> dict[str, Any]:
    """The OCI ``linux.devices`` entry; a node without an owner belongs to the container's user (when not root),
    so the process can open it."""
    entry: dict[str, Any] = {"path": node.path, "type": node.type, "major": node.major, "minor": node.minor}
    if node.file_mode is not None:
        entry["fileMode"] = node.file_mode
    owner = node.uid if node.uid is not None else uid or None
    group = node.gid if node.gid is not None else gid or None
    if owner is not None:
        entry["uid"] = owner
    if group is not None:
        entry["gid"] = group
    return entry


def _mount(mount: Mount) -> dict[str, Any]:
    entry: dict[str, Any] = {"destination": mount.container_path, "source": mount.host_path,
                             "options": list(mount.options)}
    if mount.type:
        entry["type"] = mount.type
    return entry


def _hook(hook: Hook) -> dict[str, Any]:
    entry: dict[str, Any] = {"path": hook.path}
    if hook.args:
        entry["args"] = list(hook.args)
    if hook.env:
        entry["env"] = list(hook.env)
    if hook.timeout is not None:
        entry["timeout"] = hook.timeout
    return entry


def _depth(mount: Mapping[str, Any]) -> int:
    return posixpath.normpath(str(mount["destination"])).count("/")


def apply_cdi_edits(spec: Mapping[str, Any], edits: Sequence[ContainerEdits]) -> dict[str, Any]:
    """A copy of the OCI ``spec`` with ``edits`` made in order. The device nodes must be complete (type and
    numbers known: ``registry.edits_for`` fills them from the host)."""
    result = copy.deepcopy(dict(spec))
    if not edits:
        return result
    process = result.setdefault("process", {})
    user = process.setdefault("user", {"uid": 0, "gid": 0})
    linux = result.setdefault("linux", {})
    devices: list[dict[str, Any]] = linux.setdefault("devices", [])
    rules: list[dict[str, Any]] = linux.setdefault("resources", {}).setdefault("devices", [])
    mounts: list[dict[str, Any]] = result.setdefault("mounts", [])
    for edit in edits:
        for entry in edit.env:
            _set_env(process.setdefault("env", []), entry)
        for node in edit.device_nodes:
            devices[:] = [d for d in devices if d["path"] != node.path]
            devices.append(_device(node, user.get("uid", 0), user.get("gid", 0)))
            if node.type in ("b", "c") and node.permissions != "none":
                rules.append({"allow": True, "type": node.type, "major": node.major, "minor": node.minor,
                              "access": node.permissions or "rwm"})
        for mount in edit.mounts:
            mounts[:] = [m for m in mounts if m["destination"] != mount.container_path]
            mounts.append(_mount(mount))
        if edit.mounts:
            mounts.sort(key=_depth)
        for hook in edit.hooks:
            result.setdefault("hooks", {}).setdefault(hook.hook_name, []).append(_hook(hook))
        groups = user.setdefault("additionalGids", [])
        for gid in edit.additional_gids:
            if gid and gid not in groups:  # 0 is ignored, as the CDI spec says
                groups.append(gid)
    return result
