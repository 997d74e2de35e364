"""PullImage of a ~200 MB (compressed) multi-layer image from a local registry: crirt against containerd.

The image is built from this machine's own files (so its content is realistic: libraries, headers, Python
modules, busybox), one gzip layer per group of directory trees, written as an OCI layout and pushed with
skopeo to Debian's docker-registry on 127.0.0.1. Then, after one warm-up round that is shown but not counted
(it brings the registry's blobs into the page cache for both), ``--runs`` rounds follow; in each, each runtime
is started fresh (empty root, so nothing is cached) and one ``PullImage`` is timed through the same grpcio
client: download, verification, storage and unpacking. Dirty pages are written back (``sync``) before each
run, and the runs' directories are only deleted at the end, so no run pays for the deletions of another. The
table shows every run, the medians and crirt's median divided by containerd's. Both runtimes must report the
same image id and size.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gzip
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer import compile_stubs, containerd, crirt

LAYER_TREES = [
    ["/usr/bin/busybox"],
    ["/usr/lib/python3.11"],
    ["/usr/include"],
    ["/usr/lib/gcc"],
    ["/usr/share/perl", "/usr/share/doc"],
    ["/usr/lib/x86_64-linux-gnu/perl", "/usr/lib/x86_64-linux-gnu/gconv"],
    ["/usr/libexec", "/usr/lib/python3/dist-packages", "/usr/share/i18n"],
]
"""Directory trees (those that exist on this machine), one layer each, in order."""


def _layer(trees: list[str], out: Path) -> tuple[str, str, int]:
    """Tar and gzip ``trees`` into ``out``; returns (blob digest, diff id, blob size). Runs in a subprocess."""
    raw = out.with_suffix(".tar")
    with tarfile.open(raw, "w", format=tarfile.PAX_FORMAT) as tar:
        for tree in trees:
            if os.path.exists(tree):
                tar.add(tree, arcname=tree.lstrip("/"))
    diff_id = hashlib.sha256(raw.read_bytes()).hexdigest()
    with raw.open("rb") as source, out.open("wb") as sink, \
            gzip.GzipFile(fileobj=sink, mode="wb", compresslevel=6, mtime=0) as target:
        while chunk := source.read(1 << 20):
            target.write(chunk)
    raw.unlink()
    data = out.read_bytes()
    return "sha256:" + hashlib.sha256(data).hexdigest(), "sha256:" + diff_id, len(data)


def build_image(layout: Path) -> int:
    """Write the OCI layout with tag ``bench``; returns the compressed size of its layers."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    with concurrent.futures.ProcessPoolExecutor() as pool:
        results = list(pool.map(_layer, LAYER_TREES, [layout / f"layer{i}.gz" for i in range(len(LAYER_TREES))]))
    layers = []
    for i, (digest, _, size) in enumerate(results):
        (layout / f"layer{i}.gz").rename(blobs / digest[7:])
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest, "size": size})

    def blob(document: dict[str, object], media_type: str) -> dict[str, object]:
        data = json.dumps(document).encode()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        (blobs / digest[7:]).write_bytes(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    config = blob({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/usr/bin/busybox", "sh"]},
                   "rootfs": {"type": "layers", "diff_ids": [diff for _, diff, _ in results]}},
                  "application/vnd.oci.image.config.v1+json")
    manifest = blob({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                     "config": config, "layers": layers}, "application/vnd.oci.image.manifest.v1+json")
    manifest["annotations"] = {"org.opencontainers.image.ref.name": "bench"}
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [manifest]}))
    return sum(size for _, _, size in results)


def start_registry(base: Path) -> tuple[subprocess.Popen[bytes], str]:
    base.mkdir(parents=True)
    (base / "config.yml").write_text(json.dumps({
        "version": 0.1, "log": {"level": "info", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(base / "data")}}, "http": {"addr": "127.0.0.1:0"}}))
    log = base / "registry.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(["docker-registry", "serve", str(base / "config.yml")], stdout=out,
                                stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if "listening on 127.0.0.1:" in line:
                return proc, line.split("listening on ")[1].split('"')[0].split()[0]
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"docker-registry did not start:\n{log.read_text()}")


def timed_pull(endpoint: str, api_pb2: object, api_pb2_grpc: object, image: str) -> tuple[float, object]:
    with grpc.insecure_channel(endpoint) as channel:
        images = api_pb2_grpc.ImageServiceStub(channel)  # type: ignore[attr-defined]
        start = time.perf_counter()
        reply = images.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=image)),  # type: ignore[attr-defined]
                                 timeout=600)
        elapsed = time.perf_counter() - start
        status = images.ImageStatus(api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=image)))  # type: ignore[attr-defined]
    assert status.image.id == reply.image_ref or reply.image_ref.endswith(status.image.id[7:]), (reply, status)
    return elapsed, status.image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=3, help="pulls per runtime (alternating)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="crirt-bench-pull-") as tmp:
        base = Path(tmp)
        api_pb2, api_pb2_grpc = compile_stubs(base / "stubs")
        print("building the image from this machine's files ...", flush=True)
        compressed = build_image(base / "layout")
        registry, host = start_registry(base / "registry")
        try:
            subprocess.run(["skopeo", "--insecure-policy", "copy", "--quiet", "--preserve-digests",
                            "--dest-tls-verify=false", f"oci:{base / 'layout'}:bench",
                            f"docker://{host}/bench/image:1"], check=True)
            image = f"{host}/bench/image:1"
            print(f"image {image}: {len(LAYER_TREES)} gzip layers, {compressed / 1e6:.1f} MB compressed")
            print(f"{'run':<4} {'runtime':<11} {'seconds':>8}")
            times: dict[str, list[float]] = {"crirt": [], "containerd": []}
            reported: dict[str, object] = {}
            for run in range(0, args.runs + 1):
                for name, runtime in (("crirt", crirt), ("containerd", containerd)):
                    subprocess.run(["sync"], check=True)
                    with runtime(base / f"{name}-{run}", [host]) as endpoint:
                        elapsed, reported[name] = timed_pull(endpoint, api_pb2, api_pb2_grpc, image)
                    if run:
                        times[name].append(elapsed)
                    print(f"{run or 'warm':<4} {name:<11} {elapsed:>8.2f}", flush=True)
        finally:
            registry.terminate()
            registry.wait(10)
        ours, theirs = reported["crirt"], reported["containerd"]
        assert ours.id == theirs.id, (ours.id, theirs.id)  # type: ignore[attr-defined]
        print(f"image id {ours.id[:19]}..., size crirt {ours.size} containerd {theirs.size}")  # type: ignore[attr-defined]
        median = {name: statistics.median(values) for name, values in times.items()}
        print(f"median crirt {median['crirt']:.2f}s, containerd {median['containerd']:.2f}s, "
              f"crirt/containerd {median['crirt'] / median['containerd']:.2f}")


if __name__ == "__main__":
    main()
