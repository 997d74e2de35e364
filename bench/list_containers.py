"""ListContainers latency of crirt against a reference grpcio + protobuf server, at several container counts.

For each count N, N synthetic but realistic containers (ids, pod, metadata, image, kubernetes labels and
annotations) are served by two servers, each in its own process:

* crirt: the records are written to crirt's store before ``python -m crirt serve`` starts, so it lists them
  like any containers it created (grpclib front end, cached per-container encodings).
* reference: this script run as ``--reference-server SOCKET DATAFILE``, a ``grpc.aio`` server that holds the
  same records as pydantic objects and on every call builds the protobuf ``ListContainersResponse`` from
  them (C protobuf encoder), sorted newest first as crirt does. It ignores the request's filter (none is sent).

Both are measured with the same client: a sync grpcio channel on the unix socket and protobuf stubs compiled
from protos/runtime/v1/api.proto at run time. Each server's first response (the one that fills crirt's
encoding cache) is kept, then 20 warm-up calls and ``--calls`` sequential calls follow; the table shows the
median and 99th percentile latency and the call rate of that sequential loop, and the response size. The two
first responses must hold the same containers (equal protobuf messages, ordered by id), or the script fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
from google.protobuf.internal import api_implementation
from grpc_tools import protoc

from crirt.containers.queries import CONTAINERS
from crirt.model.common import ImageSpec
from crirt.model.container import Container, ContainerMetadata
from crirt.model.enums import ContainerState
from crirt.store import Store

ROOT = Path(__file__).resolve().parents[1]
WARMUP_CALLS = 20
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
IMAGES = ["docker.io/library/nginx:1.27.3", "registry.k8s.io/pause:3.10", "quay.io/prometheus/node-exporter:v1.8.2",
          "ghcr.io/example/api-server:2.14.0", "docker.io/library/redis:7.4.1"]


def compile_stubs(out: Path) -> tuple[ModuleType, ModuleType]:
    """The protobuf and grpcio modules of runtime.v1, generated into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    args = ["protoc", f"-I{ROOT / 'protos'}", f"--python_out={out}", f"--grpc_python_out={out}",
            "runtime/v1/api.proto"]
    if protoc.main(args) != 0:
        raise RuntimeError("grpcio-tools failed to compile protos/runtime/v1/api.proto")
    sys.path.insert(0, str(out))
    try:
        return importlib.import_module("runtime.v1.api_pb2"), importlib.import_module("runtime.v1.api_pb2_grpc")
    finally:
        sys.path.remove(str(out))


def make_containers(count: int) -> list[Container]:
    """``count`` running containers, two per pod, with the labels and annotations the kubelet sets."""
    rng = random.Random(count)
    created = 1_735_689_600_000_000_000
    pods = [(f"app-{p}-7d9f8c6b5-{rng.randbytes(3).hex()[:5]}", rng.randbytes(32).hex(),
             str(uuid.UUID(bytes=rng.randbytes(16), version=4)), f"team-{p % 17}") for p in range((count + 1) // 2)]
    containers = []
    for i in range(count):
        pod, pod_id, pod_uid, namespace = pods[i // 2]
        name = ("main", "sidecar")[i % 2]
        image = IMAGES[i % len(IMAGES)]
        image_ref = f"sha256:{rng.randbytes(32).hex()}"
        containers.append(Container(
            id=rng.randbytes(32).hex(),
            pod_sandbox_id=pod_id,
            metadata=ContainerMetadata(name=name, attempt=i % 3),
            image=ImageSpec(image=image, user_specified_image=image),
            image_ref=image_ref,
            image_id=image_ref,
            state=ContainerState.CONTAINER_RUNNING,
            created_at=created + i * 1_000_000_000 + rng.randrange(1_000_000),
            labels={
                "io.kubernetes.container.name": name,
                "io.kubernetes.pod.name": pod,
                "io.kubernetes.pod.namespace": namespace,
                "io.kubernetes.pod.uid": pod_uid,
                "io.cri-containerd.kind": "container",
            },
            annotations={
                "io.kubernetes.container.hash": rng.randbytes(4).hex(),
                "io.kubernetes.container.restartCount": str(i % 3),
                "io.kubernetes.container.terminationMessagePath": "/dev/termination-log",
            },
        ))
    return containers


def to_pb(api_pb2: ModuleType, c: Container) -> Any:
    """The protobuf Container message of one record."""
    metadata = image = None
    if c.metadata is not None:
        metadata = api_pb2.ContainerMetadata(name=c.metadata.name, attempt=c.metadata.attempt)
    if c.image is not None:
        image = api_pb2.ImageSpec(image=c.image.image, annotations=c.image.annotations,
                                  user_specified_image=c.image.user_specified_image,
                                  runtime_handler=c.image.runtime_handler, image_ref=c.image.image_ref)
    return api_pb2.Container(id=c.id, pod_sandbox_id=c.pod_sandbox_id, metadata=metadata, image=image,
                             image_ref=c.image_ref, state=int(c.state), created_at=c.created_at, labels=c.labels,
                             annotations=c.annotations, image_id=c.image_id)


def reference_server(socket: Path, datafile: Path) -> None:
    """Serve ListContainers on ``socket`` from the records in ``datafile``, encoding every response anew."""
    with tempfile.TemporaryDirectory(prefix="crirt-bench-stubs-") as stubs:
        api_pb2, api_pb2_grpc = compile_stubs(Path(stubs))
    records = [Container.model_validate(item) for item in json.loads(datafile.read_text())]

    class Runtime(api_pb2_grpc.RuntimeServiceServicer):
        async def ListContainers(self, request: Any, context: Any) -> Any:
            newest_first = sorted(records, key=lambda c: c.created_at, reverse=True)
            return api_pb2.ListContainersResponse(containers=[to_pb(api_pb2, c) for c in newest_first])

    async def serve() -> None:
        server = grpc.aio.server()
        api_pb2_grpc.add_RuntimeServiceServicer_to_server(Runtime(), server)
        server.add_insecure_port(f"unix://{socket}")
        await server.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.stop(None)

    asyncio.run(serve())


@contextlib.contextmanager
def server_process(argv: list[str], socket: Path, log: Path) -> Iterator[str]:
    """Start a server, yield its endpoint once it answers, and stop it with SIGTERM (SIGKILL if it hangs)."""
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    endpoint = f"unix://{socket}"
    try:
        deadline = time.monotonic() + 30
        while not socket.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{argv[1:4]} did not start:\n{log.read_text(errors='replace')}")
            time.sleep(0.05)
        with grpc.insecure_channel(endpoint) as channel:
            grpc.channel_ready_future(channel).result(timeout=max(deadline - time.monotonic(), 1))
        yield endpoint
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def crirt_argv(base: Path, containers: list[Container]) -> list[str]:
    """Fill crirt's store under ``base`` with ``containers``; the command that serves them."""
    store = Store(base / "root" / "crirt.db")
    try:
        store.table(CONTAINERS, Container).put_many([(c.id, c) for c in containers])
    finally:
        store.close()
    (base / "cni").mkdir()
    config = base / "config.toml"
    config.write_text(f'address = "unix://{base}/crirt.sock"\nroot = "{base}/root"\nstate = "{base}/state"\n'
                      f'log_level = "warning"\n[cni]\nconf_dir = "{base}/cni"\n')
    return [sys.executable, "-m", "crirt", "serve", "--config", str(config)]


def fetch(endpoint: str, api_pb2: ModuleType) -> bytes:
    """The raw bytes of one ListContainersResponse."""
    with grpc.insecure_channel(endpoint, options=CHANNEL_OPTIONS) as channel:
        call = channel.unary_unary("/runtime.v1.RuntimeService/ListContainers",
                                   request_serializer=api_pb2.ListContainersRequest.SerializeToString)
        return call(api_pb2.ListContainersRequest())


def measure(endpoint: str, api_pb2: ModuleType, api_pb2_grpc: ModuleType, calls: int) -> tuple[float, float, float]:
    """p50 and p99 latency in ms and calls per second of ``calls`` sequential ListContainers calls."""
    with grpc.insecure_channel(endpoint, options=CHANNEL_OPTIONS) as channel:
        stub = api_pb2_grpc.RuntimeServiceStub(channel)
        request = api_pb2.ListContainersRequest()
        for _ in range(WARMUP_CALLS):
            stub.ListContainers(request)
        latencies = []
        start = time.perf_counter()
        for _ in range(calls):
            t0 = time.perf_counter()
            stub.ListContainers(request)
            latencies.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - start
    p99 = statistics.quantiles(latencies, n=100)[98]
    return statistics.median(latencies) * 1e3, p99 * 1e3, calls / elapsed


def by_id(api_pb2: ModuleType, data: bytes) -> list[Any]:
    """The containers of an encoded response, ordered by id."""
    return sorted(api_pb2.ListContainersResponse.FromString(data).containers, key=lambda c: c.id)


def bench(counts: list[int], calls: int) -> None:
    with tempfile.TemporaryDirectory(prefix="crirt-bench-") as tmp:
        api_pb2, api_pb2_grpc = compile_stubs(Path(tmp) / "stubs")
        print(f"protobuf backend: {api_implementation.Type()}, measured calls per series: {calls}")
        print(f"{'containers':<11} {'server':<10} {'p50_ms':>8} {'p99_ms':>8} {'calls/s':>8} {'bytes':>9}")
        p50s: dict[tuple[int, str], float] = {}
        for count in counts:
            base = Path(tmp) / str(count)
            (base / "crirt").mkdir(parents=True)
            containers = make_containers(count)
            datafile = base / "containers.json"
            datafile.write_text(json.dumps([c.model_dump(mode="json") for c in containers]))
            servers = {
                "crirt": (crirt_argv(base / "crirt", containers), base / "crirt" / "crirt.sock"),
                "reference": ([sys.executable, __file__, "--reference-server", str(base / "ref.sock"), str(datafile)],
                              base / "ref.sock"),
            }
            responses: dict[str, bytes] = {}
            for name, (argv, socket) in servers.items():
                with server_process(argv, socket, base / f"{name}.log") as endpoint:
                    responses[name] = fetch(endpoint, api_pb2)
                    p50, p99, rate = measure(endpoint, api_pb2, api_pb2_grpc, calls)
                p50s[count, name] = p50
                print(f"{count:<11} {name:<10} {p50:>8.2f} {p99:>8.2f} {rate:>8.0f} {len(responses[name]):>9}",
                      flush=True)
            crirt_items, reference_items = by_id(api_pb2, responses["crirt"]), by_id(api_pb2, responses["reference"])
            assert len(crirt_items) == len(reference_items) == count, (len(crirt_items), len(reference_items))
            assert crirt_items == reference_items, f"crirt and the reference list different containers at {count}"
        if 1000 in counts:
            ratio = p50s[1000, "crirt"] / p50s[1000, "reference"]
            print(f"p50 crirt/reference at 1000 containers: {ratio:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--counts", default="100,1000,5000", help="comma-separated container counts")
    parser.add_argument("--calls", type=int, default=300, help="measured calls per server and count")
    parser.add_argument("--reference-server", nargs=2, metavar=("SOCKET", "DATAFILE"), type=Path,
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reference_server:
        reference_server(*args.reference_server)
    else:
        bench([int(n) for n in args.counts.split(",")], args.calls)


if __name__ == "__main__":
    main()
