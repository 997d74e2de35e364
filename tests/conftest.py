"""Shared fixtures: an independent grpcio client generated from protos/, and a real crirt daemon."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from support.daemon import Daemon, start_daemon

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def pb(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    """protobuf + grpcio stubs for runtime.v1, generated from protos/ at test time (an independent stack)."""
    from grpc_tools import protoc

    out = tmp_path_factory.mktemp("grpcio_stubs")
    args = ["protoc", f"-I{ROOT / 'protos'}", f"--python_out={out}", f"--grpc_python_out={out}",
            "runtime/v1/api.proto"]
    assert protoc.main(args) == 0, "grpcio-tools failed to compile protos/runtime/v1/api.proto"
    sys.path.insert(0, str(out))
    try:
        api_pb2 = importlib.import_module("runtime.v1.api_pb2")
        api_pb2_grpc = importlib.import_module("runtime.v1.api_pb2_grpc")
    finally:
        sys.path.remove(str(out))
    module = ModuleType("pb")
    module.__dict__.update(api_pb2.__dict__)
    module.grpc = api_pb2_grpc  # type: ignore[attr-defined]
    return module


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    """A fresh crirt on default settings (apart from its private directories)."""
    d = start_daemon(tmp_path / "crirt")
    yield d
    d.stop()


@pytest.fixture
def runtime_stub(daemon: Daemon, pb: ModuleType) -> Iterator[object]:
    with daemon.channel() as channel:
        yield pb.grpc.RuntimeServiceStub(channel)
