"""Soak: a node of pods under the kubelet's polling while pods are replaced without pause; does crirt grow?

crirt is started fresh on private directories (``bench/peer.py``) with its own bridge network and a busybox
image from a local registry (``bench/lifecycle.py``'s ``running``, which removes everything afterwards). Then:

1. Set-up: ``--pods`` pods with one ``busybox sleep`` container each (as ``bench/node.py``).
2. For ``--minutes``: the kubelet's polling (``bench/node.py``'s schedule: lists every second, Status every 5 s,
   stats every 10 s, ListImages every 30 s) and, beside it, churn: ``--churn`` times a second the oldest pod is
   stopped and removed and a new pod with a container is started in its place. Every ``--sample`` seconds the
   daemon's RSS (``VmRSS``), open descriptors and threads are recorded.
3. Teardown of every pod, then a count of what is left: helper processes (conmon, runc, catatonit), mounts and
   pinned namespaces under crirt's directories, runc containers, CNI IP allocations (host-wide, before vs after),
   and the daemon's descriptors against the count before the set-up.

Printed: the samples, the slope of RSS (KiB per hour) and of descriptors (per hour) after the warm-up (the first
fifth of the window, at most two minutes), the churn done and failed, the polling's failures, and the leak counts.
Target (issue 14): flat RSS and descriptors after warm-up, zero leaks.

Run as root: ``python bench/soak.py [--pods 110] [--minutes 30] [--churn 1.0] [--sample 10]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import grpc

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import lifecycle  # noqa: E402 - sibling scripts, not packages
import node  # noqa: E402
import peer  # noqa: E402
import sandbox  # noqa: E402

CNI_NETWORKS = Path("/var/lib/cni/networks")


@dataclass
class Sample:
    seconds: float
    rss_kib: int
    fds: int
    threads: int


@dataclass
class Soak:
    samples: list[Sample] = field(default_factory=list)
    replaced: int = 0
    churn_failures: list[str] = field(default_factory=list)
    load: node.NodeResult | None = None
    leaks: dict[str, int] = field(default_factory=dict)


def daemon_pid(base: Path) -> str:
    pids = [pid for pid, kind in node.processes(base).items() if kind == "daemon"]
    if len(pids) != 1:
        raise RuntimeError(f"expected one crirt daemon under {base}, found {pids}")
    return pids[0]


def sample(pid: str, since: float) -> Sample:
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                  if ":" in line)
    return Sample(time.monotonic() - since, int(status["VmRSS"].split()[0]), len(os.listdir(f"/proc/{pid}/fd")),
                  int(status["Threads"]))


def allocations() -> int:
    """IP addresses held in every host-local CNI store of the host."""
    if not CNI_NETWORKS.is_dir():
        return 0
    return sum(1 for network in CNI_NETWORKS.iterdir() if network.is_dir()
               for entry in network.iterdir() if entry.name[0].isdigit() or ":" in entry.name)


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value), per hour."""
    if len(points) < 2:
        return 0.0
    return statistics.linear_regression([t for t, _ in points], [v for _, v in points]).slope * 3600


def churn(work: lifecycle.Workload, pods: list[str], rate: float, end: float, soak: Soak) -> None:
    """Replace the oldest pod by a new one ``rate`` times a second until ``end``."""
    index = len(pods)
    due = time.monotonic()
    while (due := due + 1 / rate) < end:
        time.sleep(max(0.0, due - time.monotonic()))
        try:
            work.remove_pod(pods.pop(0))
            pods.append(work.run_pod(index))
            work.start(work.create(pods[-1], "sleep", node.SCRIPT))
            soak.replaced += 1
        except grpc.RpcError as error:
            soak.churn_failures.append(f"{error.code().name}: {error.details()}")
        index += 1


def leftovers(base: Path, before_allocations: int, before_fds: int, pid: str) -> dict[str, int]:
    """What the teardown left behind (every count should be 0)."""
    prefix = str(base) + "/"
    state = base / "state"
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
              if line.split()[4].startswith(prefix) and line.split()[4] != str(state / "pods")]
    runc_root = state / "shims" / "runc" / "runc-root"
    return {
        "helper processes": sum(kind == "helpers" for kind in node.processes(base).values()),
        "mounts": len(mounts),
        "pod dirs": len(list((state / "pods").iterdir())) if (state / "pods").is_dir() else 0,
        "runc containers": len(list(runc_root.iterdir())) if runc_root.is_dir() else 0,
        "IP allocations": allocations() - before_allocations,
        "daemon fds": len(os.listdir(f"/proc/{pid}/fd")) - before_fds,
    }


def soak(base: Path, pb: ModuleType, pb_grpc: ModuleType, image: str, args: argparse.Namespace) -> Soak:
    result = Soak()
    endpoints: list[str] = []
    crirt_base = base / "crirt"
    start = lambda: node.recording(peer.crirt(crirt_base, [], ""), endpoints)  # noqa: E731
    with lifecycle.running("crirt", start, crirt_base, pb, pb_grpc, image, 8) as work:
        pid = daemon_pid(crirt_base)
        before_fds, before_allocations = len(os.listdir(f"/proc/{pid}/fd")), allocations()
        print(f"set-up of {args.pods} pods ...", flush=True)
        pods = []
        for i in range(args.pods):
            pods.append(work.run_pod(i))
            work.start(work.create(pods[-1], "sleep", node.SCRIPT))
        window = args.minutes * 60
        print(f"{args.minutes:g} min of polling and churn ({args.churn:g} pod/s) ...", flush=True)
        began = time.monotonic()
        end = began + window
        result.load = node.NodeResult("crirt", crirt_base)
        threads = [threading.Thread(target=node.kubelet_load, daemon=True,
                                    args=(endpoints[-1], pb, pb_grpc, window, result.load)),
                   threading.Thread(target=churn, args=(work, pods, args.churn, end, result), daemon=True)]
        for thread in threads:
            thread.start()
        while time.monotonic() < end:
            result.samples.append(sample(pid, began))
            time.sleep(min(args.sample, max(0.0, end - time.monotonic())))
        for thread in threads:
            thread.join(node.TIMEOUT * 3)
        result.samples.append(sample(pid, began))
        print("teardown ...", flush=True)
        for pod_id in list(pods):
            work.remove_pod(pod_id)
        time.sleep(node.SETTLE)
        result.leaks = leftovers(crirt_base, before_allocations, before_fds, pid)
    return result


def report(result: Soak, args: argparse.Namespace) -> None:
    print(f"\n{'t s':>7} {'RSS MiB':>9} {'fds':>6} {'threads':>8}")
    for s in result.samples:
        print(f"{s.seconds:7.0f} {s.rss_kib / 1024:9.1f} {s.fds:6d} {s.threads:8d}")
    warm = min(args.minutes * 60 / 5, 120)
    steady = [s for s in result.samples if s.seconds >= warm]
    print(f"\nafter {warm:.0f} s of warm-up: RSS slope {slope_per_hour([(s.seconds, s.rss_kib) for s in steady]):+.0f} "
          f"KiB/h, fds slope {slope_per_hour([(s.seconds, s.fds) for s in steady]):+.1f}/h "
          f"({len(steady)} samples)")
    print(f"pods replaced: {result.replaced}, failed: {len(result.churn_failures)}"
          + (f" (first: {result.churn_failures[0]})" if result.churn_failures else ""))
    if result.load is not None:
        failures = {name: len(errors) for name, errors in result.load.failures.items()}
        print(f"polling: {sum(len(v) for v in result.load.load.values())} calls, failures {failures or 'none'}, "
              f"p99 ListContainers {node.ms(result.load.load.get('ListContainers', []), 0.99)} ms")
    print("left after teardown: " + ", ".join(f"{what} {count}" for what, count in result.leaks.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--pods", type=int, default=110)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--churn", type=float, default=1.0, help="pods replaced per second")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="crirt-bench-soak-") as tmp:
        base = Path(tmp)
        pb, pb_grpc = peer.compile_stubs(base / "stubs")
        with sandbox.pause_registry(base / "registry") as pause_image:
            image = lifecycle.push_busybox(base, pause_image.split("/")[0])
            result = soak(base, pb, pb_grpc, image, args)
    report(result, args)


if __name__ == "__main__":
    main()
