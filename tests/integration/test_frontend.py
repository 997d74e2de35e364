"""Front-end hygiene on a real daemon: malformed input, size limits, deadlines, crashes, drain, health, reflection."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import grpc
import pytest
from support.daemon import Daemon, start_daemon

from crirt.containers.queries import CONTAINERS
from crirt.model.container import Container, ContainerMetadata
from crirt.model.enums import ContainerState
from crirt.store import Store

INSTRUMENTED = Path(__file__).resolve().parents[1] / "support" / "instrumented_server.py"
MIB = 1024 * 1024


def raw_call(daemon: Daemon, path: str, body: bytes, **options: int) -> bytes:
    """Send ``body`` as-is to ``path`` (no client-side serialization)."""
    with daemon.channel(**options) as channel:
        return channel.unary_unary(path)(body, timeout=10)


def status_of(daemon: Daemon, path: str, body: bytes, **options: int) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        raw_call(daemon, path, body, **options)
    return info.value


@pytest.fixture
def instrumented(tmp_path: Path) -> Iterator[tuple[Daemon, Path]]:
    markers = tmp_path / "markers"
    markers.mkdir()
    d = start_daemon(tmp_path / "d", "shutdown_grace_period = 3.0",
                     argv=[sys.executable, str(INSTRUMENTED), str(markers)])
    yield d, markers
    d.stop()


@pytest.mark.parametrize(("body", "field", "reason"), [
    (b"\x0a\x09ab", "container_id", "runs past the end"),
    (b"\x0a\x02\xff\xfe", "container_id", "invalid UTF-8"),
    (b"\x08\xff", "container_id", "truncated varint"),  # field 1 is a string, sent as a broken varint
    (b"\x0b", "<unknown field 1>", "wire type 3"),
    (b"\x00", "message", "field number 0"),
])
def test_malformed_bodies_get_invalid_argument_naming_the_field(daemon: Daemon, body: bytes, field: str,
                                                                reason: str) -> None:
    error = status_of(daemon, "/runtime.v1.RuntimeService/ContainerStatus", body)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("ContainerStatus:")
    assert reason in error.details()
    if field != "<unknown field 1>":
        assert field in error.details()


def test_missing_required_id_names_the_field(daemon: Daemon) -> None:
    error = status_of(daemon, "/runtime.v1.RuntimeService/ContainerStatus", b"")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "container_id" in error.details()


def test_unknown_enum_value_is_rejected(daemon: Daemon, pb: ModuleType) -> None:
    request = pb.ListContainersRequest(filter=pb.ContainerFilter(state=pb.ContainerStateValue(state=42)))
    error = status_of(daemon, "/runtime.v1.RuntimeService/ListContainers", request.SerializeToString())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "filter.state.state" in error.details()


def test_request_over_16_mib_is_refused(daemon: Daemon, pb: ModuleType) -> None:
    body = pb.VersionRequest(version="x" * (16 * MIB + 1)).SerializeToString()
    error = status_of(daemon, "/runtime.v1.RuntimeService/Version", body)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "exceeds the 16777216-byte limit" in error.details()
    # A request just under the limit is read (and then rejected for its content, not its size).
    ok = pb.VersionRequest(version="x" * 1024).SerializeToString()
    assert pb.VersionResponse.FromString(raw_call(daemon, "/runtime.v1.RuntimeService/Version", ok)).runtime_name


def _id(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def _fill_store(root: Path, count: int, annotation_bytes: int) -> None:
    store = Store(root / "crirt.db")
    big = "a" * annotation_bytes
    store.table(CONTAINERS, Container).put_many([
        (_id(i), Container(id=_id(i), pod_sandbox_id="p" * 64, metadata=ContainerMetadata(name=f"c{i}"),
                                state=ContainerState.CONTAINER_RUNNING, created_at=i, annotations={"big": big}))
        for i in range(count)
    ])
    store.close()


def test_response_over_16_mib_points_to_the_streaming_rpc(tmp_path: Path, pb: ModuleType) -> None:
    base = tmp_path / "d"
    _fill_store(base / "root", 2200, 8 * 1024)  # about 18 MiB of containers
    daemon = start_daemon(base)
    try:
        big_client = {"grpc.max_receive_message_length": 64 * MIB}
        error = status_of(daemon, "/runtime.v1.RuntimeService/ListContainers", b"", **big_client)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "StreamContainers" in error.details() and "16777216" in error.details()
        with daemon.channel() as channel:
            stub = pb.grpc.RuntimeServiceStub(channel)
            batches = list(stub.StreamContainers(pb.StreamContainersRequest(), timeout=30))
            filtered = stub.ListContainers(pb.ListContainersRequest(
                filter=pb.ContainerFilter(id=_id(7)[:20])), timeout=10)
        assert sum(len(b.containers) for b in batches) == 2200 and len(batches) > 1
        assert [c.metadata.name for c in filtered.containers] == ["c7"]
    finally:
        daemon.stop()


def test_deadline_cancels_the_work(instrumented: tuple[Daemon, Path], pb: ModuleType) -> None:
    daemon, markers = instrumented
    with daemon.channel() as channel:
        stub = pb.grpc.RuntimeServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Version(pb.VersionRequest(version="sleep:30"), timeout=0.5)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        deadline = time.monotonic() + 5
        while not (markers / "cancelled").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (markers / "cancelled").exists(), "the handler kept running after the deadline"
        assert not (markers / "completed").exists()
        assert stub.Version(pb.VersionRequest()).runtime_name == "crirt"


def test_handler_crash_is_internal_and_the_daemon_stays_up(instrumented: tuple[Daemon, Path],
                                                           pb: ModuleType) -> None:
    daemon, _ = instrumented
    with daemon.channel() as channel:
        stub = pb.grpc.RuntimeServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Version(pb.VersionRequest(version="crash"), timeout=5)
        assert info.value.code() == grpc.StatusCode.INTERNAL
        assert "Version" in info.value.details() and "instrumented crash" in info.value.details()
        assert stub.Version(pb.VersionRequest()).runtime_name == "crirt"
    assert "Traceback" in daemon.log_text()


def test_sigterm_drains_an_in_flight_call(instrumented: tuple[Daemon, Path], pb: ModuleType) -> None:
    daemon, markers = instrumented
    outcome: dict[str, object] = {}

    def slow_call() -> None:
        with daemon.channel() as channel:
            try:
                outcome["reply"] = pb.grpc.RuntimeServiceStub(channel).Version(
                    pb.VersionRequest(version="sleep:1.5"), timeout=10)
            except grpc.RpcError as exc:
                outcome["error"] = exc

    caller = threading.Thread(target=slow_call)
    caller.start()
    time.sleep(0.5)
    daemon.proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    with daemon.channel() as channel:  # while draining, new calls are turned away
        with pytest.raises(grpc.RpcError) as info:
            pb.grpc.RuntimeServiceStub(channel).Version(pb.VersionRequest(), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    caller.join(15)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["reply"].runtime_name == "crirt"
    assert daemon.proc.wait(10) == 0
    assert (markers / "completed").exists()
    assert not daemon.socket.exists()


def test_grace_period_bounds_the_drain(instrumented: tuple[Daemon, Path], pb: ModuleType) -> None:
    daemon, markers = instrumented  # configured with shutdown_grace_period = 3
    errors: list[grpc.RpcError] = []

    def stuck_call() -> None:
        with daemon.channel() as channel:
            try:
                pb.grpc.RuntimeServiceStub(channel).Version(pb.VersionRequest(version="sleep:60"), timeout=30)
            except grpc.RpcError as exc:
                errors.append(exc)

    caller = threading.Thread(target=stuck_call)
    caller.start()
    time.sleep(0.5)
    started = time.monotonic()
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(15) == 0
    assert 2.5 < time.monotonic() - started < 10
    caller.join(10)
    assert errors and errors[0].code() != grpc.StatusCode.OK
    assert (markers / "cancelled").exists()


HEALTH_CLIENT = """
import sys
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
with grpc.insecure_channel(sys.argv[1]) as channel:
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", "runtime.v1.RuntimeService", "runtime.v1.ImageService"):
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
"""

REFLECTION_CLIENT = """
import sys
import grpc
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
with grpc.insecure_channel(sys.argv[1]) as channel:
    database = ProtoReflectionDescriptorDatabase(channel)
    services = set(database.get_services())
    assert {"runtime.v1.RuntimeService", "runtime.v1.ImageService", "grpc.health.v1.Health"} <= services, services
    pool = DescriptorPool(database)
    runtime = pool.FindServiceByName("runtime.v1.RuntimeService")
    image = pool.FindServiceByName("runtime.v1.ImageService")
    assert len(runtime.methods) + len(image.methods) == 41
    assert pool.FindMessageTypeByName("runtime.v1.ContainerConfig").fields_by_name["CDI_devices"].number == 17
"""


def run_client(script: str, daemon: Daemon) -> None:
    """Run a grpcio client in a process of its own: its generated health and reflection modules cannot share
    protobuf's default descriptor pool with grpclib's, which this test process may have loaded (crirt.server)."""
    done = subprocess.run([sys.executable, "-c", script, daemon.endpoint], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr


def test_health_service(daemon: Daemon) -> None:
    run_client(HEALTH_CLIENT, daemon)


def test_reflection_lists_and_describes_the_cri_services(daemon: Daemon) -> None:
    run_client(REFLECTION_CLIENT, daemon)
