"""The pure helpers of crirt.containers.stats: the CPU rate and /proc/PID/net/dev parsing."""

from __future__ import annotations

from crirt.containers.stats import nano_cores, parse_net_dev

NET_DEV = """Inter-|   Receive                    |  Transmit
 face |bytes packets errs drop fifo frame compressed multicast|bytes packets errs drop fifo colls carrier compressed
    lo: 100 1 0 0 0 0 0 0 100 1 0 0 0 0 0 0
  eth0: 2048 20 3 0 0 0 0 0 1024 10 4 0 0 0 0 0
"""


def test_nano_cores_needs_an_earlier_sample_and_a_growing_counter() -> None:
    assert nano_cores(None, 2_000_000_000, 500) is None
    assert nano_cores((1_000_000_000, 0), 2_000_000_000, 500_000_000) == 500_000_000
    assert nano_cores((1_000_000_000, 0), 1_000_000_000, 500) is None
    assert nano_cores((1_000_000_000, 900), 2_000_000_000, 500) is None  # restarted: counter went back


def test_parse_net_dev_skips_loopback() -> None:
    [eth0] = parse_net_dev(NET_DEV)
    assert eth0.name == "eth0"
    assert (eth0.rx_bytes.value, eth0.rx_errors.value, eth0.tx_bytes.value, eth0.tx_errors.value) == (2048, 3, 1024, 4)
