"""Pod + container start latency and memory per pod through crirt's three kinds of runtime handler, against
containerd's runc path.

Four paths, each a RuntimeClass handler on a runtime started fresh on private directories (``bench/peer.py``;
containerd as ``bench/sandbox.py`` configures it) with its own bridge network and cgroup parent
(``bench/lifecycle.py``'s ``running``):

- ``crirt runc``: crirt's default handler, the runc plugin on the OCI-CLI + conmon driver;
- ``crirt runsc``: the gvisor plugin (handler ``runsc``, ``network = "host"``: Debian's runsc cannot use its
  own netstack on this kernel), one gVisor sandbox per pod;
- ``crirt shim v2``: the kata plugin pointed at Debian's ``containerd-shim-runc-v2`` (handler ``kata-runc``,
  as ``shims/kata-shim/tests`` configure it), i.e. crirt's shim v2 driver with one shim per pod;
- ``containerd runc``: Debian's containerd 1.6 with its CRI plugin and its default runc handler, which drives
  the same ``containerd-shim-runc-v2``, one per pod, with a pause container (catatonit) in every pod.

Debian's containerd cannot run runsc on this machine (through its runc-v2 shim pods fail or hang), so gVisor
is compared with the runc paths only. The three crirt paths share one crirt daemon, as handlers side by side.

Measured per pod, through the same grpcio client: RunPodSandbox, then CreateContainer and StartContainer of a
busybox container running ``sh -c "trap 'exit 0' TERM; busybox sleep ... & wait"`` (so that stopping it is
quick). ``--pods`` pods are started one after another on one path, then (first round only) the memory is read
with all of them running, then they are all removed (not timed) before the next path starts; the paths take
turns, the order rotating each round, so that all meet the same load on a shared machine. One warm-up pod per
path is not counted.

Memory is the PSS (``/proc/PID/smaps_rollup``) of every process the runtime keeps for its pods, grouped by
program: conmon (one per container, infra included), containerd-shim-runc-v2 (one per pod), the pods' infra
processes (containerd's pause, the shim v2 path's catatonit), gVisor's runsc-sandbox (whose memory includes the
pod's processes, which run inside it), runsc-gofer and ptrace stub processes (``[exe]``: they hold the address
spaces of the pod's processes under the ptrace platform), the gvisor plugin's ``holder.sh`` shells and their
``runsc wait``. The daemon's PSS is shown apart (it is not per pod), and so are the runc paths'
container processes (the benchmark's own ``sh`` and ``sleep``), which are not counted.

If the run fails or is interrupted (Ctrl-C, SIGTERM), ``lifecycle.running`` removes everything through the
runtime (restarted if need be), kills what is left, and removes the network, netns pins, mounts and cgroups;
the runc state that containerd-shim-runc-v2 keeps outside the benchmark's directories is deleted too.

Run: ``python bench/handlers.py [--pods 20] [--rounds 2]`` as root. Targets: gVisor pod+container start
p50 <= 3x crirt's runc path; crirt's shim v2 path p50 <= 1.2x containerd's runc path.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
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
from pathlib import Path
from types import ModuleType
from typing import NoReturn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import lifecycle  # noqa: E402 - sibling scripts, not packages
import peer  # noqa: E402
import sandbox  # noqa: E402

GVISOR_HANDLER = "runsc"
SHIM_V2_HANDLER = "kata-runc"
SHIM_V2_BINARY = "containerd-shim-runc-v2"
CRIRT_RUNC_ROOT = Path("/run/containerd/runc/crirt")
"""Where containerd-shim-runc-v2 keeps runc's state for crirt's namespace (outside the benchmark's directories)."""
WORKLOAD_MARKER = "sleep 1000000"
"""In the command line of the container's own processes (``lifecycle.SCRIPT``)."""
TEARDOWN_PARALLEL = 4
TARGETS = (("crirt runsc", "crirt runc", 3.0), ("crirt shim v2", "containerd runc", 1.2))
"""(path, reference path, highest p50 ratio) of the issue's targets."""


@dataclasses.dataclass(frozen=True)
class HandlerPath:
    """One way to start a pod: a runtime (``crirt`` or ``containerd``) and the RuntimeClass handler on it."""

    name: str
    runtime: str
    handler: str


PATHS = (HandlerPath("crirt runc", "crirt", ""), HandlerPath("crirt runsc", "crirt", GVISOR_HANDLER),
         HandlerPath("crirt shim v2", "crirt", SHIM_V2_HANDLER), HandlerPath("containerd runc", "containerd", ""))


def crirt_handlers(platform: str) -> str:
    """crirt's config for the two extra handlers (its default runc handler stays)."""
    return (f'[runtimes.{GVISOR_HANDLER}]\nshim = "gvisor"\n'
            f'options = {{ network = "host", platform = "{platform}" }}\n'
            f'[runtimes.{SHIM_V2_HANDLER}]\nshim = "kata"\noptions = {{ binary = "{SHIM_V2_BINARY}" }}\n')


# ---- memory ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Footprint:
    """PSS in KiB with a path's pods running: the daemon, the per-pod processes by program, the workload."""

    daemon_pss: int = 0
    per_pod: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    """program -> [processes, PSS KiB]"""
    workload: list[int] = dataclasses.field(default_factory=lambda: [0, 0])

    @property
    def per_pod_pss(self) -> int:
        return sum(pss for _, pss in self.per_pod.values())


def program(pid: str) -> str:
    """A process's program for the report: argv[0]'s base name, with the script of a shell and the subcommand
    of a plain ``runsc`` (``runsc-sandbox`` and ``runsc-gofer`` name themselves); ``[comm]`` for a process
    without a command line (gVisor's ptrace stubs)."""
    try:
        argv = [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
        if not argv:
            return f"[{Path(f'/proc/{pid}/comm').read_text().strip()}]"
    except OSError:
        return "?"
    name = os.path.basename(argv[0])
    if name in ("sh", "runsc"):
        first = next((a for a in argv[1:] if not a.startswith("-")), "")
        return f"{name} {os.path.basename(first)}".rstrip()
    return name


def footprint(base: Path) -> Footprint:
    """Classify every process of the runtime under ``base``: its daemon, the container processes of the
    benchmark's workload, and everything else it keeps for the pods."""
    result = Footprint()
    for pid in sandbox.runtime_processes(base):
        pss, _ = lifecycle.sizes_kib(pid)
        line = sandbox.cmdline(pid)
        if f"--config {base}/" in line:
            result.daemon_pss += pss
        elif WORKLOAD_MARKER in line:
            result.workload[0] += 1
            result.workload[1] += pss
        else:
            entry = result.per_pod.setdefault(program(pid), [0, 0])
            entry[0] += 1
            entry[1] += pss
    return result


# ---- one path --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Outcome:
    """A path's timings (seconds, by step) and its memory with ``pods`` pods running."""

    path: HandlerPath
    samples: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    memory: Footprint | None = None

    def add(self, step: str, seconds: float) -> None:
        self.samples.setdefault(step, []).append(seconds)


def start_pod(work: lifecycle.Workload, path: HandlerPath, index: int) -> tuple[float, float, float]:
    """RunPodSandbox, CreateContainer, StartContainer of one pod on ``path``: the seconds of each."""
    t0 = time.perf_counter()
    pod_id = work.run_pod(index, path.handler)
    t1 = time.perf_counter()
    container_id = work.create(pod_id, "sleeper")
    t2 = time.perf_counter()
    work.start(container_id)
    return t1 - t0, t2 - t1, time.perf_counter() - t2


def remove_pods(work: lifecycle.Workload) -> None:
    """Stop and remove every pod made through ``work`` (their containers with them)."""
    with ThreadPoolExecutor(TEARDOWN_PARALLEL) as pool:
        list(pool.map(work.remove_pod, list(work.pods)))
    work.pods.clear()


def running_containers(work: lifecycle.Workload) -> int:
    pb = work.pb
    running = pb.ContainerFilter(state=pb.ContainerStateValue(state=pb.CONTAINER_RUNNING))
    request = pb.ListContainersRequest(filter=running)
    return len(work.stub.ListContainers(request, timeout=lifecycle.TIMEOUT).containers)


def block(work: lifecycle.Workload, outcome: Outcome, pods: int, numbers: Iterator[int], measure: bool) -> None:
    """``pods`` pods started one after another on one path, timed; memory read with all running; all removed."""
    try:
        for number in itertools.islice(numbers, pods):
            run, create, start = start_pod(work, outcome.path, number)
            outcome.add("RunPodSandbox", run)
            outcome.add("CreateContainer", create)
            outcome.add("StartContainer", start)
            outcome.add("pod+container", run + create + start)
        if measure:
            time.sleep(2)  # let short-lived helpers (runc, CNI plugins, shim start-up) exit
            count = running_containers(work)
            assert count == pods, f"{outcome.path.name}: {count} containers running, expected {pods}"
            outcome.memory = footprint(work.base)
    finally:
        remove_pods(work)


def delete_runc_state(root: Path, base: Path) -> None:
    """Delete the runc containers under ``root`` whose bundles lie under ``base`` (the shim v2 path's, if the
    runtime could not remove them)."""
    listed = subprocess.run(["runc", "--root", str(root), "list", "--format", "json"], capture_output=True,
                            text=True, check=False)
    for container in json.loads(listed.stdout or "null") or []:
        if container.get("bundle", "").startswith(f"{base}/"):
            subprocess.run(["runc", "--root", str(root), "delete", "--force", container["id"]], capture_output=True,
                           check=False)


@contextlib.contextmanager
def runtime(name: str, start: Callable[[], AbstractContextManager[str]], base: Path, pb: ModuleType,
            pb_grpc: ModuleType, image: str) -> Iterator[lifecycle.Workload]:
    """``lifecycle.running`` (everything removed afterwards, whatever happens), plus the runc state that
    containerd-shim-runc-v2 keeps under /run for crirt's shim v2 path."""
    try:
        with lifecycle.running(name, start, base, pb, pb_grpc, image, TEARDOWN_PARALLEL) as work:
            yield work
    finally:
        if CRIRT_RUNC_ROOT.is_dir():
            delete_runc_state(CRIRT_RUNC_ROOT, base)


def run_benchmark(works: dict[str, lifecycle.Workload], paths: list[HandlerPath], args: argparse.Namespace
                  ) -> list[Outcome]:
    outcomes = [Outcome(path) for path in paths]
    views = {path.name: dataclasses.replace(works[path.runtime], name=path.name, pods={}) for path in paths}
    numbers = itertools.count()  # pod names must differ within a runtime
    for outcome in outcomes:
        print(f"warm-up: {outcome.path.name} ...", flush=True)
        view = views[outcome.path.name]
        try:
            start_pod(view, outcome.path, next(numbers))
        finally:
            remove_pods(view)
    for round_number in range(args.rounds):
        shift = round_number % len(outcomes)
        for outcome in outcomes[shift:] + outcomes[:shift]:
            print(f"round {round_number + 1}/{args.rounds}: {outcome.path.name}, {args.pods} pods ...", flush=True)
            block(views[outcome.path.name], outcome, args.pods, numbers, measure=round_number == 0)
    return outcomes


# ---- report ----------------------------------------------------------------------------------------------


def ms(values: list[float], fraction: float | None = None) -> float:
    return (statistics.median(values) if fraction is None else sandbox.percentile(values, fraction)) * 1e3


def report(outcomes: list[Outcome], args: argparse.Namespace) -> None:
    print(f"\nPod + container start: {args.pods} pods one after another per path, {args.rounds} round(s), "
          f"samples pooled; milliseconds. The machine is shared: expect noise.")
    print(f"{'path':<16} {'start p50':>10} {'start p99':>10} {'RunPod p50':>11} {'Create p50':>11} "
          f"{'Start p50':>10} {'per pod MiB':>12} {'daemon MiB':>11}")
    for o in outcomes:
        s = o.samples
        per_pod = f"{o.memory.per_pod_pss / 1024 / args.pods:.2f}" if o.memory else "-"
        daemon = f"{o.memory.daemon_pss / 1024:.1f}" if o.memory else "-"
        print(f"{o.path.name:<16} {ms(s['pod+container']):>10.1f} {ms(s['pod+container'], 0.99):>10.1f} "
              f"{ms(s['RunPodSandbox']):>11.1f} {ms(s['CreateContainer']):>11.1f} {ms(s['StartContainer']):>10.1f} "
              f"{per_pod:>12} {daemon:>11}")

    print(f"\nMemory with {args.pods} pods of one path running (PSS, MiB). Per pod = the processes below / "
          f"{args.pods}; the daemon is shared by all pods (crirt's one daemon serves its three paths).")
    for o in outcomes:
        if o.memory is None:
            continue
        parts = ", ".join(f"{count} {name} {pss / 1024:.1f}"
                          for name, (count, pss) in sorted(o.memory.per_pod.items(), key=lambda kv: -kv[1][1]))
        count, pss = o.memory.workload
        print(f"  {o.path.name:<16} counted: {parts or 'nothing'}; not counted: daemon "
              f"{o.memory.daemon_pss / 1024:.1f}, container processes ({count}) {pss / 1024:.1f}")

    by_name = {o.path.name: o for o in outcomes}
    print("\nTargets (pod+container start p50 ratios):")
    for name, reference, limit in TARGETS:
        if name in by_name and reference in by_name:
            ratio = ms(by_name[name].samples["pod+container"]) / ms(by_name[reference].samples["pod+container"])
            print(f"  {name} / {reference} = {ratio:.2f} (target <= {limit}) {'ok' if ratio <= limit else 'MISSED'}")
    for name, reference in (("crirt runsc", "containerd runc"), ("crirt runc", "containerd runc")):
        if name in by_name and reference in by_name:
            ratio = ms(by_name[name].samples["pod+container"]) / ms(by_name[reference].samples["pod+container"])
            print(f"  {name} / {reference} = {ratio:.2f} (for reference)")


# ---- main ------------------------------------------------------------------------------------------------


def interrupted(signum: int, _frame: object) -> NoReturn:
    """SIGTERM ends the run like Ctrl-C, so that everything is cleaned up."""
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--pods", type=int, default=20, help="pods started one after another per path and round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds over all paths (samples are pooled)")
    parser.add_argument("--paths", default=",".join(p.name for p in PATHS),
                        help="comma-separated subset of: " + ", ".join(p.name for p in PATHS))
    parser.add_argument("--gvisor-platform", default="ptrace", help="runsc platform (ptrace, kvm)")
    args = parser.parse_args()
    known = {p.name: p for p in PATHS}
    unknown = [name for name in args.paths.split(",") if name not in known]
    if unknown or args.pods < 1 or args.rounds < 1:
        parser.error(f"unknown paths {unknown}" if unknown else "--pods and --rounds must be at least 1")
    paths = [known[name] for name in args.paths.split(",")]
    signal.signal(signal.SIGTERM, interrupted)
    with tempfile.TemporaryDirectory(prefix="crirt-bench-handlers-") as tmp:
        base = Path(tmp)
        pb, pb_grpc = peer.compile_stubs(base / "stubs")
        with sandbox.pause_registry(base / "registry") as pause_image:
            image = lifecycle.push_busybox(base, pause_image.split("/")[0])
            starters: dict[str, Callable[[], AbstractContextManager[str]]] = {
                "crirt": lambda: peer.crirt(base / "crirt", [], crirt_handlers(args.gvisor_platform)),
                "containerd": lambda: sandbox.containerd_for_pods(base / "containerd", pause_image),
            }
            with contextlib.ExitStack() as stack:
                works = {name: stack.enter_context(runtime(name, starters[name], base / name, pb, pb_grpc, image))
                         for name in dict.fromkeys(p.runtime for p in paths)}
                outcomes = run_benchmark(works, paths, args)
    report(outcomes, args)


if __name__ == "__main__":
    main()
