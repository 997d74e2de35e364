"""RunPodSandbox latency and memory with 50 pods: crirt against containerd, on the same CNI network setup.

For each runtime, started fresh on private directories (``bench/peer.py``) with its own bridge network
(bridge + host-local + portmap from Debian's containernetworking-plugins, a free 10.2xx.y.0/24 subnet):

1. ``--pods`` pods are created one after another; each RunPodSandbox is timed through the same grpcio
   client. With all of them running, the memory of the runtime is measured: the PSS (proportional set
   size, so shared libraries are not counted twice) of the daemon and of every process it left running for
   its pods (containerd: a containerd-shim-runc-v2 and a pause process per pod; crirt: nothing for a
   kubelet-style pod, conmon + catatonit for a ``pid: POD`` pod). Then every pod is stopped and removed.
2. The same number of pods is created ``--parallel`` at a time; each call is timed. Then removed again.

The pods are kubelet-like (``pid: CONTAINER``, a hostname, labels). containerd always starts a pause
container; its pause image is built here from Debian's static catatonit and served by a local
docker-registry on 127.0.0.1 (pulled before timing starts). crirt needs no image: it pins the pod's
namespaces itself. A third row runs crirt with ``pid: POD`` pods, which get a catatonit infra container
through the runc shim, for comparison.

Run: ``python bench/sandbox.py [--pods 50] [--parallel 10]`` as root. Prints one table; the target is
crirt's p50 <= 0.5x containerd's and less memory in total.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
import peer  # noqa: E402 - sibling scripts and the tests' network helper, not packages
from pull import start_registry  # noqa: E402
from support.network import BridgeNetwork  # noqa: E402

CATATONIT = Path("/usr/bin/catatonit")
PAUSE_TAG = "pause/catatonit:bench"


# ---- the pause image for containerd --------------------------------------------------------------------


def build_pause_layout(layout: Path) -> None:
    """An OCI layout tagged ``bench`` whose one layer holds catatonit as ``/pause`` (run as ``/pause -P``)."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tar.gettarinfo(str(CATATONIT), arcname="pause")
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        with CATATONIT.open("rb") as binary:
            tar.addfile(info, binary)
    layer = raw.getvalue()

    def blob(data: bytes, media_type: str) -> dict[str, Any]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}

    layer_desc = blob(layer, "application/vnd.oci.image.layer.v1.tar")
    config = blob(json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/pause", "-P"], "User": "65535:65535"},
        "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]},
    }).encode(), "application/vnd.oci.image.config.v1+json")
    manifest = blob(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                                "config": config, "layers": [layer_desc]}).encode(),
                    "application/vnd.oci.image.manifest.v1+json")
    manifest["annotations"] = {"org.opencontainers.image.ref.name": "bench"}
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [manifest]}))


@contextlib.contextmanager
def pause_registry(base: Path) -> Iterator[str]:
    """A local registry serving the catatonit pause image; yields its reference."""
    build_pause_layout(base / "pause-layout")
    registry, host = start_registry(base / "registry")
    try:
        subprocess.run(["skopeo", "--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false",
                        f"oci:{base / 'pause-layout'}:bench", f"docker://{host}/{PAUSE_TAG}"], check=True)
        yield f"{host}/{PAUSE_TAG}"
    finally:
        registry.terminate()
        registry.wait(10)


@contextlib.contextmanager
def containerd_for_pods(base: Path, pause_image: str) -> Iterator[str]:
    """containerd from ``bench/peer.py`` plus what pods need on this machine: the pause image, Debian's CNI
    plugin dir, and ``restrict_oom_score_adj`` (the environment notes: without CAP_SYS_RESOURCE runc cannot
    lower a pause container's oom_score_adj)."""
    original = peer._containerd_config

    def patched(directory: Path, registries: list[str]) -> Path:
        path = original(directory, registries)
        text = path.read_text().replace(
            '  stream_server_port = "0"\n',
            f'  stream_server_port = "0"\n  sandbox_image = "{pause_image}"\n  restrict_oom_score_adj = true\n',
        ).replace(f'  conf_dir = "{directory}/cni"\n', f'  conf_dir = "{directory}/cni"\n  bin_dir = "/usr/lib/cni"\n')
        path.write_text(text)
        return path

    peer._containerd_config = patched
    try:
        with peer.containerd(base, [pause_image.split("/")[0]]) as endpoint:
            yield endpoint
    finally:
        peer._containerd_config = original


# ---- measuring -------------------------------------------------------------------------------------------


def pod_config(pb: ModuleType, index: int, pid_mode: int) -> Any:
    name = f"bench-{index}"
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, namespace="bench", uid=f"uid-{name}-{time.time_ns()}"),
        hostname=name, labels={"app": "bench", "io.kubernetes.pod.name": name},
        linux=pb.LinuxPodSandboxConfig(security_context=pb.LinuxSandboxSecurityContext(
            namespace_options=pb.NamespaceOption(pid=pid_mode))))


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _pss_kib(pid: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def runtime_processes(base: Path) -> list[str]:
    """Every process whose command line names ``base`` (the daemon, its shims/conmons), and their children."""
    parents: dict[str, str] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError):
                parents[entry] = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1]
    chosen = {pid for pid in parents if str(base) in cmdline(pid)}
    grew = True
    while grew:
        children = {pid for pid, parent in parents.items() if parent in chosen} - chosen
        chosen |= children
        grew = bool(children)
    return sorted(chosen, key=int)


def memory_mib(base: Path) -> tuple[float, int]:
    """(total PSS in MiB, number of processes) of a runtime and everything it runs."""
    pids = runtime_processes(base)
    return sum(_pss_kib(pid) for pid in pids) / 1024, len(pids)


def remove_all(stub: Any, pb: ModuleType) -> None:
    for item in stub.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=60).items:
        stub.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=item.id), timeout=120)
        stub.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=item.id), timeout=120)


def timed_run(stub: Any, pb: ModuleType, config: Any) -> float:
    start = time.perf_counter()
    stub.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=120)
    return time.perf_counter() - start


def measure(name: str, runtime: Callable[[], AbstractContextManager[str]], base: Path, pb: ModuleType,
            pb_grpc: ModuleType, pods: int, parallel: int, pid_mode: int,
            prepare: Callable[[Any], None] | None = None) -> dict[str, Any]:
    """Sequential and parallel RunPodSandbox latencies, and memory with ``pods`` pods running."""
    net = BridgeNetwork(base / "cni")
    net.write()
    try:
        with runtime() as endpoint, grpc.insecure_channel(endpoint) as channel:
            stub = pb_grpc.RuntimeServiceStub(channel)
            if prepare is not None:
                prepare(channel)
            timed_run(stub, pb, pod_config(pb, -1, pid_mode))  # warm up (plugin VERSION, caches, lazy imports)
            remove_all(stub, pb)
            idle, _ = memory_mib(base)
            sequential = [timed_run(stub, pb, pod_config(pb, i, pid_mode)) for i in range(pods)]
            loaded, processes = memory_mib(base)
            ips = {stub.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=i.id)).status.network.ip
                   for i in stub.ListPodSandbox(pb.ListPodSandboxRequest()).items}
            assert len(ips) == pods, f"{name}: {len(ips)} distinct pod IPs for {pods} pods"
            remove_all(stub, pb)
            with ThreadPoolExecutor(parallel) as pool:
                concurrent = list(pool.map(lambda i: timed_run(stub, pb, pod_config(pb, 1000 + i, pid_mode)),
                                           range(pods)))
            remove_all(stub, pb)
        return {"name": name, "sequential": sequential, "parallel": concurrent, "idle_mib": idle,
                "loaded_mib": loaded, "processes": processes}
    finally:
        net.cleanup(base / "state")
        peer.unmount_under(base)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--pods", type=int, default=50)
    parser.add_argument("--parallel", type=int, default=10)
    parser.add_argument("--no-containerd", action="store_true", help="measure crirt only")
    parser.add_argument("--no-infra", action="store_true", help="skip the crirt pid: POD row")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="crirt-bench-sandbox-") as tmp:
        base = Path(tmp)
        pb, pb_grpc = peer.compile_stubs(base / "stubs")
        results = []
        results.append(measure("crirt", lambda: peer.crirt(base / "crirt", []), base / "crirt", pb, pb_grpc,
                               args.pods, args.parallel, pb.CONTAINER))
        if not args.no_infra:
            results.append(measure("crirt, pid: POD", lambda: peer.crirt(base / "crirt-infra", []),
                                   base / "crirt-infra", pb, pb_grpc, args.pods, args.parallel, pb.POD))
        if not args.no_containerd:
            with pause_registry(base / "pause") as pause_image:
                def pull(channel: grpc.Channel) -> None:
                    images = pb_grpc.ImageServiceStub(channel)
                    images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=pause_image)), timeout=120)

                results.append(measure("containerd", lambda: containerd_for_pods(base / "containerd", pause_image),
                                       base / "containerd", pb, pb_grpc, args.pods, args.parallel, pb.CONTAINER,
                                       prepare=pull))
    print(f"\nRunPodSandbox, {args.pods} pods: sequential and {args.parallel} in parallel (milliseconds); "
          f"memory (PSS) of the runtime and its per-pod processes")
    print(f"{'runtime':<17} {'seq p50':>8} {'seq p99':>8} {'par p50':>8} {'par p99':>8} "
          f"{'idle MiB':>9} {f'{args.pods} pods MiB':>12} {'processes':>9}")
    for r in results:
        print(f"{r['name']:<17} {statistics.median(r['sequential']) * 1e3:>8.1f} "
              f"{percentile(r['sequential'], 0.99) * 1e3:>8.1f} {statistics.median(r['parallel']) * 1e3:>8.1f} "
              f"{percentile(r['parallel'], 0.99) * 1e3:>8.1f} {r['idle_mib']:>9.1f} {r['loaded_mib']:>12.1f} "
              f"{r['processes']:>9}")
    by_name = {r["name"]: r for r in results}
    if "containerd" in by_name:
        ours, theirs = by_name["crirt"], by_name["containerd"]
        for kind in ("sequential", "parallel"):
            ratio = statistics.median(ours[kind]) / statistics.median(theirs[kind])
            print(f"{kind}: crirt p50 / containerd p50 = {ratio:.2f} (target <= 0.5)")
        print(f"memory with {args.pods} pods: crirt {ours['loaded_mib']:.1f} MiB, containerd "
              f"{theirs['loaded_mib']:.1f} MiB ({ours['loaded_mib'] / theirs['loaded_mib']:.2f}x)")


if __name__ == "__main__":
    main()
