"""The whole container spec: a typical kubelet request, and how the pod's namespaces and privilege shape it."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from crirt.errors import FailedPrecondition, InvalidArgument
from crirt.model.container import ContainerConfig
from crirt.model.sandbox import PodSandboxConfig
from crirt.oci.devices import HostDevice
from crirt.oci.host import HostFacts
from crirt.oci.mounts import DEFAULT_MASKED_PATHS, DEFAULT_READONLY_PATHS, PodFiles
from crirt.oci.process import ALL_CAPABILITIES, DEFAULT_CAPABILITIES
from crirt.oci.resources import CgroupFacts
from crirt.oci.spec import PodNamespaces, SpecInputs, container_spec
from crirt.oci.user import resolve_user

UID = "6f1d2c3b-0000-4000-8000-000000000001"
POD_DIR = f"/var/lib/kubelet/pods/{UID}"
HELD = frozenset(ALL_CAPABILITIES) - {"CAP_SYS_RESOURCE"}
HOST = HostFacts(capabilities=HELD, oom_score_adj=0, cgroups=CgroupFacts(v2=False, swap=True, hugetlb=False),
                 machine="x86_64", kernel=(6, 18))

NGINX_IMAGE = {
    "User": "", "ExposedPorts": {"80/tcp": {}}, "StopSignal": "SIGQUIT", "WorkingDir": "",
    "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "NGINX_VERSION=1.25.3"],
    "Entrypoint": ["/docker-entrypoint.sh"], "Cmd": ["nginx", "-g", "daemon off;"],
}
IMAGE_PASSWD = "root:x:0:0:root:/root:/bin/sh\nnginx:x:101:101:nginx:/nonexistent:/bin/false\n"
IMAGE_GROUP = "root:x:0:\nnginx:x:101:\n"

KUBELET_CONTAINER: dict[str, Any] = {
    "metadata": {"name": "nginx", "attempt": 0},
    "image": {"image": "sha256:a8758716bb6aa4d90071160d27028fe4eaee7ce8166221a97d30440c8eac2be6",
              "user_specified_image": "nginx:1.25"},
    "envs": [{"key": "KUBERNETES_SERVICE_HOST", "value": b"10.96.0.1"},
             {"key": "KUBERNETES_SERVICE_PORT", "value": b"443"},
             {"key": "NGINX_VERSION", "value": b"1.25.3-custom"}],
    "mounts": [
        {"container_path": "/var/run/secrets/kubernetes.io/serviceaccount",
         "host_path": f"{POD_DIR}/volumes/kubernetes.io~projected/kube-api-access-7x2kq", "readonly": True},
        {"container_path": "/etc/hosts", "host_path": f"{POD_DIR}/etc-hosts"},
        {"container_path": "/dev/termination-log", "host_path": f"{POD_DIR}/containers/nginx/8c3b6a1e"},
    ],
    "labels": {"io.kubernetes.container.name": "nginx", "io.kubernetes.pod.name": "web-0",
               "io.kubernetes.pod.namespace": "default", "io.kubernetes.pod.uid": UID},
    "annotations": {"io.kubernetes.container.hash": "3c5a1e0f", "io.kubernetes.container.restartCount": "0",
                    "io.kubernetes.container.terminationMessagePath": "/dev/termination-log"},
    "log_path": "nginx/0.log",
    "linux": {
        "resources": {"cpu_period": 100000, "cpu_quota": 50000, "cpu_shares": 256,
                      "memory_limit_in_bytes": 268435456, "oom_score_adj": 968,
                      "hugepage_limits": [{"page_size": "2MB", "limit": 0}, {"page_size": "1GB", "limit": 0}]},
        "security_context": {
            "namespace_options": {"network": "POD", "pid": "CONTAINER", "ipc": "POD"},
            "run_as_user": {"value": 0},
            "masked_paths": list(DEFAULT_MASKED_PATHS), "readonly_paths": list(DEFAULT_READONLY_PATHS),
            "seccomp": {"profile_type": "RuntimeDefault"}, "apparmor": {"profile_type": "RuntimeDefault"},
        },
    },
}
KUBELET_SANDBOX: dict[str, Any] = {
    "metadata": {"name": "web-0", "uid": UID, "namespace": "default", "attempt": 0},
    "hostname": "web-0",
    "log_directory": f"/var/log/pods/default_web-0_{UID}",
    "dns_config": {"servers": ["10.96.0.10"], "searches": ["default.svc.cluster.local"], "options": ["ndots:5"]},
    "labels": {"io.kubernetes.pod.name": "web-0"},
    "linux": {"cgroup_parent": f"/kubepods/burstable/pod{UID}",
              "security_context": {"namespace_options": {"pid": "CONTAINER"}},
              "sysctls": {"net.ipv4.ip_unprivileged_port_start": "0"}},
}
PINS = f"/run/crirt/pods/{'b' * 64}"
NAMESPACES = PodNamespaces(network=f"{PINS}/net", ipc=f"{PINS}/ipc", uts=f"{PINS}/uts")
FILES = PodFiles(hostname=f"{PINS}/hostname", hosts=f"{PINS}/hosts", resolv_conf=f"{PINS}/resolv.conf",
                 shm=f"{PINS}/shm")


def enums(data: Any) -> Any:
    """Enum names as in crictl's JSON, made numbers for the models."""
    names = {"POD": 0, "CONTAINER": 1, "NODE": 2, "TARGET": 3, "RuntimeDefault": 0, "Unconfined": 1, "Localhost": 2}
    if isinstance(data, dict):
        return {k: enums(v) for k, v in data.items()}
    if isinstance(data, list):
        return [enums(v) for v in data]
    return names.get(data, data) if isinstance(data, str) else data


def merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    result = dict(base)
    for key, value in changes.items():
        result[key] = merged(result[key], value) if isinstance(value, dict) and isinstance(result.get(key), dict) \
            else value
    return result


def inputs(container: dict[str, Any] | None = None, sandbox: dict[str, Any] | None = None, **fields: Any):
    config = ContainerConfig.model_validate(enums(merged(KUBELET_CONTAINER, container or {})))
    sandbox_config = PodSandboxConfig.model_validate(enums(merged(KUBELET_SANDBOX, sandbox or {})))
    context = config.linux.security_context if config.linux else None
    args: dict[str, Any] = {
        "container_id": "c" * 64, "sandbox_id": "b" * 64, "config": config, "sandbox_config": sandbox_config,
        "image_name": "docker.io/library/nginx:1.25", "image_config": NGINX_IMAGE,
        "user": resolve_user(context, NGINX_IMAGE["User"], IMAGE_PASSWD, IMAGE_GROUP),
        "namespaces": NAMESPACES, "pod_files": FILES, "cgroup_parent": sandbox_config.linux.cgroup_parent,
        "host": HOST, **fields}
    return SpecInputs(**args)


def spec(container: dict[str, Any] | None = None, sandbox: dict[str, Any] | None = None, **fields: Any):
    return container_spec(inputs(container, sandbox, **fields))


def test_a_typical_kubelet_request() -> None:
    s = spec()
    assert s["ociVersion"] == "1.0.2" and s["root"] == {"path": "rootfs", "readonly": False}
    process = s["process"]
    assert process["args"] == ["/docker-entrypoint.sh", "nginx", "-g", "daemon off;"]
    assert process["env"] == ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOSTNAME=web-0",
                              "NGINX_VERSION=1.25.3-custom", "KUBERNETES_SERVICE_HOST=10.96.0.1",
                              "KUBERNETES_SERVICE_PORT=443"]
    assert process["cwd"] == "/" and process["terminal"] is False
    assert process["user"] == {"uid": 0, "gid": 0, "additionalGids": [0]}
    assert set(process["capabilities"]["bounding"]) == DEFAULT_CAPABILITIES
    assert process["noNewPrivileges"] is False and process["oomScoreAdj"] == 968
    assert "apparmorProfile" not in process and "rlimits" not in process  # no AppArmor here; crirt's rlimits

    mounts = {m["destination"]: m for m in s["mounts"]}
    assert list(mounts)[:6] == ["/proc", "/dev", "/dev/pts", "/dev/mqueue", "/sys", "/sys/fs/cgroup"]
    assert mounts["/etc/hosts"]["source"] == f"{POD_DIR}/etc-hosts"  # the kubelet's wins over the pod's
    assert mounts["/etc/resolv.conf"]["source"] == f"{PINS}/resolv.conf"
    assert mounts["/etc/hostname"]["source"] == f"{PINS}/hostname"
    assert mounts["/dev/shm"]["source"] == f"{PINS}/shm"
    assert mounts["/var/run/secrets/kubernetes.io/serviceaccount"]["options"] == ["rbind", "rprivate", "ro"]
    assert mounts["/dev/termination-log"]["options"] == ["rbind", "rprivate", "rw"]
    assert s["annotations"] == {
        "io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.container-name": "nginx",
        "io.kubernetes.cri.image-name": "docker.io/library/nginx:1.25", "io.kubernetes.cri.sandbox-id": "b" * 64,
        "io.kubernetes.cri.sandbox-name": "web-0", "io.kubernetes.cri.sandbox-namespace": "default",
        "io.kubernetes.cri.sandbox-uid": UID}

    linux = s["linux"]
    assert linux["namespaces"] == [{"type": "pid"}, {"type": "network", "path": f"{PINS}/net"},
                                   {"type": "ipc", "path": f"{PINS}/ipc"}, {"type": "uts", "path": f"{PINS}/uts"},
                                   {"type": "mount"}]
    assert linux["cgroupsPath"] == f"/kubepods/burstable/pod{UID}/crirt-{'c' * 64}"
    assert linux["resources"] == {
        "devices": [{"allow": False, "access": "rwm"}],
        "cpu": {"shares": 256, "quota": 50000, "period": 100000},
        "memory": {"limit": 268435456, "swap": 268435456}}  # no hugetlb controller on this node: dropped
    assert linux["devices"] == []
    assert linux["maskedPaths"] == list(DEFAULT_MASKED_PATHS)
    assert linux["readonlyPaths"] == list(DEFAULT_READONLY_PATHS)
    assert linux["sysctl"] == {"net.ipv4.ip_unprivileged_port_start": "0"}
    assert "rootfsPropagation" not in linux
    assert linux["seccomp"]["defaultAction"] == "SCMP_ACT_ERRNO"
    assert linux["seccomp"]["architectures"][0] == "SCMP_ARCH_X86_64"
    assert json.loads(json.dumps(s)) == s and spec() == s  # plain JSON, deterministic


def test_user_tty_readonly_rootfs_and_no_new_privs() -> None:
    s = spec({"tty": True, "linux": {"security_context": {"run_as_user": {"value": 101}, "readonly_rootfs": True,
                                                            "no_new_privs": True, "supplemental_groups": [2000]}}})
    assert s["process"]["user"] == {"uid": 101, "gid": 101, "additionalGids": [101, 2000]}
    assert s["process"]["terminal"] is True and s["process"]["noNewPrivileges"] is True
    assert s["root"]["readonly"] is True
    assert {m["destination"]: m for m in s["mounts"]}["/etc/resolv.conf"]["options"][-1] == "ro"


def test_host_network_and_host_ipc_pod() -> None:
    s = spec(namespaces=PodNamespaces(), pod_files=dataclasses.replace(FILES, shm=None))
    assert s["linux"]["namespaces"] == [{"type": "pid"}, {"type": "mount"}]
    assert {m["destination"]: m for m in s["mounts"]}["/dev/shm"]["source"] == "/dev/shm"


def test_pid_namespace_modes() -> None:
    shared = {"linux": {"security_context": {"namespace_options": {"pid": "POD"}}}}
    pod = {"linux": {"security_context": {"namespace_options": {"pid": "POD"}}}}
    infra = dataclasses.replace(NAMESPACES, pid="/proc/4242/ns/pid")
    assert spec(shared, pod, namespaces=infra)["linux"]["namespaces"][0] == {"type": "pid", "path": "/proc/4242/ns/pid"}
    with pytest.raises(FailedPrecondition, match="infra container is gone"):
        spec(shared, pod)
    # a container asking POD in a pod that shares none gets its own; in a hostPID pod, the node's
    assert spec(shared)["linux"]["namespaces"][0] == {"type": "pid"}
    host_pid = spec(shared, {"linux": {"security_context": {"namespace_options": {"pid": "NODE"}}}})
    assert host_pid["linux"]["namespaces"][0]["type"] == "network"
    node = spec({"linux": {"security_context": {"namespace_options": {"pid": "NODE"}}}})
    assert not [n for n in node["linux"]["namespaces"] if n["type"] == "pid"]
    target = {"linux": {"security_context": {"namespace_options": {"pid": "TARGET", "target_id": "c1"}}}}
    debug = spec(target, namespaces=dataclasses.replace(NAMESPACES, pid="/proc/77/ns/pid"))
    assert debug["linux"]["namespaces"][0] == {"type": "pid", "path": "/proc/77/ns/pid"}
    with pytest.raises(InvalidArgument, match="target_id: pid mode TARGET needs a target container"):
        spec({"linux": {"security_context": {"namespace_options": {"pid": "TARGET"}}}})


POD_USERNS = {"mode": "POD", "uids": [{"host_id": 100000, "length": 65536}],
              "gids": [{"host_id": 200000, "length": 65536}]}


def test_a_pod_user_namespace_is_joined_with_its_mappings() -> None:
    pod = {"linux": {"security_context": {"namespace_options": {"userns_options": POD_USERNS}}}}
    pinned = dataclasses.replace(NAMESPACES, user=f"{PINS}/user")
    for container in ({}, {"linux": {"security_context": {"namespace_options": {"userns_options": POD_USERNS}}}}):
        s = spec(container, pod, namespaces=pinned)
        assert s["linux"]["namespaces"][0] == {"type": "user", "path": f"{PINS}/user"}
        assert s["linux"]["uidMappings"] == [{"containerID": 0, "hostID": 100000, "size": 65536}]
        assert s["linux"]["gidMappings"] == [{"containerID": 0, "hostID": 200000, "size": 65536}]
    with pytest.raises(FailedPrecondition, match="not pinned"):
        spec({}, pod)
    named = {"linux": {**pod["linux"], "sysctls": {"kernel.domainname": "example", "kernel.shmmni": "2048"}}}
    sysctls = spec({}, named, namespaces=pinned)["linux"]["sysctl"]
    assert "kernel.domainname" not in sysctls and sysctls["kernel.shmmni"] == "2048"  # set in the pod's UTS
    plain = spec({"linux": {"security_context": {"namespace_options": {"userns_options": {"mode": "NODE"}}}}})
    assert "uidMappings" not in plain["linux"] and all(n["type"] != "user" for n in plain["linux"]["namespaces"])


def test_a_container_cannot_change_its_pods_user_namespace() -> None:
    other = {**POD_USERNS, "uids": [{"host_id": 300000, "length": 65536}]}
    pod = {"linux": {"security_context": {"namespace_options": {"userns_options": POD_USERNS}}}}
    pinned = dataclasses.replace(NAMESPACES, user=f"{PINS}/user")
    with pytest.raises(InvalidArgument, match=r"namespace_options\.userns_options: a container's user namespace"):
        spec({"linux": {"security_context": {"namespace_options": {"userns_options": other}}}}, pod,
             namespaces=pinned)
    with pytest.raises(InvalidArgument, match="must be its pod's"):
        spec({"linux": {"security_context": {"namespace_options": {"userns_options": POD_USERNS}}}})


def test_cgroup_v2_systemd_and_cgroup_namespace() -> None:
    v2 = dataclasses.replace(HOST, cgroups=CgroupFacts(v2=True))
    s = spec(host=v2, cgroup_driver="systemd", cgroup_parent="kubepods-burstable-pod1.slice")
    assert s["linux"]["namespaces"][-1] == {"type": "cgroup"}
    assert s["linux"]["cgroupsPath"] == f"kubepods-burstable-pod1.slice:crirt:{'c' * 64}"


PRIVILEGED_POD = {"linux": {"security_context": {"privileged": True}}}
PRIVILEGED = {"linux": {"security_context": {"privileged": True, "capabilities": {"drop_capabilities": ["ALL"]}}}}


def test_privileged_container() -> None:
    fuse = HostDevice("/dev/fuse", "c", 10, 229, 0o666, 0, 0)
    v2 = dataclasses.replace(HOST, cgroups=CgroupFacts(v2=True))
    s = spec(PRIVILEGED, PRIVILEGED_POD, host_devices=(fuse,), host=v2)
    assert set(s["process"]["capabilities"]["bounding"]) == HELD
    assert s["linux"]["maskedPaths"] == [] and s["linux"]["readonlyPaths"] == []
    assert "seccomp" not in s["linux"]
    assert s["linux"]["devices"] == [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 0o666,
                                      "uid": 0, "gid": 0}]
    assert s["linux"]["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    mounts = {m["destination"]: m for m in s["mounts"]}
    assert "rw" in mounts["/sys"]["options"] and "rw" in mounts["/sys/fs/cgroup"]["options"]
    assert {"type": "cgroup"} not in s["linux"]["namespaces"]
    with pytest.raises(InvalidArgument, match=r"privileged: the pod sandbox was not created privileged"):
        spec(PRIVILEGED)


def test_sysctls_in_runcs_dotted_form() -> None:
    sysctls = {"kernel.shm_rmid_forced": "1", "net/ipv4/ip_forward": "1", "net/ipv4/conf/eth0.100/forwarding": "1"}
    s = spec(sandbox={"linux": {"sysctls": sysctls}})
    assert s["linux"]["sysctl"] == {"net.ipv4.ip_unprivileged_port_start": "0", "kernel.shm_rmid_forced": "1",
                                    "net.ipv4.ip_forward": "1"}
    none = PodSandboxConfig.model_validate({"metadata": {"name": "p"}})
    assert "sysctl" not in container_spec(dataclasses.replace(inputs(), sandbox_config=none))["linux"]


def test_errors_name_the_field() -> None:
    with pytest.raises(InvalidArgument, match=r"config\.mounts\[0\]\.container_path"):
        spec({"mounts": [{"container_path": "relative", "host_path": "/x"}]})
    with pytest.raises(InvalidArgument, match=r"config\.devices\[0\]\.host_path"):
        spec({"devices": [{"container_path": "/dev/x", "host_path": "/dev/unknown"}]})
    with pytest.raises(FailedPrecondition, match="CAP_SYS_RESOURCE"):
        spec({"linux": {"security_context": {"capabilities": {"add_capabilities": ["SYS_RESOURCE"]}}}})


def test_recursive_read_only_follows_the_handler() -> None:
    rro = {"mounts": [{"container_path": "/data", "host_path": "/srv/data", "readonly": True,
                       "recursive_read_only": True}]}
    s = container_spec(inputs(rro, rro_mounts=True))
    assert {m["destination"]: m for m in s["mounts"]}["/data"]["options"] == ["rbind", "rprivate", "rro"]
    with pytest.raises(InvalidArgument, match=r"config\.mounts\[0\]\.recursive_read_only: the runtime handler "
                                              r"does not support"):
        container_spec(inputs(rro))  # a handler that does not report the feature
