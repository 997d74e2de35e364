"""ListMetricDescriptors, ListPodSandboxMetrics and StreamPodSandboxMetrics on real runc containers."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from support.network import runc_shim_installed, wait_until

from .conftest import ContainerEnv
from .test_stats import BUSY, IDLE, pod, run  # noqa: F401 (pod is a fixture)

pytestmark = pytest.mark.skipif(not runc_shim_installed(), reason="the runc shim plugin is not installed")

MiB = 1 << 20
DISK_IO = {"container_fs_reads_bytes_total", "container_fs_writes_bytes_total", "container_fs_reads_total",
           "container_fs_writes_total"}
"""Reported per block device only where the cgroup has accounted I/O to one."""
CGROUP_V2_GAPS = {"container_memory_failcnt", "container_memory_max_usage_bytes", "container_memory_kernel_usage",
                  "container_memory_swap"}
"""Absent on cgroup v2 (failcnt) or on kernels / hosts without the file (memory.peak, kernel, swap accounting)."""
GROW = "while [ ! -e /tmp/go ]; do sleep 0.1; done; x=$(head -c 30000000 /dev/zero | tr '\\000' a); touch /tmp/done; " \
       + IDLE
Values = dict[tuple[str, tuple[str, ...]], int]


def descriptors(env: ContainerEnv) -> dict[str, list[str]]:
    reply = env.runtime.ListMetricDescriptors(env.pb.ListMetricDescriptorsRequest(), timeout=10)
    names = [d.name for d in reply.descriptors]
    assert len(names) == len(set(names))
    assert all(d.help for d in reply.descriptors)
    return {d.name: list(d.label_keys) for d in reply.descriptors}


def pod_metrics(env: ContainerEnv, sandbox_id: str) -> Any:
    reply = env.runtime.ListPodSandboxMetrics(env.pb.ListPodSandboxMetricsRequest(), timeout=30)
    [entry] = [m for m in reply.pod_metrics if m.pod_sandbox_id == sandbox_id]
    return entry


def values(metrics: Any) -> Values:
    """{(name, label values past the five base ones): value}."""
    table = {(m.name, tuple(m.label_values[5:])): m.value.value for m in metrics}
    assert len(table) == len(metrics), "a metric is reported twice with the same labels"
    return table


def of_container(entry: Any, container_id: str) -> Values:
    [found] = [c for c in entry.container_metrics if c.container_id == container_id]
    return values(found.metrics)


def exec_sync(env: ContainerEnv, container_id: str, script: str) -> int:
    reply = env.runtime.ExecSync(env.pb.ExecSyncRequest(container_id=container_id, cmd=["/bin/sh", "-c", script],
                                                        timeout=20), timeout=30)
    return reply.exit_code


def by_name(table: Values, name: str) -> int:
    [value] = [v for (n, _), v in table.items() if n == name]
    return value


def test_every_metric_is_described_and_labelled(env: ContainerEnv, pod: str) -> None:  # noqa: F811
    pb = env.pb
    made: list[str] = []
    limits = pb.LinuxContainerResources(memory_limit_in_bytes=64 * MiB, cpu_period=100000, cpu_quota=50000,
                                        cpu_shares=512)
    try:
        limited = run(env, pod, "limited", IDLE, made, limits)
        plain = run(env, pod, "plain", IDLE, made)
        done = run(env, pod, "done", "exit 0", made)
        wait_until(lambda: env.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=done), timeout=10)
                   .status.state == pb.CONTAINER_EXITED, timeout=10)
        described = descriptors(env)
        entry = pod_metrics(env, pod)
        sandbox = env.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod), timeout=10).status
        name, namespace = sandbox.metadata.name, sandbox.metadata.namespace

        assert {c.container_id for c in entry.container_metrics} == {limited, plain}  # running ones only
        reported = set()
        for metric in entry.metrics:
            assert list(metric.label_values[:5]) == [name, namespace, "", pod, ""]
            assert len(metric.label_values) == len(described[metric.name])
            assert metric.timestamp == 0
            reported.add(metric.name)
        for container in entry.container_metrics:
            container_name = "limited" if container.container_id == limited else "plain"
            for metric in container.metrics:
                assert list(metric.label_values[:5]) == [name, namespace, container_name, container.container_id,
                                                         env.image]
                assert len(metric.label_values) == len(described[metric.name]), metric.name
                counter = metric.name.endswith("_total") and metric.name != "container_fs_inodes_total"
                kind = pb.COUNTER if counter or metric.name == "container_memory_failcnt" else pb.GAUGE
                assert metric.metric_type == kind, metric.name
                reported.add(metric.name)
        assert reported <= set(described)
        missing = set(described) - reported - DISK_IO
        if not Path("/sys/fs/cgroup/memory/memory.stat").exists():
            missing -= CGROUP_V2_GAPS
        assert not missing, f"described but never reported: {sorted(missing)}"
        assert all(keys[:5] == ["pod", "namespace", "container", "id", "image"] for keys in described.values())

        received = "container_network_receive_bytes_total"
        interfaces = {labels[0] for (n, labels) in values(entry.metrics) if n == received}
        assert "eth0" in interfaces and "lo" not in interfaces

        capped, free = of_container(entry, limited), of_container(entry, plain)
        assert by_name(capped, "container_spec_memory_limit_bytes") == 64 * MiB
        assert by_name(free, "container_spec_memory_limit_bytes") == 0  # unlimited, as cAdvisor reports it
        assert by_name(capped, "container_spec_cpu_quota") == 50000
        assert by_name(capped, "container_spec_cpu_period") == 100000
        assert by_name(capped, "container_spec_cpu_shares") == 512
        assert not any(n == "container_spec_cpu_quota" for n, _ in free)
        assert by_name(capped, "container_processes") == 2  # sh and sleep
        assert by_name(capped, "container_threads") >= 2
        assert by_name(capped, "container_file_descriptors") >= 3
        assert by_name(capped, "container_memory_working_set_bytes") > 0
        assert by_name(capped, "container_fs_limit_bytes") > by_name(capped, "container_fs_usage_bytes")
        now = time.time()
        assert now - 60 < by_name(capped, "container_start_time_seconds") <= by_name(capped, "container_last_seen")
        assert by_name(capped, "container_last_seen") <= now + 1
    finally:
        for container_id in made:
            env.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=container_id), timeout=30)


def test_metrics_follow_cpu_memory_disk_and_network_load(env: ContainerEnv, pod: str) -> None:  # noqa: F811
    pb = env.pb
    made: list[str] = []
    try:
        busy = run(env, pod, "busy", BUSY, made)
        grow = run(env, pod, "grow", GROW, made)
        before = pod_metrics(env, pod)
        cpu = "container_cpu_usage_seconds_total"
        start = {c: by_name(of_container(before, c), cpu) for c in (busy, grow)}
        wait_until(lambda: by_name(of_container(pod_metrics(env, pod), busy), cpu) >= start[busy] + 2, timeout=20)
        assert by_name(of_container(pod_metrics(env, pod), grow), cpu) <= start[grow] + 1

        assert exec_sync(env, grow, "touch /tmp/go") == 0
        wait_until(lambda: exec_sync(env, grow, "test -e /tmp/done") == 0, timeout=30)
        assert exec_sync(env, grow, "head -c 40000000 /dev/zero > /tmp/fill") == 0
        net = "container_network_transmit_packets_total"
        tx_before = values(before.metrics)[(net, ("eth0",))]
        assert exec_sync(env, grow, f"ping -c 3 -W 2 {env.net.gateway} > /dev/null") == 0

        after = pod_metrics(env, pod)
        old, new = of_container(before, grow), of_container(after, grow)
        for name, at_least in (("container_memory_rss", 25_000_000), ("container_memory_working_set_bytes", 25_000_000),
                               ("container_memory_usage_bytes", 55_000_000), ("container_fs_usage_bytes", 39_000_000)):
            assert by_name(new, name) - by_name(old, name) >= at_least, (name, by_name(old, name), by_name(new, name))
        assert by_name(new, "container_processes") >= 2
        assert values(after.metrics)[(net, ("eth0",))] >= tx_before + 3
        assert values(after.metrics)[("container_network_receive_packets_total", ("eth0",))] >= 3

        streamed = list(env.runtime.StreamPodSandboxMetrics(pb.StreamPodSandboxMetricsRequest(), timeout=30))
        items = [m for reply in streamed for m in reply.pod_sandbox_metrics]
        listed = env.runtime.ListPodSandboxMetrics(pb.ListPodSandboxMetricsRequest(), timeout=30).pod_metrics
        assert sorted(m.pod_sandbox_id for m in items) == sorted(m.pod_sandbox_id for m in listed)
        [mine] = [m for m in items if m.pod_sandbox_id == pod]
        assert {c.container_id for c in mine.container_metrics} == {busy, grow}
        assert set(values(of_container_metrics(mine, grow))) == set(of_container(after, grow))
    finally:
        for container_id in made:
            env.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=container_id), timeout=30)


def of_container_metrics(entry: Any, container_id: str) -> Any:
    [found] = [c for c in entry.container_metrics if c.container_id == container_id]
    return found.metrics


def test_no_pods_still_answer(env: ContainerEnv) -> None:
    pb = env.pb
    assert descriptors(env)
    listed = env.runtime.ListPodSandboxMetrics(pb.ListPodSandboxMetricsRequest(), timeout=30).pod_metrics
    streamed = list(env.runtime.StreamPodSandboxMetrics(pb.StreamPodSandboxMetricsRequest(), timeout=30))
    assert len(streamed) >= 1
    assert sorted(m.pod_sandbox_id for r in streamed for m in r.pod_sandbox_metrics) == sorted(
        m.pod_sandbox_id for m in listed)
