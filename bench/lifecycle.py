"""Container lifecycle latency, list/status latency and memory: crirt against containerd, on the same setup.

Each runtime is started fresh on private directories (``bench/peer.py``; containerd as ``bench/sandbox.py``
configures it: a catatonit pause image, Debian's CNI plugins, ``restrict_oom_score_adj``), with its own
bridge network (bridge + host-local + portmap). One local docker-registry on 127.0.0.1 serves a busybox
image (Debian's static busybox) and the pause image; both are pulled before anything is timed. Then, through
the same grpcio client and with the same configs for both runtimes:

1. ``--containers`` kubelet-like pods (``pid: CONTAINER``, a log directory, a cgroup parent of the benchmark's
   own; not timed), one container each:
   the container runs ``sh -c "trap 'exit 0' TERM; busybox sleep ... & wait"`` so that it stops on SIGTERM
   as a well-behaved workload does (a bare ``sleep`` as PID 1 ignores it and would time the grace period).
2. A sequential round: a container is created and started in every pod, one after another; each
   CreateContainer + StartContainer pair is timed. With all of them running, the memory of the runtime is
   read from /proc (below; first round only). Then each is stopped (StopContainer, 10 s grace) and removed,
   timed the same way. A parallel round does the same with ``--parallel`` pairs in flight at a time.
   ``--runs`` of each; samples are pooled. Both runtimes run side by side and their rounds are interleaved,
   the one that goes first alternating, so that both meet the same load when the machine is shared.
3. ``--list-containers`` containers are created across the pods (the first ``--containers`` of them started,
   the rest only created), and ``--calls`` sequential ListContainers (no filter) and ContainerStatus calls
   (cycling over all ids) are timed after 20 warm-up calls each.

Memory is the PSS (proportional set size, from ``/proc/PID/smaps_rollup``, so pages shared between processes,
e.g. the text of 50 conmons or 50 shims, are split between them, not counted 50 times) of the daemon plus its
per-container monitors: crirt + its conmon processes, containerd + its containerd-shim-runc-v2 processes
(one per pod). RSS is shown too. The pods' and containers' own processes (containerd's pause, the workloads)
are listed apart and not counted.

Everything is removed at the end through the runtime's own API. If the run fails or is interrupted, the
runtime is started again on the same directories to remove what is left; any process still naming those
directories is then killed, its runc state deleted, and the network, netns pins, mounts and the pods' cgroup
parent are removed.

Run: ``python bench/lifecycle.py [--containers 50] [--parallel 10] [--runs 2] [--list-containers 300]
[--calls 300]`` as root. Targets: crirt's p50 lifecycle latency <= containerd's; memory <= 0.5x containerd's.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
import peer  # noqa: E402 - sibling scripts and the tests' helpers, not packages
import sandbox  # noqa: E402
from support.images import Layout, busybox_layer, push  # noqa: E402
from support.network import BridgeNetwork  # noqa: E402

SCRIPT = "trap 'exit 0' TERM; /bin/busybox sleep 1000000 & wait"
STOP_GRACE = 10
WARMUP_CALLS = 20
TIMEOUT = 120
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
MONITORS = {"conmon", "containerd-shim-runc-v2"}
CONTAINERD_RUNC_ROOT = Path("/run/containerd/runc/k8s.io")
"""Where containerd-shim-runc-v2 keeps runc's state for the CRI namespace (its default root)."""


# ---- memory ----------------------------------------------------------------------------------------------


@dataclass
class Memory:
    """PSS and RSS in KiB of the daemon, of the monitors/shims, and of the pods' own processes."""

    daemon_pss: int = 0
    daemon_rss: int = 0
    monitors_pss: int = 0
    monitors_rss: int = 0
    monitors: int = 0
    workload_pss: int = 0
    workload: int = 0

    @property
    def total_pss(self) -> int:
        return self.daemon_pss + self.monitors_pss

    @property
    def total_rss(self) -> int:
        return self.daemon_rss + self.monitors_rss


def sizes_kib(pid: str) -> tuple[int, int]:
    """(PSS, RSS) of a process in KiB; zeros if it is gone."""
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]  # after the [rollup] header
    except OSError:
        return 0, 0
    sizes = {name: int(rest.split()[0]) for name, _, rest in (line.partition(":") for line in lines)}
    return sizes.get("Pss", 0), sizes.get("Rss", 0)


def _parent(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
    except (OSError, IndexError):
        return "0"


def _exe_name(pid: str) -> str:
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        return ""


def measure_memory(base: Path) -> Memory:
    """Classify every process of the runtime under ``base``: the daemon (started with ``--config base/...``) and
    its helpers, the monitors (conmon, containerd-shim-runc-v2), and what the monitors run."""
    pids = sandbox.runtime_processes(base)
    monitors = {pid for pid in pids if _exe_name(pid) in MONITORS}
    daemons = {pid for pid in pids if f"--config {base}/" in sandbox.cmdline(pid)}
    memory = Memory()
    for pid in pids:
        pss, rss = sizes_kib(pid)
        ancestor = pid
        while ancestor not in monitors and ancestor not in daemons and ancestor not in ("0", "1"):
            ancestor = _parent(ancestor)
        if pid in monitors:
            memory.monitors_pss += pss
            memory.monitors_rss += rss
            memory.monitors += 1
        elif ancestor in daemons:
            memory.daemon_pss += pss
            memory.daemon_rss += rss
        else:
            memory.workload_pss += pss
            memory.workload += 1
    return memory


# ---- driving one runtime ---------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    samples: dict[str, list[float]] = field(default_factory=dict)
    memory: Memory = field(default_factory=Memory)

    def add(self, key: str, seconds: float) -> None:
        self.samples.setdefault(key, []).append(seconds)


@dataclass
class Workload:
    """The benchmark's pods and containers on one runtime (whose directories are under ``base``), through a
    grpcio RuntimeService stub; ``result`` collects the timings."""

    name: str
    base: Path
    stub: Any
    pb: ModuleType
    image: str
    cgroup_parent: str
    result: Result
    pods: dict[str, Any] = field(default_factory=dict)
    """The config of every pod made here, by id: CreateContainer carries it along (containerd reads the log
    directory from it)."""

    def run_pod(self, index: int, handler: str = "") -> str:
        config = sandbox.pod_config(self.pb, index, self.pb.CONTAINER)
        config.log_directory = str(self.base / "logs" / config.metadata.name)
        config.linux.cgroup_parent = self.cgroup_parent
        request = self.pb.RunPodSandboxRequest(config=config, runtime_handler=handler)
        pod_id = self.stub.RunPodSandbox(request, timeout=TIMEOUT).pod_sandbox_id
        self.pods[pod_id] = config
        return pod_id

    def create(self, pod_id: str, name: str, script: str = SCRIPT) -> str:
        pb = self.pb
        config = pb.ContainerConfig(metadata=pb.ContainerMetadata(name=name), image=pb.ImageSpec(image=self.image),
                                    command=["/bin/sh", "-c", script], log_path=f"{name}/0.log",
                                    labels={"io.kubernetes.container.name": name})
        request = pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=config, sandbox_config=self.pods[pod_id])
        return self.stub.CreateContainer(request, timeout=TIMEOUT).container_id

    def start(self, container_id: str) -> None:
        self.stub.StartContainer(self.pb.StartContainerRequest(container_id=container_id), timeout=TIMEOUT)

    def stop(self, container_id: str) -> None:
        self.stub.StopContainer(self.pb.StopContainerRequest(container_id=container_id, timeout=STOP_GRACE),
                                timeout=TIMEOUT)

    def remove(self, container_id: str) -> None:
        self.stub.RemoveContainer(self.pb.RemoveContainerRequest(container_id=container_id), timeout=TIMEOUT)

    def create_start(self, pod_id: str, name: str) -> tuple[str, float, float]:
        """(container id, create seconds, start seconds)."""
        t0 = time.perf_counter()
        container_id = self.create(pod_id, name)
        t1 = time.perf_counter()
        self.start(container_id)
        return container_id, t1 - t0, time.perf_counter() - t1

    def stop_remove(self, container_id: str) -> tuple[float, float]:
        """(stop seconds, remove seconds)."""
        t0 = time.perf_counter()
        self.stop(container_id)
        t1 = time.perf_counter()
        self.remove(container_id)
        return t1 - t0, time.perf_counter() - t1

    def remove_pod(self, pod_id: str) -> None:
        self.stub.StopPodSandbox(self.pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=TIMEOUT)
        self.stub.RemovePodSandbox(self.pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=TIMEOUT)

    def sweep(self, parallel: int) -> None:
        """Stop and remove every container, then every pod, of this runtime."""
        containers = [c.id for c in self.stub.ListContainers(self.pb.ListContainersRequest(), timeout=TIMEOUT)
                      .containers]
        pods = [p.id for p in self.stub.ListPodSandbox(self.pb.ListPodSandboxRequest(), timeout=TIMEOUT).items]
        with ThreadPoolExecutor(parallel) as pool:
            list(pool.map(self.stop_remove, containers))
            list(pool.map(self.remove_pod, pods))


# ---- the benchmark --------------------------------------------------------------------------------------


def lifecycle_round(work: Workload, mode: str, parallel: int, name: str, measure: bool) -> None:
    """Create+start a container in every pod, then stop+remove them all, ``parallel`` at a time; with
    ``measure``, the memory is read while they all run."""
    result = work.result
    with ThreadPoolExecutor(parallel) as pool:
        started = list(pool.map(lambda pod_id: work.create_start(pod_id, name), work.pods))
        for _, create, start in started:
            result.add(f"{mode} create", create)
            result.add(f"{mode} start", start)
            result.add(f"{mode} create+start", create + start)
        if measure:
            time.sleep(2)  # let the short-lived helpers (runc, shim start-up) exit
            result.memory = measure_memory(work.base)
        for stop, remove in pool.map(work.stop_remove, [cid for cid, _, _ in started]):
            result.add(f"{mode} stop", stop)
            result.add(f"{mode} remove", remove)
            result.add(f"{mode} stop+remove", stop + remove)


def timed_calls(call: Callable[[int], Any], calls: int) -> list[float]:
    for i in range(WARMUP_CALLS):
        call(i)
    latencies = []
    for i in range(calls):
        t0 = time.perf_counter()
        call(i)
        latencies.append(time.perf_counter() - t0)
    return latencies


def list_phase(work: Workload, count: int, calls: int) -> None:
    """ListContainers and ContainerStatus latency with ``count`` containers (one per pod running)."""
    pb, stub, pods = work.pb, work.stub, list(work.pods)
    ids = []
    for j in range(count):
        container_id = work.create(pods[j % len(pods)], f"list-{j}")
        if j < len(pods):
            work.start(container_id)
        ids.append(container_id)
    listed = stub.ListContainers(pb.ListContainersRequest(), timeout=TIMEOUT).containers
    assert sorted(c.id for c in listed) == sorted(ids), f"{work.name} lists {len(listed)} of {count} containers"
    request = pb.ListContainersRequest()
    for latency in timed_calls(lambda _: stub.ListContainers(request, timeout=TIMEOUT), calls):
        work.result.add("ListContainers", latency)
    status_requests = [pb.ContainerStatusRequest(container_id=cid) for cid in ids]
    for latency in timed_calls(lambda i: stub.ContainerStatus(status_requests[i % count], timeout=TIMEOUT), calls):
        work.result.add("ContainerStatus", latency)


def run_benchmark(works: list[Workload], args: argparse.Namespace) -> None:
    """The pods, the lifecycle rounds of all runtimes interleaved, then the list/status calls of each."""
    for work in works:
        for i in range(args.containers):
            work.run_pod(i)
        cid, _, _ = work.create_start(next(iter(work.pods)), "warmup")  # lazy imports, caches, first snapshot
        work.stop_remove(cid)
    rounds = [(mode, parallel) for _ in range(args.runs)
              for mode, parallel in (("sequential", 1), (f"{args.parallel} at a time", args.parallel))]
    for number, (mode, parallel) in enumerate(rounds):
        for work in works if number % 2 == 0 else works[::-1]:
            print(f"round {number + 1}/{len(rounds)}, {work.name}: {mode} ...", flush=True)
            lifecycle_round(work, mode, parallel, f"round-{number}", measure=number == 0)
    for work in works:
        print(f"{work.name}: {args.list_containers} containers, list and status calls ...", flush=True)
        list_phase(work, args.list_containers, args.calls)


def remove_cgroups(parent: str) -> int:
    """Remove the pods' cgroup parent from every hierarchy, deepest first (runc removes only its own leaf, and
    a container interrupted half-way may leave that too); returns how many directories could not be removed."""
    stuck = 0
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        top = hierarchy / parent.lstrip("/")
        if top.is_dir():
            below = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
            for directory in [*below, top]:
                try:
                    directory.rmdir()
                except OSError:
                    stuck += 1
    return stuck


def kill_leftovers(base: Path) -> int:
    """Last resort after a failed sweep: kill every process naming ``base`` and delete containerd's runc
    containers; returns how many processes were killed."""
    pids = sandbox.runtime_processes(base)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(int(pid), signal.SIGKILL)
    tasks = base / "state" / "io.containerd.runtime.v2.task" / "k8s.io"
    for bundle in tasks.glob("*") if tasks.is_dir() else []:
        subprocess.run(["runc", "--root", str(CONTAINERD_RUNC_ROOT), "delete", "--force", bundle.name],
                       capture_output=True)
    return len(pids)


@contextlib.contextmanager
def running(name: str, start: Callable[[], AbstractContextManager[str]], base: Path, pb: ModuleType,
            pb_grpc: ModuleType, image: str, parallel: int) -> Iterator[Workload]:
    """One runtime, started, with the image pulled; afterwards everything it made is removed, whatever happens."""
    net = BridgeNetwork(base / "cni")
    net.write()
    cgroup_parent = f"/crirt-bench-lifecycle-{name}-{net.tag}"

    def workload(channel: grpc.Channel) -> Workload:
        return Workload(name, base, pb_grpc.RuntimeServiceStub(channel), pb, image, cgroup_parent, Result(name))

    swept = False
    try:
        with start() as endpoint, grpc.insecure_channel(endpoint, options=CHANNEL_OPTIONS) as channel:
            pb_grpc.ImageServiceStub(channel).PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=image)),
                                                        timeout=TIMEOUT)
            work = workload(channel)
            try:
                yield work
            finally:
                work.sweep(parallel)
                swept = True
    finally:
        try:
            if not swept:
                print(f"{name}: cleaning up through a restarted daemon ...", file=sys.stderr, flush=True)
                with start() as endpoint, grpc.insecure_channel(endpoint) as channel:
                    workload(channel).sweep(parallel)
        finally:
            killed = kill_leftovers(base)
            if killed:
                print(f"{name}: killed {killed} leftover processes", file=sys.stderr, flush=True)
            net.cleanup(base / "state")
            peer.unmount_under(base)
            if stuck := remove_cgroups(cgroup_parent):
                print(f"{name}: {stuck} cgroups under {cgroup_parent} could not be removed", file=sys.stderr)


# ---- images, runtimes, report ----------------------------------------------------------------------------


def push_busybox(base: Path, host: str) -> str:
    layout = Layout(base / "busybox-layout")
    layout.tag(layout.image([(busybox_layer().bytes(), "gzip")]), "busybox")
    image = f"{host}/library/busybox:bench"
    push(layout, "busybox", image)
    return image


def report(results: list[Result], args: argparse.Namespace) -> None:
    names = [r.name for r in results]
    keys = [k for k in results[0].samples if all(k in r.samples for r in results)]
    print(f"\nContainer lifecycle: {args.containers} containers (one per pod), {args.runs} round(s) per mode; "
          f"list/status with {args.list_containers} containers ({args.containers} running), {args.calls} calls. "
          "Milliseconds.")
    header = f"{'operation':<29}" + "".join(f" {n + ' p50':>16} {n + ' p99':>16}" for n in names)
    if len(results) == 2:
        header += f" {'p50 ratio':>10}"
    print(header)
    for key in keys:
        mode, _, op = key.rpartition(" ")
        label = key if "+" in op or not mode else f"  {op}"
        line = f"{label:<29}"
        for r in results:
            p50, p99 = statistics.median(r.samples[key]), sandbox.percentile(r.samples[key], 0.99)
            line += f" {p50 * 1e3:>16.2f} {p99 * 1e3:>16.2f}"
        if len(results) == 2:
            line += f" {statistics.median(results[0].samples[key]) / statistics.median(results[1].samples[key]):>10.2f}"
        print(line)

    print(f"\nMemory with {args.containers} running containers (MiB; PSS from /proc/PID/smaps_rollup, RSS "
          f"for reference; the total is the daemon plus its monitors)")
    print(f"{'runtime':<12} {'daemon PSS':>11} {'monitors':>9} {'monitors PSS':>13} {'total PSS':>10} "
          f"{'total RSS':>10} {'total PSS / container':>22} {'not counted: pod processes':>27}")
    for r in results:
        m = r.memory
        print(f"{r.name:<12} {m.daemon_pss / 1024:>11.1f} {m.monitors:>9} {m.monitors_pss / 1024:>13.1f} "
              f"{m.total_pss / 1024:>10.1f} {m.total_rss / 1024:>10.1f} "
              f"{m.total_pss / 1024 / args.containers:>22.2f} "
              f"{f'{m.workload} procs, {m.workload_pss / 1024:.1f} MiB':>27}")
    if len(results) == 2:
        ours, theirs = results
        print("\nTargets (crirt / containerd):")
        for key in keys:
            if key.endswith("create+start") or key.endswith("stop+remove"):
                ratio = statistics.median(ours.samples[key]) / statistics.median(theirs.samples[key])
                print(f"  p50 {key:<30} {ratio:>5.2f}  (target <= 1.0) {'ok' if ratio <= 1 else 'MISSED'}")
        ratio = ours.memory.total_pss / theirs.memory.total_pss
        verdict = "ok" if ratio <= 0.5 else "MISSED"
        print(f"  memory (PSS, daemon + monitors)   {ratio:>5.2f}  (target <= 0.5) {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--containers", type=int, default=50, help="pods, and containers per lifecycle round")
    parser.add_argument("--parallel", type=int, default=10, help="calls in flight in the parallel rounds")
    parser.add_argument("--runs", type=int, default=2, help="lifecycle rounds per mode (samples are pooled)")
    parser.add_argument("--list-containers", type=int, default=300, help="containers for the list/status calls")
    parser.add_argument("--calls", type=int, default=300, help="timed ListContainers and ContainerStatus calls")
    parser.add_argument("--no-containerd", action="store_true", help="measure crirt only")
    args = parser.parse_args()
    if args.list_containers < args.containers:
        parser.error("--list-containers must be at least --containers")
    with tempfile.TemporaryDirectory(prefix="crirt-bench-lifecycle-") as tmp:
        base = Path(tmp)
        pb, pb_grpc = peer.compile_stubs(base / "stubs")
        with sandbox.pause_registry(base / "registry") as pause_image:
            image = push_busybox(base, pause_image.split("/")[0])
            runtimes: list[tuple[str, Callable[[], AbstractContextManager[str]]]] = [
                ("crirt", lambda: peer.crirt(base / "crirt", []))]
            if not args.no_containerd:
                runtimes.append(("containerd", lambda: sandbox.containerd_for_pods(base / "containerd", pause_image)))
            with contextlib.ExitStack() as stack:
                works = [stack.enter_context(running(name, start, base / name, pb, pb_grpc, image, args.parallel))
                         for name, start in runtimes]
                run_benchmark(works, args)
    report([work.result for work in works], args)


if __name__ == "__main__":
    main()
