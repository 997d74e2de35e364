"""A crirt daemon on a private bridge network (own conf dir, bridge, subnet, network name) for pod tests."""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType

import pytest
from support.network import BridgeNetwork, PodEnv, start_pod_env


@pytest.fixture(scope="module")
def pods(tmp_path_factory: pytest.TempPathFactory, pb: ModuleType) -> Iterator[PodEnv]:
    """One daemon and network per test module; each test removes its pods, the module checks for leaks."""
    base = tmp_path_factory.mktemp("pods") / "d"
    net = BridgeNetwork(base / "cni")
    daemon, _ = start_pod_env(base, pb, net)
    try:
        with daemon.channel() as channel:
            env = PodEnv(daemon, net, base, pb.grpc.RuntimeServiceStub(channel), pb)
            baseline = env.snapshot()
            yield env
            env.remove_all()
            assert env.snapshot() == baseline
    finally:
        daemon.stop()
        net.cleanup(base / "state")
