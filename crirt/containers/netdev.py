"""A pod's network counters, read from ``/proc/PID/net/dev`` of a process inside the pod's network namespace."""

from __future__ import annotations

import time
from pathlib import Path


def net_dev_counters(text: str) -> dict[str, list[int]]:
    """The 16 counters of each interface of a ``/proc/PID/net/dev`` text, loopback left out."""
    interfaces = {}
    for line in text.splitlines()[2:]:
        name, _, counters = line.partition(":")
        name, values = name.strip(), counters.split()
        if name and name != "lo" and len(values) >= 16 and all(v.isdigit() for v in values[:16]):
            interfaces[name] = [int(v) for v in values[:16]]
    return interfaces


def read_net_dev(pids: list[int]) -> tuple[int, str] | None:
    """(timestamp, ``/proc/PID/net/dev`` text) through the first of the processes still alive."""
    for pid in pids:
        timestamp = time.time_ns()
        try:
            return timestamp, Path(f"/proc/{pid}/net/dev").read_text()
        except (OSError, ValueError):
            continue
    return None


def read_net_devs(pods: list[list[int]]) -> list[tuple[int, str] | None]:
    """``read_net_dev`` for each pod's processes (one worker thread reads them all)."""
    return [read_net_dev(pids) for pids in pods]
