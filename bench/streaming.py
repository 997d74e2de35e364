"""Streaming: exec round trip and port-forward throughput, crirt against containerd, through one SPDY/3.1 client.

Each runtime is started fresh on private directories as ``bench/lifecycle.py`` starts it (containerd: the
catatonit pause image, Debian's CNI plugins; both: their own bridge network, a busybox image from a local
docker-registry on 127.0.0.1), with one kubelet-like pod running one busybox container: a persistent
``nc -ll -p 9000`` that answers every connection with ``--mib`` MiB from ``dd if=/dev/zero``. Both runtimes
serve their streaming URLs on 127.0.0.1 (containerd 1.6's ``stream_server_address``/``stream_server_port = "0"``
from ``bench/peer.py``) and are driven by the same client, an implementation neither of them wrote: node's
spdy-transport in ``tests/support/node/bench_spdy.js``, one long-lived worker for the whole run.

1. Exec round trip, ``--execs`` times: the CRI ``Exec`` call (``echo hi``, stdout and stderr, no stdin, no tty),
   then the HTTP upgrade, the error/stdout/stderr streams opened one after another as kubectl does
   (``v4.channel.k8s.io``), ``hi`` on stdout and the exit status on the error stream, until every stream ended.
   Each round trip is checked (``hi``, status Success). The time of the Exec RPC alone is shown too.
2. Port-forward throughput, ``--transfers`` times: the CRI ``PortForward`` call, the upgrade, one error + data
   stream pair to port 9000 (``portforward.k8s.io``), then every byte the pod sends is counted; throughput is
   the ``--mib`` MiB over the time from the data stream's reply to the last byte. The client never half-closes
   (a reading-only local client keeps its end open; containerd 1.6 ends a forward a second after either
   direction ends). Shown with it: the daemon's CPU seconds per GiB forwarded (from /proc), and the client's
   CPU time over the transfer time (near 100% would mean the client, not the runtime, set the pace).

The runtimes' calls are interleaved one by one, the one that goes first alternating, so that both meet the same
load when the machine is shared; a few untimed calls warm each up first. Everything is removed at the end
through the runtime's own API, and after a failure or Ctrl-C as ``bench/lifecycle.py`` does (restarted daemon,
leftover processes, network, mounts, cgroups).

Run: ``python bench/streaming.py [--execs 200] [--transfers 5] [--mib 256]`` as root, with node and
``tests/support/node/node_modules`` (``make node``). Targets: crirt's exec p50 <= containerd's; crirt's
port-forward throughput >= 0.8x containerd's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import lifecycle  # noqa: E402 - sibling scripts, not packages
import peer  # noqa: E402
import sandbox  # noqa: E402

NODE_CLIENT = HERE.parent / "tests" / "support" / "node" / "bench_spdy.js"
PORT = 9000
BLOCK = 65536
WARMUP_EXECS = 5
MIB = 1024 * 1024


def server_script(mib: int) -> str:
    """A container script: every connection to ``PORT`` gets ``mib`` MiB of zeros; SIGTERM ends it at once."""
    count = mib * MIB // BLOCK
    return (f"trap 'exit 0' TERM; /bin/busybox nc -ll -p {PORT} -e /bin/busybox dd if=/dev/zero bs={BLOCK} "
            f"count={count} & wait")


class Client:
    """The node worker (``bench_spdy.js``): one JSON job written, one JSON answer read."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(["node", str(NODE_CLIENT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"bench_spdy.js ended (exit {self.proc.poll()})")
        answer: dict[str, Any] = json.loads(line)
        if "failure" in answer:
            raise RuntimeError(f"bench_spdy.js {job['op']}: {answer['failure']}")
        return answer

    def close(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Target:
    """One runtime's pod and server container, and the samples taken from it (seconds; MiB/s)."""

    work: lifecycle.Workload
    pod_id: str
    container_id: str
    exec_total: list[float] = field(default_factory=list)
    exec_rpc: list[float] = field(default_factory=list)
    exec_phases: dict[str, list[float]] = field(default_factory=dict)
    """Milliseconds from the client's connect to each step of the session (``bench_spdy.js``'s phases, and end)."""
    forward_mibs: list[float] = field(default_factory=list)
    forward_setup: list[float] = field(default_factory=list)
    forward_client_cpu: list[float] = field(default_factory=list)
    """The client's CPU time over the transfer time: near 1.0 means the client, not the runtime, set the pace."""
    forward_daemon_cpu: list[float] = field(default_factory=list)
    """The daemon's CPU seconds per GiB forwarded (the whole session, the PortForward RPC included)."""
    daemon_pids: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.work.name

    def exec_once(self, client: Client, record: bool = True) -> None:
        """One exec round trip of ``echo hi``, checked."""
        pb = self.work.pb
        request = pb.ExecRequest(container_id=self.container_id, cmd=["echo", "hi"], stdout=True, stderr=True)
        t0 = time.perf_counter()
        url = self.work.stub.Exec(request, timeout=lifecycle.TIMEOUT).url
        t1 = time.perf_counter()
        answer = client.run({"op": "exec", "url": url})
        t2 = time.perf_counter()
        if answer["stdout"] != "hi\n" or answer["stderr"] or '"Success"' not in answer["status"]:
            raise RuntimeError(f"{self.name}: unexpected exec result {answer}")
        if record:
            self.exec_total.append(t2 - t0)
            self.exec_rpc.append(t1 - t0)
            for phase, ms in {**answer["phases"], "end": answer["ms"]}.items():
                self.exec_phases.setdefault(phase, []).append(ms)

    def forward_once(self, client: Client, size: int, record: bool = True) -> None:
        """One port-forward session reading ``size`` bytes from the pod's server, checked."""
        request = self.work.pb.PortForwardRequest(pod_sandbox_id=self.pod_id, port=[PORT])
        cpu = cpu_seconds(self.daemon_pids)
        t0 = time.perf_counter()
        url = self.work.stub.PortForward(request, timeout=lifecycle.TIMEOUT).url
        rpc = time.perf_counter() - t0
        answer = client.run({"op": "portforward", "url": url, "port": PORT, "bytes": size})
        cpu = cpu_seconds(self.daemon_pids) - cpu
        if answer["bytes"] < size or answer["error"]:
            raise RuntimeError(f"{self.name}: port-forward got {answer}")
        if record:
            self.forward_mibs.append(size / MIB / (answer["ms"] / 1e3))
            self.forward_setup.append(rpc + answer["setupMs"] / 1e3)
            self.forward_client_cpu.append(answer["cpuMs"] / answer["ms"])
            self.forward_daemon_cpu.append(cpu / (size / 1024 / MIB))


def cpu_seconds(pids: list[str]) -> float:
    """User + system CPU seconds used so far by the given processes (0 for those gone)."""
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def wait_for_server(target: Target, client: Client) -> None:
    """Retry a 1-byte forward until the pod's nc listens (it starts with the container)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            target.forward_once(client, 1, record=False)
            return
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def prepare(work: lifecycle.Workload, mib: int, client: Client) -> Target:
    """The pod and its server container; the first calls, untimed."""
    pod_id = work.run_pod(0)
    container_id = work.create(pod_id, "stream", server_script(mib))
    work.start(container_id)
    daemons = [pid for pid in sandbox.runtime_processes(work.base) if f"--config {work.base}/" in sandbox.cmdline(pid)]
    target = Target(work, pod_id, container_id, daemon_pids=daemons)
    wait_for_server(target, client)
    for _ in range(WARMUP_EXECS):
        target.exec_once(client, record=False)
    target.forward_once(client, MIB, record=False)  # stops reading after 1 MiB: the session is dropped early
    return target


def run_benchmark(targets: list[Target], client: Client, args: argparse.Namespace) -> None:
    """Exec round trips, then transfers, each call interleaved across runtimes with alternating order."""
    for i in range(args.execs):
        for target in targets if i % 2 == 0 else targets[::-1]:
            target.exec_once(client)
        if (i + 1) % 50 == 0:
            print(f"exec round trips: {i + 1}/{args.execs}", flush=True)
    for i in range(args.transfers):
        for target in targets if i % 2 == 0 else targets[::-1]:
            target.forward_once(client, args.mib * MIB)
            print(f"transfer {i + 1}/{args.transfers}, {target.name}: {target.forward_mibs[-1]:.1f} MiB/s",
                  flush=True)


def report(targets: list[Target], args: argparse.Namespace) -> None:
    ms = 1e3
    print(f"\nStreaming through one SPDY/3.1 client (node spdy-transport): {args.execs} exec round trips of "
          f"`echo hi` (Exec RPC + upgrade + streams + output + status); {args.transfers} port-forward transfers "
          f"of {args.mib} MiB each (one connection, pod -> client).")
    print(f"{'runtime':<12} {'exec p50 ms':>12} {'exec p99 ms':>12} {'Exec RPC p50':>13} "
          f"{'fwd MiB/s med':>14} {'min':>8} {'max':>8} {'fwd setup p50 ms':>17} {'daemon CPU s/GiB':>17} "
          f"{'client CPU':>11}")
    for t in targets:
        print(f"{t.name:<12} {statistics.median(t.exec_total) * ms:>12.2f} "
              f"{sandbox.percentile(t.exec_total, 0.99) * ms:>12.2f} {statistics.median(t.exec_rpc) * ms:>13.2f} "
              f"{statistics.median(t.forward_mibs):>14.1f} {min(t.forward_mibs):>8.1f} {max(t.forward_mibs):>8.1f} "
              f"{statistics.median(t.forward_setup) * ms:>17.2f} {statistics.median(t.forward_daemon_cpu):>17.2f} "
              f"{statistics.median(t.forward_client_cpu):>11.0%}")
    phases = ("upgraded", "streams", "output", "status", "end")
    print("\nExec session phases, p50 ms from the client's connect: the 101, the last stream's reply, the first "
          "stdout byte, the error stream's end (status), all streams ended")
    print(f"{'runtime':<12}" + "".join(f" {phase:>9}" for phase in phases))
    for t in targets:
        print(f"{t.name:<12}" + "".join(f" {statistics.median(t.exec_phases[phase]):>9.2f}" for phase in phases))
    if len(targets) == 2:
        ours, theirs = targets
        exec_ratio = statistics.median(ours.exec_total) / statistics.median(theirs.exec_total)
        fwd_ratio = statistics.median(ours.forward_mibs) / statistics.median(theirs.forward_mibs)
        print("\nTargets (crirt / containerd):")
        for label, ratio, target, met in (("exec round trip p50", exec_ratio, "<= 1.0", exec_ratio <= 1),
                                          ("port-forward MiB/s median", fwd_ratio, ">= 0.8", fwd_ratio >= 0.8)):
            print(f"  {label:<26}{ratio:>5.2f}  (target {target}) {'ok' if met else 'MISSED'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--execs", type=int, default=200, help="timed exec round trips per runtime")
    parser.add_argument("--transfers", type=int, default=5, help="timed port-forward transfers per runtime")
    parser.add_argument("--mib", type=int, default=256, help="MiB per port-forward transfer")
    parser.add_argument("--no-containerd", action="store_true", help="measure crirt only")
    args = parser.parse_args()
    if min(args.execs, args.transfers, args.mib) < 1:
        parser.error("--execs, --transfers and --mib must be at least 1")
    if shutil.which("node") is None or not (NODE_CLIENT.parent / "node_modules" / "spdy-transport").is_dir():
        parser.error("needs node and tests/support/node/node_modules (make node)")
    with tempfile.TemporaryDirectory(prefix="crirt-bench-streaming-") as tmp:
        base = Path(tmp)
        pb, pb_grpc = peer.compile_stubs(base / "stubs")
        with sandbox.pause_registry(base / "registry") as pause_image:
            image = lifecycle.push_busybox(base, pause_image.split("/")[0])
            runtimes: list[tuple[str, Callable[[], AbstractContextManager[str]]]] = [
                ("crirt", lambda: peer.crirt(base / "crirt", []))]
            if not args.no_containerd:
                runtimes.append(("containerd", lambda: sandbox.containerd_for_pods(base / "containerd", pause_image)))
            client = Client()
            try:
                with contextlib.ExitStack() as stack:
                    works = [stack.enter_context(lifecycle.running(name, start, base / name, pb, pb_grpc, image, 2))
                             for name, start in runtimes]
                    targets = [prepare(work, args.mib, client) for work in works]
                    run_benchmark(targets, client, args)
            finally:
                client.close()
    report(targets, args)


if __name__ == "__main__":
    main()
