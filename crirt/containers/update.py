"""UpdateContainerResources as pure functions: merge the update into what the container has, and rewrite the
bundle's ``linux.resources`` from the result.

containerd's rule, kept here: a zero or empty field of the update leaves the current value alone, and unified
(cgroup v2) keys are merged key by key. The OCI resources are recomputed from the merged CRI resources by the same
function that built them at CreateContainer, so a created-then-updated container and one created with the new
values get the same spec. ``oom_score_adj`` is kept in the record but not applied to a running process (runc
cannot change it there; containerd does the same).
"""

from __future__ import annotations

import copy
from typing import Any

from crirt.model.common import LinuxContainerResources
from crirt.model.container import ContainerConfig, LinuxContainerConfig


def merged_resources(current: LinuxContainerResources | None,
                     update: LinuxContainerResources) -> LinuxContainerResources:
    """``current`` with every non-zero, non-empty field of ``update`` applied."""
    if current is None:
        return update
    changes: dict[str, Any] = {name: getattr(update, name) for name in type(update).model_fields
                               if getattr(update, name) and name != "unified"}
    if update.unified:
        changes["unified"] = {**current.unified, **update.unified}
    return current.model_copy(update=changes)


def updated_config(config: ContainerConfig, resources: LinuxContainerResources) -> ContainerConfig:
    """The container's config with ``linux.resources`` replaced (what ContainerStatus reports afterwards)."""
    linux = config.linux or LinuxContainerConfig()
    return config.model_copy(update={"linux": linux.model_copy(update={"resources": resources})})


def updated_spec(spec: dict[str, Any], resources: dict[str, Any]) -> dict[str, Any]:
    """A copy of the bundle spec whose ``linux.resources`` holds ``resources`` and the old device rules."""
    result = copy.deepcopy(spec)
    linux = result.setdefault("linux", {})
    devices = (linux.get("resources") or {}).get("devices")
    linux["resources"] = {**({"devices": devices} if devices is not None else {}), **resources}
    return result
