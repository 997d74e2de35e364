"""The CRI's rules for a pod's user namespace: valid modes and mappings, the fields errors name, the mappings
runc gets, and a container that may repeat but never change its pod's settings."""

from __future__ import annotations

import pytest

from crirt.errors import InvalidArgument
from crirt.model.common import IDMapping, NamespaceOption, UserNamespace
from crirt.model.enums import NamespaceMode
from crirt.oci.userns import IdMap, UserNamespacePlan, check_container_user_namespace, plan_user_namespace

FIELD = "linux.security_context.namespace_options"
UIDS = [IDMapping(host_id=65536, length=65536)]
GIDS = [IDMapping(host_id=131072, length=65536)]
POD = NamespaceMode.POD


def plan(**userns: object) -> UserNamespacePlan | None:
    return plan_user_namespace(NamespaceOption(userns_options=UserNamespace(**userns)), FIELD)


def test_node_and_unset_mean_the_nodes_user_namespace() -> None:
    assert plan_user_namespace(NamespaceOption(), FIELD) is None
    assert plan(mode=NamespaceMode.NODE) is None


def test_pod_mode_gives_the_mappings_runc_needs() -> None:
    made = plan(mode=POD, uids=UIDS, gids=GIDS)
    assert made == UserNamespacePlan(uid=IdMap(0, 65536, 65536), gid=IdMap(0, 131072, 65536))
    assert made.root == (65536, 131072) and made.uid.line() == "0 65536 65536\n"
    assert made.oci_mappings() == {"uidMappings": [{"containerID": 0, "hostID": 65536, "size": 65536}],
                                   "gidMappings": [{"containerID": 0, "hostID": 131072, "size": 65536}]}


@pytest.mark.parametrize(("userns", "field"), [
    ({"mode": NamespaceMode.NODE, "uids": UIDS}, "userns_options: mode NODE"),
    ({"mode": NamespaceMode.CONTAINER, "uids": UIDS, "gids": GIDS}, "userns_options.mode: CONTAINER"),
    ({"mode": NamespaceMode.TARGET, "uids": UIDS, "gids": GIDS}, "userns_options.mode: TARGET"),
    ({"mode": POD, "gids": GIDS}, "userns_options.uids: mode POD needs exactly one mapping, got 0"),
    ({"mode": POD, "uids": UIDS * 2, "gids": GIDS}, "userns_options.uids: mode POD needs exactly one mapping, got 2"),
    ({"mode": POD, "uids": UIDS, "gids": []}, "userns_options.gids"),
    ({"mode": POD, "uids": [IDMapping(container_id=1, host_id=65536, length=10)], "gids": GIDS},
     r"userns_options.uids\[0\].container_id"),
    ({"mode": POD, "uids": UIDS, "gids": [IDMapping(host_id=5, length=0)]}, r"userns_options.gids\[0\].length"),
    ({"mode": POD, "uids": [IDMapping(host_id=0, length=65536)], "gids": GIDS}, r"userns_options.uids\[0\].host_id"),
    ({"mode": POD, "uids": [IDMapping(host_id=2**32 - 10, length=65536)], "gids": GIDS},
     r"userns_options.uids\[0\]: host ids"),
])
def test_invalid_user_namespaces_name_the_field(userns: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgument, match=f"^{FIELD}.{field}"):
        plan(**userns)


@pytest.mark.parametrize("shared", ["network", "ipc", "pid"])
def test_a_pod_user_namespace_needs_the_pods_own_namespaces(shared: str) -> None:
    options = NamespaceOption(userns_options=UserNamespace(mode=POD, uids=UIDS, gids=GIDS),
                              **{shared: NamespaceMode.NODE})
    with pytest.raises(InvalidArgument, match=f"^{FIELD}.{shared}: a pod with its own user namespace"):
        plan_user_namespace(options, FIELD)


def test_a_container_repeats_its_pods_settings_or_sends_none() -> None:
    pod = UserNamespace(mode=POD, uids=UIDS, gids=GIDS)
    check_container_user_namespace(pod, None, "c")
    check_container_user_namespace(pod, pod.model_copy(), "c")
    check_container_user_namespace(None, UserNamespace(mode=NamespaceMode.NODE), "c")
    for other in (UserNamespace(mode=NamespaceMode.NODE), UserNamespace(mode=POD, uids=GIDS, gids=GIDS)):
        with pytest.raises(InvalidArgument, match=r"^c\.userns_options: a container's user namespace settings"):
            check_container_user_namespace(pod, other, "c")
    with pytest.raises(InvalidArgument, match="pod: the node's"):
        check_container_user_namespace(None, pod, "c")
