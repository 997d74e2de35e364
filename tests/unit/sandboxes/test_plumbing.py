"""Pure sandbox decisions: namespaces, hostname, hosts, resolv.conf, sysctls, cgroup parent, ports."""

from __future__ import annotations

import pytest

from crirt.errors import InvalidArgument
from crirt.model.common import IDMapping, NamespaceOption, UserNamespace
from crirt.model.enums import NamespaceMode, Protocol
from crirt.model.sandbox import (
    DNSConfig,
    LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext,
    PodSandboxConfig,
    PortMapping,
)
from crirt.sandboxes import plumbing

POD, CONTAINER, NODE, TARGET = NamespaceMode.POD, NamespaceMode.CONTAINER, NamespaceMode.NODE, NamespaceMode.TARGET


def test_unset_namespace_options_mean_pod_for_everything() -> None:
    options = plumbing.namespace_options(PodSandboxConfig())
    plan = plumbing.plan_namespaces(options)
    assert plan.pinned == ("net", "uts", "ipc") and plan.needs_infra and not plan.host_network
    empty_linux = PodSandboxConfig(linux=LinuxPodSandboxConfig())  # crictl's "linux": {}
    assert plumbing.plan_namespaces(plumbing.namespace_options(empty_linux)).needs_infra


@pytest.mark.parametrize(("network", "ipc", "pid", "pinned", "infra"), [
    (POD, POD, CONTAINER, ("net", "uts", "ipc"), False),
    (NODE, POD, CONTAINER, ("ipc",), False),
    (POD, NODE, POD, ("net", "uts"), True),
    (NODE, NODE, NODE, (), False),
])
def test_namespace_plans(network, ipc, pid, pinned, infra) -> None:
    plan = plumbing.plan_namespaces(NamespaceOption(network=network, ipc=ipc, pid=pid))
    assert (plan.pinned, plan.needs_infra, plan.host_network) == (pinned, infra, network == NODE)


@pytest.mark.parametrize(("options", "words"), [
    (NamespaceOption(network=CONTAINER), "network: mode CONTAINER"),
    (NamespaceOption(network=TARGET), "network: mode TARGET"),
    (NamespaceOption(ipc=CONTAINER), "ipc: mode CONTAINER"),
    (NamespaceOption(pid=TARGET), "only valid for containers"),
    (NamespaceOption(pid=CONTAINER, target_id="abc"), "target_id"),
    (NamespaceOption(userns_options=UserNamespace(mode=POD)), "userns_options.uids: mode POD needs exactly one"),
    (NamespaceOption(userns_options=UserNamespace(mode=CONTAINER)), "userns_options.mode: CONTAINER"),
])
def test_invalid_namespace_modes(options: NamespaceOption, words: str) -> None:
    with pytest.raises(InvalidArgument, match=words):
        plumbing.plan_namespaces(options)


def test_host_user_namespace_is_fine() -> None:
    assert plumbing.plan_namespaces(NamespaceOption(userns_options=UserNamespace(mode=NODE))).user is None


def test_a_pod_user_namespace_is_pinned_first() -> None:
    mapping = IDMapping(host_id=100000, length=65536)
    plan = plumbing.plan_namespaces(NamespaceOption(pid=CONTAINER, userns_options=UserNamespace(
        mode=POD, uids=[mapping], gids=[IDMapping(host_id=200000, length=1000)])))
    assert plan.pinned == ("user", "net", "uts", "ipc") and not plan.needs_infra
    assert plan.user is not None and plan.user.root == (100000, 200000)


@pytest.mark.parametrize("name", ["web-0", "a", "x" * 64, "pod.example.com"])
def test_good_hostnames(name: str) -> None:
    assert plumbing.check_hostname(name) == name


@pytest.mark.parametrize("name", ["-a", "a-", "a b", "a\nb", "x" * 65, "a_b", "ünï"])
def test_bad_hostnames(name: str) -> None:
    with pytest.raises(InvalidArgument, match="hostname"):
        plumbing.check_hostname(name)


def test_hosts_file() -> None:
    text = plumbing.hosts_file("web", ["10.0.0.2", "fd00::2"], None)
    assert text.startswith("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
    assert text.endswith("10.0.0.2\tweb\nfd00::2\tweb\n")
    assert plumbing.hosts_file("web", ["10.0.0.2"], "the host's file\n") == "the host's file\n"


def test_resolv_conf_from_dns_config_or_host() -> None:
    dns = DNSConfig(servers=["10.96.0.10", "fd00::a"], searches=["a.svc", "svc"], options=["ndots:5", "edns0"])
    assert plumbing.resolv_conf(dns, "host") == (
        "search a.svc svc\nnameserver 10.96.0.10\nnameserver fd00::a\noptions ndots:5 edns0\n")
    assert plumbing.resolv_conf(None, "nameserver 1.1.1.1\n") == "nameserver 1.1.1.1\n"
    assert plumbing.resolv_conf(DNSConfig(), "host\n") == "host\n"


@pytest.mark.parametrize(("dns", "words"), [
    (DNSConfig(servers=["dns.example"]), r"servers\[0\]"),
    (DNSConfig(searches=["a b"]), r"searches\[0\]"),
    (DNSConfig(searches=["x"] * 33), "at most 32"),
    (DNSConfig(options=["ndots:1\nnameserver 6.6.6.6"]), r"options\[0\]"),
])
def test_dns_injection_and_garbage_refused(dns: DNSConfig, words: str) -> None:
    with pytest.raises(InvalidArgument, match=words):
        plumbing.resolv_conf(dns, "")


POD_PLAN = plumbing.NamespacePlan(POD, POD, CONTAINER)
HOST_PLAN = plumbing.NamespacePlan(NODE, NODE, CONTAINER)


def test_namespaced_sysctls_become_proc_paths() -> None:
    planned = plumbing.plan_sysctls({"net.ipv4.ip_forward": "1", "kernel.shmmax": "123", "fs.mqueue.msg_max": "5",
                                     "net/ipv4/conf/eth0.100/forwarding": "1", "kernel.domainname": "x"}, POD_PLAN)
    assert sorted(planned) == [("fs/mqueue/msg_max", "5"), ("kernel/domainname", "x"), ("kernel/shmmax", "123"),
                       ("net/ipv4/conf/eth0.100/forwarding", "1"), ("net/ipv4/ip_forward", "1")]


@pytest.mark.parametrize(("sysctls", "plan", "words"), [
    ({"vm.swappiness": "1"}, POD_PLAN, "not a namespaced sysctl"),
    ({"kernel.panic": "1"}, POD_PLAN, "whole node"),
    ({"kernel.hostname": "x"}, POD_PLAN, "not a namespaced sysctl"),
    ({"net.ipv4.ip_forward": "1"}, HOST_PLAN, "hostNetwork"),
    ({"kernel.shmmax": "1"}, HOST_PLAN, "hostIPC"),
    ({"kernel.domainname": "x"}, HOST_PLAN, "UTS"),
    ({"net/../../etc": "1"}, POD_PLAN, "not a sysctl name"),
    ({"net..x": "1"}, POD_PLAN, "not a sysctl name"),
    ({"net.ipv4.x y": "1"}, POD_PLAN, "not a sysctl name"),
    ({"net.ipv4.ip_forward": "1\n2"}, POD_PLAN, "one line"),
])
def test_unsafe_or_malformed_sysctls_refused(sysctls, plan, words) -> None:
    with pytest.raises(InvalidArgument, match=words):
        plumbing.plan_sysctls(sysctls, plan)


@pytest.mark.parametrize(("driver", "requested", "expected"), [
    ("cgroupfs", "", "/crirt"),
    ("cgroupfs", "/kubepods/burstable/pod1", "/kubepods/burstable/pod1"),
    ("cgroupfs", "/kubepods//besteffort/", "/kubepods/besteffort"),
    ("systemd", "", "crirt.slice"),
    ("systemd", "kubepods-burstable-pod1.slice", "kubepods-burstable-pod1.slice"),
])
def test_cgroup_parent(driver: str, requested: str, expected: str) -> None:
    assert plumbing.cgroup_parent(driver, requested) == expected


@pytest.mark.parametrize(("driver", "requested", "words"), [
    ("cgroupfs", "kubepods-pod1.slice", "systemd slice"),
    ("cgroupfs", "kubepods/pod1", "absolute"),
    ("cgroupfs", "/kubepods/../etc", "absolute"),
    ("systemd", "/kubepods/pod1", "not a systemd slice"),
    ("systemd", "kubepods", "not a systemd slice"),
])
def test_cgroup_parent_must_match_the_driver(driver: str, requested: str, words: str) -> None:
    with pytest.raises(InvalidArgument, match=words):
        plumbing.cgroup_parent(driver, requested)


def test_port_mappings() -> None:
    ports = [PortMapping(container_port=80, host_port=8080), PortMapping(protocol=Protocol.UDP, container_port=53,
                                                                           host_port=5353, host_ip="127.0.0.1"),
             PortMapping(container_port=9000)]
    assert plumbing.port_mappings(ports) == [
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
        {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"},
    ]


@pytest.mark.parametrize(("port", "words"), [
    (PortMapping(container_port=0, host_port=80), "container_port"),
    (PortMapping(container_port=70000, host_port=80), "container_port"),
    (PortMapping(container_port=80, host_port=-1), "host_port"),
    (PortMapping(container_port=80, host_port=80, host_ip="localhost"), "host_ip"),
])
def test_bad_port_mappings(port: PortMapping, words: str) -> None:
    with pytest.raises(InvalidArgument, match=words):
        plumbing.port_mappings([port])


def test_cgroup_version() -> None:
    assert plumbing.cgroup_version([("/sys/fs/cgroup", "cgroup2")]) == "v2"
    assert plumbing.cgroup_version([("/sys/fs/cgroup", "tmpfs"), ("/sys/fs/cgroup/cpu", "cgroup"),
                                    ("/sys/fs/cgroup/unified", "cgroup2")]) == "v1 (hybrid)"
    assert plumbing.cgroup_version([("/sys/fs/cgroup/cpu", "cgroup")]) == "v1"


def test_security_context_namespace_options_are_read() -> None:
    config = PodSandboxConfig(linux=LinuxPodSandboxConfig(security_context=LinuxSandboxSecurityContext(
        namespace_options=NamespaceOption(network=NODE, pid=CONTAINER))))
    assert plumbing.namespace_options(config).network == NODE
