"""UpdateContainerResources on real runc containers: the cgroup changes, the status reports it, and a refused
update changes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from support.network import runc_shim_installed

from .conftest import ContainerEnv
from .test_walkthrough import code_of, create, pod, status

__all__ = ["pod"]

pytestmark = pytest.mark.skipif(not runc_shim_installed(), reason="the runc shim plugin is not installed")

MIB = 1 << 20
SLEEPER = "trap 'exit 0' TERM; /bin/busybox sleep 1000 & wait"


def memory_limit(env: ContainerEnv, container_id: str) -> int:
    """The memory limit the container's own cgroup enforces, read from inside it (v1 or v2)."""
    script = "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max"
    reply = env.runtime.ExecSync(env.pb.ExecSyncRequest(container_id=container_id, cmd=["sh", "-c", script],
                                                        timeout=10), timeout=20)
    assert reply.exit_code == 0, reply.stderr
    return int(reply.stdout)


def spec_of(env: ContainerEnv, container_id: str) -> dict:
    return json.loads((env.base / "state" / "containers" / container_id / "config.json").read_text())


def update(env: ContainerEnv, container_id: str, **fields: object) -> None:
    pb = env.pb
    env.runtime.UpdateContainerResources(pb.UpdateContainerResourcesRequest(
        container_id=container_id, linux=pb.LinuxContainerResources(**fields)), timeout=30)


def test_a_running_container_gets_the_new_limits(env: ContainerEnv, pod: tuple[str, Path]) -> None:
    sandbox_id, _ = pod
    pb = env.pb
    container_id = create(env, sandbox_id, "limited", SLEEPER)
    env.runtime.StartContainer(pb.StartContainerRequest(container_id=container_id), timeout=30)
    update(env, container_id, memory_limit_in_bytes=96 * MIB, cpu_shares=256)
    assert memory_limit(env, container_id) == 96 * MIB
    reported = status(env, container_id).resources.linux
    assert (reported.memory_limit_in_bytes, reported.cpu_shares) == (96 * MIB, 256)
    update(env, container_id, memory_limit_in_bytes=128 * MIB)  # cpu_shares 0: left as it is
    assert memory_limit(env, container_id) == 128 * MIB
    assert status(env, container_id).resources.linux.cpu_shares == 256
    assert spec_of(env, container_id)["linux"]["resources"]["memory"]["limit"] == 128 * MIB
    env.runtime.StopContainer(pb.StopContainerRequest(container_id=container_id, timeout=5), timeout=30)
    assert code_of(lambda: update(env, container_id, memory_limit_in_bytes=64 * MIB)) == \
        grpc.StatusCode.FAILED_PRECONDITION


def test_a_created_container_starts_with_the_updated_limits(env: ContainerEnv, pod: tuple[str, Path]) -> None:
    sandbox_id, _ = pod
    pb = env.pb
    container_id = create(env, sandbox_id, "later", SLEEPER)
    update(env, container_id, memory_limit_in_bytes=80 * MIB)
    env.runtime.StartContainer(pb.StartContainerRequest(container_id=container_id), timeout=30)
    assert memory_limit(env, container_id) == 80 * MIB
    env.runtime.StopContainer(pb.StopContainerRequest(container_id=container_id, timeout=5), timeout=30)


def test_refused_updates_change_nothing(env: ContainerEnv, pod: tuple[str, Path]) -> None:
    sandbox_id, _ = pod
    pb = env.pb
    container_id = create(env, sandbox_id, "refused", SLEEPER)
    env.runtime.StartContainer(pb.StartContainerRequest(container_id=container_id), timeout=30)
    update(env, container_id, memory_limit_in_bytes=64 * MIB)
    before = spec_of(env, container_id)
    with pytest.raises(grpc.RpcError) as bad_list:
        update(env, container_id, cpuset_cpus="zero")
    assert bad_list.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "cpuset_cpus" in bad_list.value.details()
    with pytest.raises(grpc.RpcError) as no_such_cpu:
        update(env, container_id, cpuset_cpus="4095", memory_limit_in_bytes=200 * MIB)  # runc refuses this CPU
    assert "cpuset.cpus" in no_such_cpu.value.details()  # runc's own words (status UNKNOWN, as containerd)
    assert spec_of(env, container_id) == before
    assert status(env, container_id).resources.linux.memory_limit_in_bytes == 64 * MIB
    assert memory_limit(env, container_id) == 64 * MIB
    assert code_of(lambda: update(env, "0" * 64, cpu_shares=2)) == grpc.StatusCode.NOT_FOUND
    env.runtime.StopContainer(pb.StopContainerRequest(container_id=container_id, timeout=5), timeout=30)
