"""The pure parts of crirt.containers.metrics: cgroup v1 and v2 files, /proc texts and label alignment."""

from __future__ import annotations

import os

import pytest

from crirt.containers.metrics import (
    BASE_KEYS,
    BY_NAME,
    DESCRIPTORS,
    Sample,
    cgroup_samples,
    filesystem_samples,
    network_samples,
    open_files_soft_limit,
    parse_blkio,
    parse_io_stat,
    to_metrics,
    weight_to_shares,
)
from crirt.containers.netdev import net_dev_counters
from crirt.model.enums import MetricType

V1 = {
    "cpuacct.usage": "7500000000\n",
    "cpuacct.stat": "user 500\nsystem 250\n",
    "cpu.stat": "nr_periods 40\nnr_throttled 7\nthrottled_time 3200000000\nnr_bursts 0\nburst_time 0\n",
    "cpu.cfs_period_us": "100000\n",
    "cpu.cfs_quota_us": "-1\n",
    "cpu.shares": "2\n",
    "memory.usage_in_bytes": "50000000\n",
    "memory.max_usage_in_bytes": "60000000\n",
    "memory.limit_in_bytes": "9223372036854771712\n",
    "memory.soft_limit_in_bytes": "9223372036854771712\n",
    "memory.memsw.usage_in_bytes": "50004096\n",
    "memory.memsw.limit_in_bytes": "134217728\n",
    "memory.failcnt": "3\n",
    "memory.kmem.usage_in_bytes": "250000\n",
    "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
    "memory.stat": "cache 1\nrss 2\npgfault 10\npgmajfault 1\ntotal_cache 4000000\ntotal_rss 30000000\n"
                   "total_mapped_file 1000000\ntotal_active_file 3000000\ntotal_inactive_file 1000000\n"
                   "total_pgfault 100\ntotal_pgmajfault 5\n",
    "pids.current": "3\n",
    "pids.max": "max\n",
    "cgroup.procs": "11\n12\n",
    "blkio.throttle.io_service_bytes": "8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 0\n8:0 Total 12288\nTotal 12288\n",
    "blkio.throttle.io_serviced": "8:0 Read 1\n8:0 Write 2\n8:0 Total 3\nTotal 3\n",
}
V2 = {
    "cpu.stat": "usage_usec 7500000\nuser_usec 5000000\nsystem_usec 2500000\nnr_periods 40\nnr_throttled 7\n"
                "throttled_usec 3200000\n",
    "cpu.max": "50000 100000\n",
    "cpu.weight": "39\n",
    "memory.current": "50000000\n",
    "memory.peak": "60000000\n",
    "memory.max": "67108864\n",
    "memory.min": "0\n",
    "memory.swap.current": "4096\n",
    "memory.swap.max": "max\n",
    "memory.events": "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n",
    "memory.stat": "anon 30000000\nfile 4000000\nkernel 250000\nfile_mapped 1000000\nactive_file 3000000\n"
                   "inactive_file 1000000\npgfault 100\npgmajfault 5\n",
    "pids.current": "3\n",
    "pids.max": "1024\n",
    "cgroup.procs": "11\n12\n",
    "io.stat": "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n",
}
EXPECTED_V2 = {
    ("container_cpu_usage_seconds_total", ()): 7,
    ("container_cpu_user_seconds_total", ()): 5,
    ("container_cpu_system_seconds_total", ()): 2,
    ("container_cpu_cfs_periods_total", ()): 40,
    ("container_cpu_cfs_throttled_periods_total", ()): 7,
    ("container_cpu_cfs_throttled_seconds_total", ()): 3,
    ("container_memory_usage_bytes", ()): 50000000,
    ("container_memory_max_usage_bytes", ()): 60000000,
    ("container_memory_working_set_bytes", ()): 49000000,
    ("container_memory_rss", ()): 30000000,
    ("container_memory_cache", ()): 4000000,
    ("container_memory_mapped_file", ()): 1000000,
    ("container_memory_total_active_file_bytes", ()): 3000000,
    ("container_memory_total_inactive_file_bytes", ()): 1000000,
    ("container_memory_kernel_usage", ()): 250000,
    ("container_memory_swap", ()): 4096,
    ("container_oom_events_total", ()): 1,
    ("container_memory_failures_total", ("pgfault", "container")): 100,
    ("container_memory_failures_total", ("pgfault", "hierarchy")): 100,
    ("container_memory_failures_total", ("pgmajfault", "container")): 5,
    ("container_memory_failures_total", ("pgmajfault", "hierarchy")): 5,
    ("container_spec_cpu_period", ()): 100000,
    ("container_spec_cpu_quota", ()): 50000,
    ("container_spec_cpu_shares", ()): 998,  # weight 39, what runc makes of 1024 shares
    ("container_spec_memory_limit_bytes", ()): 67108864,
    ("container_spec_memory_reservation_limit_bytes", ()): 0,
    ("container_spec_memory_swap_limit_bytes", ()): 0,
    ("container_processes", ()): 2,
    ("container_threads", ()): 3,
    ("container_threads_max", ()): 1024,
    ("container_fs_reads_bytes_total", ("8:0",)): 4096,
    ("container_fs_writes_bytes_total", ("8:0",)): 8192,
    ("container_fs_reads_total", ("8:0",)): 1,
    ("container_fs_writes_total", ("8:0",)): 2,
}
NET_DEV = """Inter-|   Receive                                       |  Transmit
 face |bytes packets errs drop fifo frame compressed multicast|bytes packets errs drop fifo colls carrier compressed
    lo: 100 1 0 0 0 0 0 0 100 1 0 0 0 0 0 0
  eth0: 2048 20 3 4 0 0 0 0 1024 10 5 6 0 0 0 0
"""
LIMITS = """Limit                     Soft Limit           Hard Limit           Units
Max cpu time              unlimited            unlimited            seconds
Max open files            1024                 1048576              files
"""


def table(samples: list[Sample]) -> dict[tuple[str, tuple[str, ...]], int]:
    found = {(s.name, s.labels): s.value for s in samples}
    assert len(found) == len(samples)
    return found


def test_cgroup_v2_files() -> None:
    assert table(cgroup_samples(2, V2, 100)) == EXPECTED_V2


def test_cgroup_v1_files() -> None:
    found = table(cgroup_samples(1, V1, 100, lambda dev: f"/dev/{dev}"))
    expected = {**EXPECTED_V2,
                ("container_cpu_user_seconds_total", ()): 5,  # 500 ticks of 1/100 s
                ("container_cpu_system_seconds_total", ()): 2,
                ("container_memory_failcnt", ()): 3,
                ("container_oom_events_total", ()): 2,
                ("container_memory_failures_total", ("pgfault", "container")): 10,
                ("container_memory_failures_total", ("pgmajfault", "container")): 1,
                ("container_spec_cpu_shares", ()): 2,
                ("container_spec_memory_limit_bytes", ()): 0,  # unlimited
                ("container_spec_memory_swap_limit_bytes", ()): 134217728,
                ("container_threads_max", ()): 0}  # "max": no limit
    del expected[("container_spec_cpu_quota", ())]  # -1: no quota
    for name in ("reads_bytes", "writes_bytes", "reads", "writes"):
        expected[(f"container_fs_{name}_total", ("/dev/8:0",))] = expected.pop((f"container_fs_{name}_total", ("8:0",)))
    assert found == expected


def test_missing_files_give_no_samples() -> None:
    assert cgroup_samples(1, {}, 100) == []
    assert cgroup_samples(2, {}, 100) == []
    assert table(cgroup_samples(2, {"memory.current": "4096\n", "memory.max": "max\n"}, 100)) == {
        ("container_memory_usage_bytes", ()): 4096, ("container_memory_working_set_bytes", ()): 4096,
        ("container_spec_memory_limit_bytes", ()): 0}


def test_weight_to_shares_inverts_runcs_conversion() -> None:
    for shares in (2, 102, 512, 1024, 4096, 262144):
        weight = 1 + (shares - 2) * 9999 // 262142
        assert abs(weight_to_shares(weight) - shares) <= 27  # one weight step is ~26 shares
    assert weight_to_shares(1) == 2 and weight_to_shares(10000) == 262144


def test_io_files() -> None:
    assert parse_blkio(V1["blkio.throttle.io_service_bytes"]) == {"8:0": {"read": 4096, "write": 8192, "sync": 0,
                                                                          "total": 12288}}
    assert parse_io_stat(V2["io.stat"] + "\n") == {"8:0": {"rbytes": 4096, "wbytes": 8192, "rios": 1, "wios": 2,
                                                           "dbytes": 0, "dios": 0}}


def test_proc_texts() -> None:
    assert open_files_soft_limit(LIMITS) == 1024
    assert open_files_soft_limit(LIMITS.replace("1024 ", "unlimited")) is None
    assert net_dev_counters(NET_DEV) == {"eth0": [2048, 20, 3, 4, 0, 0, 0, 0, 1024, 10, 5, 6, 0, 0, 0, 0]}
    assert table(network_samples(net_dev_counters(NET_DEV))) == {
        ("container_network_receive_bytes_total", ("eth0",)): 2048,
        ("container_network_receive_packets_total", ("eth0",)): 20,
        ("container_network_receive_errors_total", ("eth0",)): 3,
        ("container_network_receive_packets_dropped_total", ("eth0",)): 4,
        ("container_network_transmit_bytes_total", ("eth0",)): 1024,
        ("container_network_transmit_packets_total", ("eth0",)): 10,
        ("container_network_transmit_errors_total", ("eth0",)): 5,
        ("container_network_transmit_packets_dropped_total", ("eth0",)): 6}


def test_filesystem_samples() -> None:
    fs = os.statvfs_result((4096, 4096, 1000, 400, 400, 500, 120, 120, 0, 255))
    assert table(filesystem_samples("/dev/vda", fs, 8192)) == {
        ("container_fs_usage_bytes", ("/dev/vda",)): 8192, ("container_fs_limit_bytes", ("/dev/vda",)): 4096000,
        ("container_fs_inodes_total", ("/dev/vda",)): 500, ("container_fs_inodes_free", ("/dev/vda",)): 120}
    assert ("container_fs_usage_bytes", ("/dev/vda",)) not in table(filesystem_samples("/dev/vda", fs, None))


def test_every_sample_lines_up_with_its_descriptor() -> None:
    """Each metric the pure functions produce has a descriptor whose keys match its label values."""
    fs = os.statvfs_result((4096, 4096, 1, 1, 1, 1, 1, 1, 0, 255))
    samples = (cgroup_samples(1, V1, 100) + cgroup_samples(2, V2, 100) + network_samples(net_dev_counters(NET_DEV))
               + filesystem_samples("/dev/vda", fs, 1))
    base = ("pod", "ns", "app", "id", "image")
    for metric in to_metrics(base, samples):
        descriptor = BY_NAME[metric.name]
        assert len(metric.label_values) == len(descriptor.label_keys)
        assert metric.label_values[:5] == list(base)
        assert metric.metric_type == descriptor.kind
    produced = {s.name for s in samples}
    produced |= {"container_file_descriptors", "container_sockets", "container_ulimits_soft", "container_last_seen",
                 "container_start_time_seconds"}  # read by process_samples and the service
    assert produced == set(BY_NAME)


def test_descriptors() -> None:
    assert len(BY_NAME) == len(DESCRIPTORS)
    assert all(d.label_keys[:5] == BASE_KEYS and d.help for d in DESCRIPTORS)
    counters = {d.name for d in DESCRIPTORS if d.kind == MetricType.COUNTER}
    assert "container_cpu_usage_seconds_total" in counters and "container_memory_working_set_bytes" not in counters


def test_to_metrics_refuses_misaligned_labels_and_clamps_values() -> None:
    with pytest.raises(ValueError, match="label values"):
        to_metrics(("a",), [Sample("container_processes", (), 1)])
    [metric] = to_metrics(("p", "n", "c", "i", "m"), [Sample("container_processes", (), -5)])
    assert metric.value.value == 0 and metric.timestamp == 0
