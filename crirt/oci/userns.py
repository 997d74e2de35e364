"""Pure rules for a pod's user namespace (Kubernetes ``hostUsers: false``): which requests are valid, and the
id mappings the pod and its containers get.

As the CRI and containerd define it: mode NODE (the node's user namespace) takes no mappings; mode POD takes
exactly one uid and one gid mapping, each mapping container id 0 (the kubelet allocates the host range);
CONTAINER and TARGET are refused. A pod with its own user namespace cannot share the node's network, IPC or
PID namespace (the kubelet refuses those pods too). A container's settings, when it sends any, must be its
pod's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from crirt.errors import InvalidArgument
from crirt.model.common import IDMapping, NamespaceOption, UserNamespace
from crirt.model.enums import NamespaceMode


@dataclass(frozen=True)
class IdMap:
    """One range: container ids [container, container + length) are host ids [host, host + length)."""

    container: int
    host: int
    length: int

    def line(self) -> str:
        """The range as a line of /proc/PID/uid_map (or gid_map)."""
        return f"{self.container} {self.host} {self.length}\n"

    def oci(self) -> dict[str, int]:
        return {"containerID": self.container, "hostID": self.host, "size": self.length}


@dataclass(frozen=True)
class UserNamespacePlan:
    """The pod's user namespace: its uid and gid mapping."""

    uid: IdMap
    gid: IdMap

    @property
    def root(self) -> tuple[int, int]:
        """Host (uid, gid) of the container's root: what the pod's writable files are owned by on the host."""
        return self.uid.host, self.gid.host

    def oci_mappings(self) -> dict[str, Any]:
        """``linux.uidMappings``/``gidMappings``: runc 1.1 wants them even when it joins the namespace by path
        (it writes them only when it creates the namespace)."""
        return {"uidMappings": [self.uid.oci()], "gidMappings": [self.gid.oci()]}


def _one_mapping(mappings: list[IDMapping], field: str) -> IdMap:
    if len(mappings) != 1:
        raise InvalidArgument(f"{field}: mode POD needs exactly one mapping, got {len(mappings)}")
    mapping = mappings[0]
    if mapping.container_id != 0:
        raise InvalidArgument(f"{field}[0].container_id: the mapping must start at container id 0, "
                              f"not {mapping.container_id}")
    if mapping.length == 0:
        raise InvalidArgument(f"{field}[0].length: the mapping must map at least one id")
    if mapping.host_id == 0:
        raise InvalidArgument(f"{field}[0].host_id: mapping the container's root to the node's root (host id 0) "
                              "gives no isolation; refused")
    if mapping.host_id + mapping.length > 2**32 - 1:
        raise InvalidArgument(f"{field}[0]: host ids {mapping.host_id}+{mapping.length} pass the last valid id")
    return IdMap(container=0, host=mapping.host_id, length=mapping.length)


def plan_user_namespace(options: NamespaceOption, field: str) -> UserNamespacePlan | None:
    """The pod's user namespace, None for the node's; ``field`` names ``namespace_options`` in errors."""
    userns = options.userns_options
    where = f"{field}.userns_options"
    if userns is None or userns.mode == NamespaceMode.NODE:
        if userns is not None and (userns.uids or userns.gids):
            raise InvalidArgument(f"{where}: mode NODE uses the node's user namespace and takes no mappings")
        return None
    if userns.mode != NamespaceMode.POD:
        raise InvalidArgument(f"{where}.mode: {userns.mode.name} is not supported (NODE or POD)")
    plan = UserNamespacePlan(uid=_one_mapping(userns.uids, f"{where}.uids"),
                             gid=_one_mapping(userns.gids, f"{where}.gids"))
    for kind, mode in (("network", options.network), ("ipc", options.ipc), ("pid", options.pid)):
        if mode == NamespaceMode.NODE:
            raise InvalidArgument(f"{field}.{kind}: a pod with its own user namespace (userns_options mode POD) "
                                  f"cannot use the node's {kind} namespace")
    return plan


def check_container_user_namespace(pod: UserNamespace | None, container: UserNamespace | None,
                                   field: str) -> None:
    """A container may repeat its pod's user namespace settings (the kubelet does), never change them."""
    if container is None:
        return
    same = (container == pod) or (pod is None and container.mode == NamespaceMode.NODE
                                  and not container.uids and not container.gids)
    if not same:
        raise InvalidArgument(f"{field}.userns_options: a container's user namespace settings must be its pod's "
                              f"(pod: {_describe(pod)}; container: {_describe(container)})")


def _describe(userns: UserNamespace | None) -> str:
    if userns is None or userns.mode == NamespaceMode.NODE:
        return "the node's"
    return (f"{userns.mode.name} uids={[(m.container_id, m.host_id, m.length) for m in userns.uids]} "
            f"gids={[(m.container_id, m.host_id, m.length) for m in userns.gids]}")
