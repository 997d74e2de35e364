"""Pod sandbox RPCs against a real daemon, real namespaces and a real bridge network."""

from __future__ import annotations

import subprocess
from pathlib import Path

import grpc
import pytest
from support.network import PodEnv, netns_run


def test_run_status_list_stop_remove(pods: PodEnv) -> None:
    pb = pods.pb
    before = pods.snapshot()
    config = pods.config(labels={"app": "web"}, annotations={"a": "b"})
    sandbox_id = pods.run(config)
    assert len(sandbox_id) == 64

    status, info = pods.status(sandbox_id)
    assert status.state == pb.SANDBOX_READY and status.id == sandbox_id
    assert status.metadata.name == config.metadata.name and status.created_at > 0
    assert dict(status.labels) == {"app": "web"}
    assert dict(status.annotations) == {"a": "b"}
    assert status.linux.namespaces.options.pid == pb.CONTAINER
    ip = status.network.ip
    assert ip in [str(a) for a in pods.net.subnet.hosts()]
    assert info["cniResult"]["ips"][0]["address"].startswith(ip + "/")
    assert set(info["namespaces"]) == {"net", "ipc", "uts"}

    after_run = pods.snapshot()
    assert after_run["allocations"] == sorted(before["allocations"] + [ip])
    assert len(after_run["veths"]) == len(before["veths"]) + 1
    assert len(after_run["mounts"]) == len(before["mounts"]) + 4  # net, ipc, uts pins and /dev/shm

    items = pods.stub.ListPodSandbox(pb.ListPodSandboxRequest()).items
    assert [i.id for i in items] == [sandbox_id] and items[0].state == pb.SANDBOX_READY
    ready = pb.PodSandboxFilter(state=pb.PodSandboxStateValue(state=pb.SANDBOX_READY))
    assert len(pods.stub.ListPodSandbox(pb.ListPodSandboxRequest(filter=ready)).items) == 1
    by_label = pb.PodSandboxFilter(label_selector={"app": "other"})
    assert not pods.stub.ListPodSandbox(pb.ListPodSandboxRequest(filter=by_label)).items
    by_prefix = pb.PodSandboxFilter(id=sandbox_id[:12])
    assert len(pods.stub.ListPodSandbox(pb.ListPodSandboxRequest(filter=by_prefix)).items) == 1
    streamed = [s.id for batch in pods.stub.StreamPodSandboxes(pb.StreamPodSandboxesRequest())
                for s in batch.pod_sandboxes]
    assert streamed == [sandbox_id]

    pods.stop(sandbox_id)
    stopped = pods.snapshot()
    assert stopped["allocations"] == before["allocations"] and stopped["veths"] == before["veths"]
    assert stopped["mounts"] == before["mounts"] and stopped["nat_rules"] == before["nat_rules"]
    assert pods.status(sandbox_id)[0].state == pb.SANDBOX_NOTREADY
    assert pods.stub.ListPodSandbox(pb.ListPodSandboxRequest()).items[0].state == pb.SANDBOX_NOTREADY
    pods.stop(sandbox_id)  # twice is fine
    pods.remove(sandbox_id)
    pods.remove(sandbox_id)  # twice is fine
    assert pods.snapshot() == before
    with pytest.raises(grpc.RpcError) as info_:
        pods.status(sandbox_id)
    assert info_.value.code() == grpc.StatusCode.NOT_FOUND and sandbox_id in info_.value.details()


def test_remove_without_stop_tears_everything_down(pods: PodEnv) -> None:
    before = pods.snapshot()
    sandbox_id = pods.run(pods.config(port_mappings=[pods.pb.PortMapping(container_port=80, host_port=28080)]))
    assert pods.snapshot() != before
    pods.remove(sandbox_id)
    assert pods.snapshot() == before


def test_unknown_ids_stop_and_remove_fine_status_not_found(pods: PodEnv) -> None:
    pods.stop("f" * 64)
    pods.remove("f" * 64)
    with pytest.raises(grpc.RpcError) as info:
        pods.status("f" * 64)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_short_id_prefix_works_like_crictl(pods: PodEnv) -> None:
    sandbox_id = pods.run(pods.config())
    assert pods.status(sandbox_id[:10])[0].id == sandbox_id
    pods.stop(sandbox_id[:10])
    pods.remove(sandbox_id[:10])
    assert not pods.stub.ListPodSandbox(pods.pb.ListPodSandboxRequest()).items


def test_duplicate_name_names_the_existing_sandbox_and_frees_after_remove(pods: PodEnv) -> None:
    config = pods.config("dup")
    first = pods.run(config)
    with pytest.raises(grpc.RpcError) as info:
        pods.run(config)
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert first in info.value.details() and "crirt-test/dup/uid-dup/0" in info.value.details()
    other_attempt = pods.run(pods.config("dup", attempt=1))  # a new attempt is a new name
    pods.stop(first)
    with pytest.raises(grpc.RpcError):  # stopped, but still reserved until removed
        pods.run(config)
    pods.remove(first)
    again = pods.run(config)
    assert again != first
    for sandbox_id in (again, other_attempt):
        pods.remove(sandbox_id)


def test_pod_files_hostname_dns_shm_and_sysctls(pods: PodEnv) -> None:
    pb = pods.pb
    dns = pb.DNSConfig(servers=["10.96.0.10"], searches=["ns.svc.cluster.local", "svc.cluster.local"],
                       options=["ndots:5"])
    linux = pb.LinuxPodSandboxConfig(sysctls={"net.ipv4.ip_unprivileged_port_start": "80",
                                              "kernel.shm_rmid_forced": "1"})
    sandbox_id = pods.run(pods.config("files", hostname="web-0", dns_config=dns, linux=linux))
    status, info = pods.status(sandbox_id)
    resolv = Path(info["files"]["resolvConf"]).read_text()
    assert resolv == ("search ns.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n")
    hosts = Path(info["files"]["hosts"]).read_text()
    assert "127.0.0.1\tlocalhost" in hosts and f"{status.network.ip}\tweb-0" in hosts
    assert Path(info["files"]["hostname"]).read_text() == "web-0\n"
    uts = info["namespaces"]["uts"]
    assert subprocess.run(["nsenter", f"--uts={uts}", "hostname"], capture_output=True, text=True).stdout == "web-0\n"
    net = info["namespaces"]["net"]
    assert netns_run(net, "cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start").stdout.strip() == "80"
    ipc = info["namespaces"]["ipc"]
    assert subprocess.run(["nsenter", f"--ipc={ipc}", "cat", "/proc/sys/kernel/shm_rmid_forced"],
                          capture_output=True, text=True).stdout.strip() == "1"
    assert ",UP" in netns_run(net, "ip", "-o", "link", "show", "lo").stdout  # lo is up
    assert netns_run(net, "busybox", "ping", "-c", "1", "-W", "2", "127.0.0.1").returncode == 0
    shm = info["shm"]
    assert any(line.split()[4] == shm and " - tmpfs " in line for line in Path("/proc/self/mountinfo").read_text()
               .splitlines())
    pods.remove(sandbox_id)


def test_resolv_conf_defaults_to_the_hosts(pods: PodEnv) -> None:
    sandbox_id = pods.run(pods.config())
    info = pods.status(sandbox_id)[1]
    host = Path("/etc/resolv.conf").read_text() if Path("/etc/resolv.conf").exists() else ""
    assert Path(info["files"]["resolvConf"]).read_text() == host
    pods.remove(sandbox_id)


def test_host_network_pod_skips_cni(pods: PodEnv) -> None:
    pb = pods.pb
    before = pods.snapshot()
    sandbox_id = pods.run(pods.config(network="NODE", ipc="NODE",
                                      port_mappings=[pb.PortMapping(container_port=80, host_port=80)]))
    status, info = pods.status(sandbox_id)
    assert status.state == pb.SANDBOX_READY and status.network.ip == ""
    assert status.linux.namespaces.options.network == pb.NODE
    assert info["namespaces"] == {} and info["cniResult"] is None and info["shm"] == ""
    assert Path(info["files"]["hosts"]).read_text() == Path("/etc/hosts").read_text()
    snap = pods.snapshot()
    assert snap["allocations"] == before["allocations"] and snap["mounts"] == before["mounts"]
    assert snap["nat_rules"] == before["nat_rules"]
    pods.stop(sandbox_id)
    pods.remove(sandbox_id)
    assert pods.snapshot() == before


def test_host_network_pod_with_own_ipc(pods: PodEnv) -> None:
    sandbox_id = pods.run(pods.config(network="NODE", ipc="POD"))
    info = pods.status(sandbox_id)[1]
    assert set(info["namespaces"]) == {"ipc"} and info["shm"]
    pods.remove(sandbox_id)


@pytest.mark.parametrize(("change", "code", "words"), [
    (lambda pb, c: c.linux.sysctls.update({"vm.swappiness": "10"}), "INVALID_ARGUMENT", "not a namespaced sysctl"),
    (lambda pb, c: c.linux.sysctls.update({"net.ipv4.no_such_sysctl": "1"}), "INVALID_ARGUMENT", "no_such_sysctl"),
    (lambda pb, c: c.linux.sysctls.update({"kernel.shmmax": "lots"}), "INVALID_ARGUMENT", "kernel/shmmax"),
    (lambda pb, c: c.linux.sysctls.update({"net/../x": "1"}), "INVALID_ARGUMENT", "not a sysctl name"),
    (lambda pb, c: setattr(c.linux, "cgroup_parent", "kubepods-pod1.slice"), "INVALID_ARGUMENT", "systemd slice"),
    (lambda pb, c: setattr(c, "hostname", "bad name\nx"), "INVALID_ARGUMENT", "hostname"),
    (lambda pb, c: c.dns_config.servers.append("not-an-ip"), "INVALID_ARGUMENT", "dns_config.servers[0]"),
    (lambda pb, c: c.dns_config.options.append("ndots:5\nnameserver 1.1.1.1"), "INVALID_ARGUMENT", "options[0]"),
    (lambda pb, c: c.port_mappings.append(pb.PortMapping(container_port=0, host_port=80)), "INVALID_ARGUMENT",
     "container_port"),
    (lambda pb, c: setattr(c.linux.security_context.namespace_options, "pid", pb.TARGET), "INVALID_ARGUMENT",
     "TARGET"),
    (lambda pb, c: setattr(c.linux.security_context.namespace_options, "network", pb.CONTAINER),
     "INVALID_ARGUMENT", "network"),
    (lambda pb, c: setattr(c, "log_directory", "relative/logs"), "INVALID_ARGUMENT", "log_directory"),
])
def test_bad_requests_are_refused_before_anything_is_created(pods: PodEnv, change, code: str, words: str) -> None:
    before = pods.snapshot()
    config = pods.config()
    change(pods.pb, config)
    with pytest.raises(grpc.RpcError) as info:
        pods.run(config)
    assert info.value.code() == getattr(grpc.StatusCode, code), info.value.details()
    assert words in info.value.details()
    assert pods.snapshot() == before
    assert not pods.stub.ListPodSandbox(pods.pb.ListPodSandboxRequest()).items
    pods.remove_all()


def test_unknown_runtime_handler_is_invalid_argument(pods: PodEnv) -> None:
    with pytest.raises(grpc.RpcError) as info:
        pods.run(pods.config(), handler="nope")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'nope'" in info.value.details() and "'runc'" in info.value.details()


def test_update_pod_sandbox_resources(pods: PodEnv) -> None:
    pb = pods.pb
    sandbox_id = pods.run(pods.config())
    resources = pb.LinuxContainerResources(cpu_shares=512, memory_limit_in_bytes=256 << 20)
    pods.stub.UpdatePodSandboxResources(pb.UpdatePodSandboxResourcesRequest(pod_sandbox_id=sandbox_id,
                                                                            resources=resources))
    assert pods.status(sandbox_id)[1]["resources"]["memory_limit_in_bytes"] == 256 << 20
    pods.remove(sandbox_id)
    with pytest.raises(grpc.RpcError) as info:
        pods.stub.UpdatePodSandboxResources(pb.UpdatePodSandboxResourcesRequest(pod_sandbox_id=sandbox_id))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
