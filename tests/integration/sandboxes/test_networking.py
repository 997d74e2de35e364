"""Pods on a real bridge: they reach each other, publish hostPorts, and 20 at once get distinct addresses."""

from __future__ import annotations

import ipaddress
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

import pytest
from support.network import BridgeNetwork, PodEnv, netns_run, start_pod_env, wait_until


def test_two_pods_ping_each_other(pods: PodEnv) -> None:
    first, second = pods.run(pods.config()), pods.run(pods.config())
    ip1, ip2 = pods.status(first)[0].network.ip, pods.status(second)[0].network.ip
    assert ip1 != ip2
    for source, target in ((first, ip2), (second, ip1)):
        result = netns_run(pods.netns(source), "busybox", "ping", "-c", "1", "-W", "3", target)
        assert result.returncode == 0, result.stdout + result.stderr
    pods.remove(first)
    pods.remove(second)


def test_host_port_reaches_a_listener_in_the_pod(pods: PodEnv) -> None:
    pb = pods.pb
    host_port = 20000 + int(pods.net.tag, 16) % 20000
    sandbox_id = pods.run(pods.config(port_mappings=[pb.PortMapping(container_port=8080, host_port=host_port)]))
    listener = subprocess.Popen(
        ["nsenter", f"--net={pods.netns(sandbox_id)}", "python3", "-c",
         "import socket\ns = socket.create_server(('0.0.0.0', 8080))\nprint('up', flush=True)\n"
         "c, _ = s.accept()\nc.sendall(b'hello from the pod')\nc.close()"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout.readline().strip() == "up"
        with socket.create_connection((pods.net.gateway, host_port), timeout=5) as conn:
            assert conn.recv(100) == b"hello from the pod"
        dnat = [r for r in pods.snapshot()["nat_rules"] if f"--dport {host_port}" in r]
        assert dnat, "portmap rules for the hostPort"
    finally:
        listener.kill()
        listener.wait()
    pods.stop(sandbox_id)
    assert not [r for r in pods.snapshot()["nat_rules"] if f"--dport {host_port}" in r]
    pods.remove(sandbox_id)


def test_twenty_pods_at_once_get_distinct_addresses(pods: PodEnv) -> None:
    before = pods.snapshot()
    started = time.monotonic()
    with ThreadPoolExecutor(20) as pool:
        ids = list(pool.map(lambda _: pods.run(pods.config(), timeout=60), range(20)))
    elapsed = time.monotonic() - started
    ips = [pods.status(i)[0].network.ip for i in ids]
    assert len(set(ips)) == 20 and all(ipaddress.ip_address(ip) in pods.net.subnet for ip in ips)
    assert len(pods.snapshot()["allocations"]) == len(before["allocations"]) + 20
    with ThreadPoolExecutor(20) as pool:
        list(pool.map(pods.remove, ids))
    assert pods.snapshot() == before
    assert elapsed < 30


@pytest.mark.skipif(not Path("/proc/sys/net/ipv6").exists(), reason="IPv6 is disabled on this kernel")
def test_dual_stack_pod_gets_one_address_of_each_family(tmp_path: Path, pb: ModuleType) -> None:
    base = tmp_path / "d"
    net = BridgeNetwork(base / "cni")
    net.subnet6 = ipaddress.ip_network(f"fd{net.tag[:2]}:{net.tag[2:]}::/64")
    daemon, _ = start_pod_env(base, pb, net)
    try:
        with daemon.channel() as channel:
            env = PodEnv(daemon, net, base, pb.grpc.RuntimeServiceStub(channel), pb)
            before = env.snapshot()
            sandbox_id = env.run(env.config())
            status = env.status(sandbox_id)[0]
            assert ipaddress.ip_address(status.network.ip) in net.subnet
            assert [ipaddress.ip_address(a.ip) in net.subnet6 for a in status.network.additional_ips] == [True]
            v6 = status.network.additional_ips[0].ip
            wait_until(lambda: v6 in netns_run(env.netns(sandbox_id), "ip", "-6", "addr").stdout)
            env.remove(sandbox_id)
            assert env.snapshot() == before
    finally:
        daemon.stop()
        net.cleanup(base / "state")
