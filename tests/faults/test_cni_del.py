"""A CNI plugin that hangs or fails on DEL: the pod network's portmap is run through a wrapper script whose DEL
first waits for a lock the test may hold (a hang) and fails while a flag file exists. StopPodSandbox must
return within the plugin timeout naming the problem, the daemon must serve other pods meanwhile, and once the
fault is gone a retried stop and remove release the address, the namespace and everything else."""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import grpc
import pytest
from support.network import CNI_BIN, BridgeNetwork, PodEnv, start_pod_env

from .conftest import executable_script, held, traces

PLUGIN_TIMEOUT = 2.0
FAULTS = {"hang": f"timed out on DEL after {PLUGIN_TIMEOUT:g}s", "fail": "DEL refused: injected fault"}
"""What the failed StopPodSandbox must say, by fault."""


def faulty_portmap(bin_dir: Path, lock: Path, flag: Path) -> Path:
    """``fault-portmap``: portmap, except that DEL first takes ``lock`` (flock) and fails while ``flag`` exists."""
    return executable_script(bin_dir / "fault-portmap", (
        "#!/bin/sh\n"
        'if [ "$CNI_COMMAND" = DEL ]; then\n'
        f"  flock {lock} true\n"
        f"  if [ -e {flag} ]; then\n"
        "    echo '{\"cniVersion\": \"1.0.0\", \"code\": 7, \"msg\": \"DEL refused: injected fault\"}'\n"
        "    exit 1\n"
        "  fi\n"
        "fi\n"
        f"exec {CNI_BIN / 'portmap'}\n"))


@contextlib.contextmanager
def injected(fault: str, lock: Path, flag: Path) -> Iterator[None]:
    """While inside: DEL hangs (``hang``: the lock is held) or fails (``fail``: the flag exists)."""
    if fault == "hang":
        with held(lock):
            yield
        return
    flag.touch()
    try:
        yield
    finally:
        flag.unlink()



@pytest.mark.parametrize("fault", ["hang", "fail"])
def test_a_del_that_hangs_or_fails_is_reported_and_retried(tmp_path: Path, pb: ModuleType, fault: str) -> None:
    base, lock, flag = tmp_path / "d", tmp_path / "del.lock", tmp_path / "refuse-del"
    faulty_portmap(tmp_path / "bin", lock, flag)
    net = BridgeNetwork(base / "cni")
    net.write([{"type": "fault-portmap", "capabilities": {"portMappings": True}}], portmap=False)
    cni = f'bin_dirs = ["{tmp_path / "bin"}", "{CNI_BIN}"]\nplugin_timeout = {PLUGIN_TIMEOUT}\n'
    daemon, _ = start_pod_env(base, pb, net, cni)
    try:
        with daemon.channel() as channel:
            pods = PodEnv(daemon, net, base, pb.grpc.RuntimeServiceStub(channel), pb)
            before = pods.snapshot()
            port = pb.PortMapping(container_port=80, host_port=20000 + secrets.randbelow(20000))
            sandbox = pods.run(pods.config("del-fault", port_mappings=[port]))
            netns = pods.netns(sandbox)
            assert pods.snapshot()["allocations"] != before["allocations"]
            with injected(fault, lock, flag):
                started = time.monotonic()
                stopping = pods.stub.StopPodSandbox.future(pb.StopPodSandboxRequest(pod_sandbox_id=sandbox),
                                                           timeout=PLUGIN_TIMEOUT + 8)
                bystander = pods.run(pods.config("bystander"), timeout=10)  # ADD is not affected
                assert {s.id for s in pods.stub.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=2).items} == \
                    {sandbox, bystander}
                with pytest.raises(grpc.RpcError) as info:
                    stopping.result()
                elapsed = time.monotonic() - started
            assert netns in pods.snapshot()["mounts"]  # kept for the retried DEL

            pods.stop(sandbox)  # the fault is gone: the retry finishes the teardown
            pods.remove(sandbox)
            assert traces(base, net, [sandbox]) == {}
            pods.stop(bystander)
            pods.remove(bystander)
            assert pods.snapshot() == before
            assert info.value.code() != grpc.StatusCode.DEADLINE_EXCEEDED, f"no answer within {elapsed:.1f}s"
            assert "'fault-portmap'" in info.value.details() and FAULTS[fault] in info.value.details()
            assert elapsed < PLUGIN_TIMEOUT + 3
    finally:
        daemon.stop()
        net.cleanup(base / "state")
