"""crirt killed with SIGKILL at several points of a container's life, then restarted on the same state.

Containers keep running and logging while crirt is down; afterwards they are controllable again, exits that
happened meanwhile are reported with conmon's exit code and time, and whatever a crash left half-made is removed
(no bundle, rootfs or conmon without a record).
"""

from __future__ import annotations

import re
import signal
import sys
import time
from pathlib import Path

import grpc
import pytest
from support.containers import conmons_under
from support.daemon import start_daemon
from support.network import runc_shim_installed, wait_until

from .conftest import ContainerEnv
from .test_walkthrough import code_of, create, pod, status

__all__ = ["pod"]  # the fixture, shared with the walkthrough

pytestmark = pytest.mark.skipif(not runc_shim_installed(), reason="the runc shim plugin is not installed")

CRASH_SERVER = Path(__file__).resolve().parents[2] / "support" / "crash_server.py"
COUNTER = "i=0; while true; do echo line $i; i=$((i+1)); /bin/busybox sleep 0.1; done"


def kill_daemon(env: ContainerEnv) -> None:
    env.daemon.proc.send_signal(signal.SIGKILL)
    env.daemon.proc.wait(10)


def restart(env: ContainerEnv, crash_point: str = "") -> None:
    """Start a new daemon on the same config (the old one must be dead); with ``crash_point`` it dies there."""
    assert env.daemon.proc.poll() is not None
    argv = [sys.executable, str(CRASH_SERVER), crash_point] if crash_point else None
    env.daemon = start_daemon(env.base, cni_config="default_network = false\n", registries="", argv=argv)


def leftovers(env: ContainerEnv) -> dict[str, list[str]]:
    """Bundles, root filesystems and conmon monitors of containers crirt has no record of."""
    listed = {c.id for c in env.runtime.ListContainers(env.pb.ListContainersRequest(), timeout=10).containers}
    bundles = [p.name for p in (env.base / "state" / "containers").glob("*") if p.name not in listed]
    rootfs = [p.name for p in (env.base / "root" / "rootfs").glob("*") if p.name not in listed]
    conmons = [cid for cid in conmons_under(env.base).values() if cid not in listed]
    return {key: value for key, value in (("bundles", bundles), ("rootfs", rootfs), ("conmons", conmons))
            if value}


def log_numbers(path: Path) -> list[int]:
    return [int(m.group(1)) for m in re.finditer(r" stdout F line (\d+)$", path.read_text(), re.M)]


def test_a_running_container_survives_and_stays_controllable(env: ContainerEnv, pod: tuple[str, Path]) -> None:
    sandbox_id, logs = pod
    pb = env.pb
    container_id = create(env, sandbox_id, "counter", COUNTER)
    env.runtime.StartContainer(pb.StartContainerRequest(container_id=container_id), timeout=30)
    started_at = status(env, container_id).started_at
    log_path = logs / "counter" / "0.log"
    wait_until(lambda: len(log_numbers(log_path)) >= 3, 10)
    kill_daemon(env)
    written_while_down = len(log_numbers(log_path))
    time.sleep(1.0)
    assert len(log_numbers(log_path)) > written_while_down  # conmon goes on logging without crirt
    restart(env)
    now = status(env, container_id)
    assert now.state == pb.CONTAINER_RUNNING and now.started_at == started_at
    reply = env.runtime.ExecSync(pb.ExecSyncRequest(container_id=container_id, cmd=["echo", "still here"],
                                                    timeout=10), timeout=20)
    assert (reply.exit_code, reply.stdout) == (0, b"still here\n")
    stats = env.runtime.ContainerStats(pb.ContainerStatsRequest(container_id=container_id), timeout=10).stats
    assert stats.memory.working_set_bytes.value > 0
    rotated = log_path.with_name("0.log.1")
    log_path.rename(rotated)  # the kubelet's rotation, then ReopenContainerLog through conmon's control fifo
    env.runtime.ReopenContainerLog(pb.ReopenContainerLogRequest(container_id=container_id), timeout=10)
    wait_until(lambda: log_path.exists() and len(log_numbers(log_path)) >= 2, 10)
    env.runtime.StopContainer(pb.StopContainerRequest(container_id=container_id, timeout=5), timeout=30)
    numbers = log_numbers(rotated) + log_numbers(log_path)
    assert numbers == list(range(len(numbers)))  # one unbroken sequence across the crash and the rotation
    assert status(env, container_id).state == pb.CONTAINER_EXITED
    assert conmons_under(env.base) == {}


def test_an_exit_while_crirt_is_down_is_reported_with_its_code_and_time(env: ContainerEnv,
                                                                        pod: tuple[str, Path]) -> None:
    sandbox_id, _ = pod
    pb = env.pb
    container_id = create(env, sandbox_id, "short", "/bin/busybox sleep 1; exit 7")
    env.runtime.StartContainer(pb.StartContainerRequest(container_id=container_id), timeout=30)
    kill_daemon(env)
    killed = time.time_ns()
    time.sleep(2.5)  # the container ends while nobody watches
    restarted = time.time_ns()
    restart(env)
    wait_until(lambda: status(env, container_id).state == pb.CONTAINER_EXITED, 10)
    final = status(env, container_id)
    assert (final.exit_code, final.reason) == (7, "Error")
    assert killed < final.finished_at < restarted  # conmon's time of the exit, not the time crirt noticed


@pytest.mark.parametrize("point", ["rootfs", "create"])
def test_a_crash_during_create_leaves_nothing_and_frees_the_name(env: ContainerEnv, pod: tuple[str, Path],
                                                                 point: str) -> None:
    sandbox_id, _ = pod
    kill_daemon(env)
    restart(env, crash_point=point)
    assert code_of(lambda: create(env, sandbox_id, "doomed", COUNTER)) == grpc.StatusCode.UNAVAILABLE
    env.daemon.proc.wait(10)
    assert env.daemon.proc.returncode == -signal.SIGKILL
    if point == "create":
        assert len(conmons_under(env.base)) == 1  # the half-made container's monitor outlived crirt
    restart(env)
    assert leftovers(env) == {}
    container_id = create(env, sandbox_id, "doomed", COUNTER)  # the name is free again
    env.runtime.RemoveContainer(env.pb.RemoveContainerRequest(container_id=container_id), timeout=30)


def test_a_crash_right_after_start_is_recorded_as_running(env: ContainerEnv, pod: tuple[str, Path]) -> None:
    sandbox_id, _ = pod
    pb = env.pb
    container_id = create(env, sandbox_id, "started", COUNTER)
    kill_daemon(env)
    restart(env, crash_point="start")
    assert code_of(lambda: env.runtime.StartContainer(pb.StartContainerRequest(container_id=container_id),
                                                      timeout=30)) == grpc.StatusCode.UNAVAILABLE
    env.daemon.proc.wait(10)
    restart(env)
    now = status(env, container_id)
    assert now.state == pb.CONTAINER_RUNNING and now.started_at > 0
    env.runtime.StopContainer(pb.StopContainerRequest(container_id=container_id, timeout=0), timeout=30)
    final = status(env, container_id)
    assert final.state == pb.CONTAINER_EXITED and final.exit_code == 128 + signal.SIGKILL


def test_a_crash_during_remove_is_finished_by_removing_again(env: ContainerEnv, pod: tuple[str, Path]) -> None:
    sandbox_id, _ = pod
    pb = env.pb
    container_id = create(env, sandbox_id, "removed", COUNTER)
    env.runtime.StartContainer(pb.StartContainerRequest(container_id=container_id), timeout=30)
    kill_daemon(env)
    restart(env, crash_point="delete")
    assert code_of(lambda: env.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=container_id),
                                                       timeout=30)) == grpc.StatusCode.UNAVAILABLE
    env.daemon.proc.wait(10)
    restart(env)
    assert status(env, container_id).state == pb.CONTAINER_EXITED  # the task is gone, the record is not
    env.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=container_id), timeout=30)
    assert code_of(lambda: status(env, container_id)) == grpc.StatusCode.NOT_FOUND
    assert leftovers(env) == {}
