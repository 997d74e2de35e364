"""Node scale: a node full of kubelet-style pods under the kubelet's steady polling, crirt against containerd.

Each runtime in turn (never both at once) is started fresh on private directories (``bench/peer.py``; containerd
with the catatonit pause image and Debian's CNI plugins, as ``bench/sandbox.py`` configures it) with its own
bridge network, and pulls a busybox image from a local docker-registry on 127.0.0.1 (``bench/lifecycle.py``'s
``running``, which also removes everything afterwards). Through the same grpcio client, on each:

1. Set-up: ``--pods`` pods (``pid: CONTAINER``, network and ipc ``POD``), one after another, each with one
   container that execs ``busybox sleep`` (PID 1, so SIGTERM does not stop it); RunPodSandbox +
   CreateContainer + StartContainer per pod, total wall seconds.
2. Memory: PSS (``/proc/PID/smaps_rollup``) of the daemon and its helpers, a few seconds after the set-up.
3. Load: for ``--window`` seconds, one thread per kubelet loop on a fixed schedule: every 1 s ListPodSandbox +
   ListContainers, every 5 s Status, every 10 s ListContainerStats + ListPodSandboxStats + ImageFsInfo, every
   30 s ListImages (a tick that comes while the loop's previous calls still run is skipped and counted). Per-RPC
   p50/p99; failures are counted and shown ("fails" when a call never succeeded).
   CPU over the window: utime+stime+cutime+cstime (``/proc/PID/stat``, so reaped children such as runc count)
   of the daemon and of its helpers, as % of one core. Helpers are every process whose command line names
   the runtime's directory (conmon, containerd-shim-runc-v2) and their descendants (runc, catatonit, pause),
   but not the containers' own ``sleep`` processes.
4. A serial pass (critest's benchmark pattern, means over ``--calls`` calls after one warm-up):
   PodSandboxStatus and ContainerStatus (verbose), ListImages, ImageStatus, a CreateContainer +
   StartContainer + StopContainer (timeout 0) + RemoveContainer cycle in existing pods, and StopPodSandbox
   of a pod without containers.
5. Teardown: StopPodSandbox + RemovePodSandbox of every pod, one after another, with the containers still
   running (as the kubelet does after its own grace period), total wall seconds.

crirt runs with its loop-stall watchdog at 50 ms (``CRIRT_EXTRA_CONFIG``); the stalls it reported during the
window are printed with the crirt frame each was in.

Run as root: ``python bench/node.py [--pods 110] [--window 60] [--calls 20] [--only crirt|containerd]
[--logs DIR]``. Prints one table (crirt | containerd | ratio) and the targets of issue 11 with ok/MISSED.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import lifecycle  # noqa: E402 - sibling scripts, not packages
import peer  # noqa: E402
import sandbox  # noqa: E402

CRIRT_EXTRA_CONFIG = "[debug]\nloop_stall_ms = 50\n"
"""Extra TOML for crirt's config file (e.g. a ``[debug]`` table enabling the loop-stall log)."""

SLEEP = "987654321"
"""The containers' sleep, also how their processes are told apart from the runtime's helpers."""
SCRIPT = f"exec /bin/busybox sleep {SLEEP}"
SETTLE = 5.0
TIMEOUT = 120
LOAD = [(1.0, ("ListPodSandbox", "ListContainers")), (5.0, ("Status",)),
        (10.0, ("ListContainerStats", "ListPodSandboxStats", "ImageFsInfo")), (30.0, ("ListImages",))]
SERIAL = ["PodSandboxStatus", "ContainerStatus", "ListImages", "ImageStatus", "CreateContainer", "StartContainer",
          "StopContainer", "RemoveContainer", "StopPodSandbox"]
TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class NodeResult:
    name: str
    base: Path
    setup: float = 0.0
    teardown: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)  # % of one core: "daemon", "helpers"
    pss_kib: dict[str, int] = field(default_factory=dict)  # "daemon", "helpers"
    helpers: int = 0
    load: dict[str, list[float]] = field(default_factory=dict)
    failures: dict[str, list[str]] = field(default_factory=dict)
    skipped: dict[float, int] = field(default_factory=dict)
    serial: dict[str, list[float]] = field(default_factory=dict)
    stalls: list[dict[str, Any]] | None = None
    """The loop stalls crirt reported during the window (None: it reports none: the debug option is off)."""


# ---- the runtime's processes -----------------------------------------------------------------------------


def processes(base: Path) -> dict[str, str]:
    """The daemon and helpers of the runtime under ``base``, pid -> "daemon" or "helpers" (containers left out)."""
    kinds = {}
    for pid in sandbox.runtime_processes(base):
        command = sandbox.cmdline(pid)
        if f"sleep {SLEEP}" not in command:
            kinds[pid] = "daemon" if f"--config {base}/" in command else "helpers"
    return kinds


def cpu_ticks(base: Path) -> dict[tuple[str, str], tuple[str, int]]:
    """(pid, start time) -> (kind, utime+stime+cutime+cstime in clock ticks) of the daemon and its helpers."""
    ticks = {}
    for pid, kind in processes(base).items():
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks[pid, fields[19]] = kind, sum(int(value) for value in fields[11:15])
    return ticks


def cpu_percent(before: dict[tuple[str, str], tuple[str, int]], after: dict[tuple[str, str], tuple[str, int]],
                seconds: float) -> dict[str, float]:
    """% of one core per kind between two ``cpu_ticks``: processes born in between count from zero."""
    used = {"daemon": 0, "helpers": 0}
    for key, (kind, total) in after.items():
        used[kind] += total - before.get(key, (kind, 0))[1]
    return {kind: 100 * value / TICK / seconds for kind, value in used.items()}


def memory(base: Path) -> tuple[dict[str, int], int]:
    """(PSS in KiB per kind, number of helper processes)."""
    pss = {"daemon": 0, "helpers": 0}
    kinds = processes(base)
    for pid, kind in kinds.items():
        pss[kind] += lifecycle.sizes_kib(pid)[0]
    return pss, sum(kind == "helpers" for kind in kinds.values())


# ---- the kubelet's polling -------------------------------------------------------------------------------


def kubelet_load(endpoint: str, pb: ModuleType, pb_grpc: ModuleType, window: float, result: NodeResult) -> None:
    """Poll ``endpoint`` as the kubelet does for ``window`` seconds; the CPU of the runtime is read around it."""
    with grpc.insecure_channel(endpoint, options=lifecycle.CHANNEL_OPTIONS) as channel:
        runtime, images = pb_grpc.RuntimeServiceStub(channel), pb_grpc.ImageServiceStub(channel)
        calls: dict[str, Callable[[], Any]] = {
            "ListPodSandbox": lambda: runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=TIMEOUT),
            "ListContainers": lambda: runtime.ListContainers(pb.ListContainersRequest(), timeout=TIMEOUT),
            "Status": lambda: runtime.Status(pb.StatusRequest(), timeout=TIMEOUT),
            "ListContainerStats": lambda: runtime.ListContainerStats(pb.ListContainerStatsRequest(), timeout=TIMEOUT),
            "ListPodSandboxStats": lambda: runtime.ListPodSandboxStats(pb.ListPodSandboxStatsRequest(),
                                                                       timeout=TIMEOUT),
            "ImageFsInfo": lambda: images.ImageFsInfo(pb.ImageFsInfoRequest(), timeout=TIMEOUT),
            "ListImages": lambda: images.ListImages(pb.ListImagesRequest(), timeout=TIMEOUT),
        }
        for _, names in LOAD:
            for name in names:
                result.load[name] = []
        lock = threading.Lock()
        start = time.monotonic() + 0.1
        end = start + window

        def loop(period: float, names: tuple[str, ...]) -> None:
            tick = 0
            while (due := start + tick * period) < end:
                time.sleep(max(0.0, due - time.monotonic()))
                for name in names:
                    t0 = time.perf_counter()
                    try:
                        calls[name]()
                    except grpc.RpcError as error:
                        with lock:
                            result.failures.setdefault(name, []).append(f"{error.code().name}: {error.details()}")
                        continue
                    result.load[name].append(time.perf_counter() - t0)
                late = int((time.monotonic() - start) // period) + 1  # the next tick not yet due
                with lock:
                    result.skipped[period] = result.skipped.get(period, 0) + max(0, late - tick - 1)
                tick = max(tick + 1, late)

        threads = [threading.Thread(target=loop, args=group, daemon=True) for group in LOAD]
        before = cpu_ticks(result.base)
        time.sleep(max(0.0, start - time.monotonic()))
        for thread in threads:
            thread.start()
        time.sleep(max(0.0, end - time.monotonic()))
        result.cpu = cpu_percent(before, cpu_ticks(result.base), time.monotonic() - start)
        for thread in threads:
            thread.join(TIMEOUT * 3)


def loop_stalls(work: lifecycle.Workload) -> list[dict[str, Any]] | None:
    """The loop stalls crirt's verbose Status reports, or None if it has no ``loopStalls``."""
    info = dict(work.stub.Status(work.pb.StatusRequest(verbose=True), timeout=TIMEOUT).info)
    return json.loads(info["loopStalls"]) if "loopStalls" in info else None


def innermost_crirt_frame(stack: list[str]) -> str:
    """The deepest frame of a stall's stack that is crirt's own code (where it blocked the loop)."""
    ours = [frame for frame in stack if "/crirt/" in frame and "site-packages" not in frame]
    return ours[-1].strip().split("\n")[0] if ours else (stack[-1].strip().split("\n")[0] if stack else "?")


# ---- the phases ------------------------------------------------------------------------------------------


def serial_pass(work: lifecycle.Workload, images: Any, image: str, pods: list[str], containers: list[str],
                calls: int, result: NodeResult) -> None:
    """critest's benchmark RPCs one at a time, ``calls`` timed calls each after one warm-up call."""
    pb, stub = work.pb, work.stub
    timed: dict[str, list[float]] = {name: [] for name in SERIAL}

    def time_it(name: str, call: Callable[..., Any], *args: Any) -> Any:
        t0 = time.perf_counter()
        reply = call(*args)
        timed[name].append(time.perf_counter() - t0)
        return reply

    image_spec = pb.ImageSpec(image=image)
    for i in range(calls + 1):
        time_it("PodSandboxStatus", stub.PodSandboxStatus,
                pb.PodSandboxStatusRequest(pod_sandbox_id=pods[i % len(pods)], verbose=True), TIMEOUT)
        time_it("ContainerStatus", stub.ContainerStatus,
                pb.ContainerStatusRequest(container_id=containers[i % len(containers)], verbose=True), TIMEOUT)
        time_it("ListImages", images.ListImages, pb.ListImagesRequest(), TIMEOUT)
        time_it("ImageStatus", images.ImageStatus, pb.ImageStatusRequest(image=image_spec), TIMEOUT)
    for i in range(calls + 1):
        extra = time_it("CreateContainer", work.create, pods[i % len(pods)], f"serial-{i}", SCRIPT)
        time_it("StartContainer", work.start, extra)
        time_it("StopContainer", stub.StopContainer, pb.StopContainerRequest(container_id=extra, timeout=0), TIMEOUT)
        time_it("RemoveContainer", work.remove, extra)
    for i in range(calls + 1):
        empty = work.run_pod(1000 + i)
        time_it("StopPodSandbox", stub.StopPodSandbox, pb.StopPodSandboxRequest(pod_sandbox_id=empty), TIMEOUT)
        stub.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=empty), timeout=TIMEOUT)
    result.serial = {name: samples[1:] for name, samples in timed.items()}


@contextlib.contextmanager
def recording(manager: AbstractContextManager[str], endpoints: list[str]) -> Iterator[str]:
    """``manager``'s endpoint, noted in ``endpoints`` for the load client's own channel."""
    with manager as endpoint:
        endpoints.append(endpoint)
        yield endpoint


def measure_node(name: str, start: Callable[[], AbstractContextManager[str]], base: Path, pb: ModuleType,
                 pb_grpc: ModuleType, image: str, args: argparse.Namespace) -> NodeResult:
    result = NodeResult(name, base)
    endpoints: list[str] = []
    with lifecycle.running(name, lambda: recording(start(), endpoints), base, pb, pb_grpc, image, 8) as work, \
            grpc.insecure_channel(endpoints[-1], options=lifecycle.CHANNEL_OPTIONS) as channel:
        warm = work.run_pod(-1)  # lazy imports, caches, the first snapshot
        work.start(work.create(warm, "warmup", SCRIPT))
        work.remove_pod(warm)
        print(f"{name}: set-up of {args.pods} pods ...", flush=True)
        pods, containers = [], []
        t0 = time.perf_counter()
        for i in range(args.pods):
            pods.append(work.run_pod(i))
            containers.append(work.create(pods[-1], "sleep", SCRIPT))
            work.start(containers[-1])
        result.setup = time.perf_counter() - t0
        time.sleep(SETTLE)  # let short-lived helpers (runc, shim start-up) exit
        result.pss_kib, result.helpers = memory(base)
        print(f"{name}: {args.window:.0f} s of kubelet polling ...", flush=True)
        window_start = time.time()
        kubelet_load(endpoints[-1], pb, pb_grpc, args.window, result)
        stalls = loop_stalls(work)
        result.stalls = None if stalls is None else [s for s in stalls if s["at"] >= window_start]
        print(f"{name}: serial pass ...", flush=True)
        serial_pass(work, pb_grpc.ImageServiceStub(channel), image, pods, containers, args.calls, result)
        print(f"{name}: teardown ...", flush=True)
        t0 = time.perf_counter()
        for pod_id in pods:
            work.remove_pod(pod_id)
        result.teardown = time.perf_counter() - t0
    if args.logs:
        args.logs.mkdir(parents=True, exist_ok=True)
        for log in base.glob("*.log"):
            shutil.copy(log, args.logs / log.name)
    return result


# ---- the report ------------------------------------------------------------------------------------------


def ms(values: list[float], fraction: float) -> str:
    value = (statistics.median(values) if fraction == 0.5 else sandbox.percentile(values, fraction)) * 1e3
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def report(results: list[NodeResult], args: argparse.Namespace) -> None:
    pair = len(results) == 2
    rows: list[tuple[str, list[str], float | None]] = []  # label, one cell per runtime, crirt/containerd

    def row(label: str, cells: list[str], values: list[float] | None = None) -> None:
        ratio = values[0] / values[1] if pair and values and values[1] else None
        rows.append((label, cells, ratio))

    row(f"set-up of {args.pods} pods (s)", [f"{r.setup:.1f}" for r in results], [r.setup for r in results])
    row("teardown, one by one (s)", [f"{r.teardown:.1f}" for r in results], [r.teardown for r in results])
    cpu = [sum(r.cpu.values()) for r in results]
    row("CPU, daemon + helpers (% of a core)", [f"{c:.1f}" for c in cpu], cpu)
    row("  daemon / helpers", [f"{r.cpu['daemon']:.1f} / {r.cpu['helpers']:.1f}" for r in results])
    pss = [sum(r.pss_kib.values()) / 1024 for r in results]
    row("PSS, daemon + helpers (MiB)", [f"{p:.1f}" for p in pss], pss)
    row("  daemon / helpers (processes)",
        [f"{r.pss_kib['daemon'] / 1024:.1f} / {r.pss_kib['helpers'] / 1024:.1f} ({r.helpers})" for r in results])
    rows.append((f"under load, p50 / p99 (ms, {args.window:.0f} s)", [""] * len(results), None))
    for _, names in LOAD:
        for name in names:
            cells = []
            for r in results:
                done, failed = r.load[name], len(r.failures.get(name, []))
                cell = f"{ms(done, 0.5)} / {ms(done, 0.99)}" if done else "fails"
                cells.append(cell + (f" ({failed} failed)" if failed and done else ""))
            ok = all(r.load[name] for r in results)
            row(f"  {name}", cells, [statistics.median(r.load[name]) for r in results] if ok else None)
    rows.append((f"serial, mean (ms, {args.calls} calls)", [""] * len(results), None))
    for name in SERIAL:
        means = [statistics.mean(r.serial[name]) * 1e3 for r in results]
        row(f"  {name}", [f"{m:.1f}" for m in means], means)
    means = [(statistics.mean(r.serial["CreateContainer"]) + statistics.mean(r.serial["StartContainer"])) * 1e3
             for r in results]
    row("  CreateContainer + StartContainer", [f"{m:.1f}" for m in means], means)

    print(f"\nNode scale: {args.pods} pods x 1 busybox sleep (pid: CONTAINER), kubelet-style polling")
    print(f"{'measure':<38}" + "".join(f" {r.name:>24}" for r in results) + (f" {'ratio':>7}" if pair else ""))
    for label, cells, ratio in rows:
        print(f"{label:<38}" + "".join(f" {c:>24}" for c in cells) + (f" {ratio:>7.2f}" if ratio else ""))
    for r in results:
        if any(r.skipped.values()):
            print(f"{r.name}: ticks skipped because the previous calls still ran: "
                  + ", ".join(f"{count} of the {period:.0f} s loop" for period, count in r.skipped.items() if count))
        for name, errors in r.failures.items():
            print(f"{r.name}: {name} failed {len(errors)} times, e.g. {errors[0][:160]}")
        if r.name == "crirt":
            if r.stalls is None:
                print("crirt: no loopStalls in Status info (set CRIRT_EXTRA_CONFIG)")
                continue
            print(f"crirt: event-loop stalls over the threshold during the window: {len(r.stalls)}")
            for stall in r.stalls[:10]:
                print(f"  {stall['ms']:.0f} ms in {innermost_crirt_frame(stall['stack'])}")
    if pair:
        targets(results[0], results[1])


def targets(ours: NodeResult, theirs: NodeResult) -> None:
    checks: list[tuple[str, float | None, float, str]] = []  # label, value, limit, unit

    def ratio(a: float, b: float) -> float | None:
        return a / b if b else None

    checks.append(("CPU under the load", ratio(sum(ours.cpu.values()), sum(theirs.cpu.values())), 0.5, "x"))
    reference = statistics.median(theirs.load["ListContainerStats"]) if theirs.load["ListContainerStats"] else None
    for name in ("ListContainerStats", "ListPodSandboxStats"):
        value = statistics.median(ours.load[name]) / reference if ours.load[name] and reference else None
        checks.append((f"{name} p50 vs containerd's ListContainerStats p50", value, 1.0, "x"))
    for name in ("ListPodSandbox", "ListContainers"):
        value = sandbox.percentile(ours.load[name], 0.99) * 1e3 if ours.load[name] else None
        checks.append((f"{name} p99 under the load", value, 10.0, " ms"))
    checks.append(("teardown, one by one", ratio(ours.teardown, theirs.teardown), 1.0, "x"))
    checks.append(("set-up", ratio(ours.setup, theirs.setup), 0.7, "x"))
    for name in SERIAL:
        if name not in ("CreateContainer", "StartContainer"):
            checks.append((f"serial {name}", ratio(statistics.mean(ours.serial[name]),
                                                   statistics.mean(theirs.serial[name])), 1.0, "x"))
    create_start = [statistics.mean(r.serial["CreateContainer"]) + statistics.mean(r.serial["StartContainer"])
                    for r in (ours, theirs)]
    checks.append(("serial CreateContainer + StartContainer", ratio(*create_start), 0.8, "x"))
    checks.append(("PSS, daemon + helpers", ratio(sum(ours.pss_kib.values()), sum(theirs.pss_kib.values())), 0.5,
                   "x"))
    print("\nTargets (issue 11; crirt against containerd in this run):")
    for label, value, limit, unit in checks:
        shown = "n/a" if value is None else f"{value:.2f}{unit}"
        verdict = "ok" if value is not None and value <= limit else "MISSED"
        print(f"  {label:<62} {shown:>9}  {f'(<= {limit:.1f}{unit})':>12}  {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--pods", type=int, default=110)
    parser.add_argument("--window", type=float, default=60.0, help="seconds of kubelet-style polling")
    parser.add_argument("--calls", type=int, default=20, help="timed calls per RPC in the serial pass")
    parser.add_argument("--only", choices=["crirt", "containerd"], help="measure one runtime")
    parser.add_argument("--logs", type=Path, help="copy the daemons' logs into this directory")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="crirt-bench-node-") as tmp:
        base = Path(tmp)
        pb, pb_grpc = peer.compile_stubs(base / "stubs")
        with sandbox.pause_registry(base / "registry") as pause_image:
            image = lifecycle.push_busybox(base, pause_image.split("/")[0])
            runtimes: list[tuple[str, Callable[[], AbstractContextManager[str]]]] = [
                ("crirt", lambda: peer.crirt(base / "crirt", [], CRIRT_EXTRA_CONFIG)),
                ("containerd", lambda: sandbox.containerd_for_pods(base / "containerd", pause_image))]
            for name, start in runtimes:
                if args.only in (None, name):
                    results.append(measure_node(name, start, base / name, pb, pb_grpc, image, args))
    report(results, args)


if __name__ == "__main__":
    main()
