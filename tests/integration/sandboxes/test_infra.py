"""Pods with a shared PID namespace (pid: POD, crictl's default) get catatonit as an infra container through
the runc shim; the rest of the pod is the same as without one."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from types import ModuleType

import grpc
import pytest
from support.network import NEEDS_RUNC_SHIM_REASON, PodEnv, runc_shim_installed, start_pod_env, wait_until

needs_runc_shim = pytest.mark.skipif(not runc_shim_installed(), reason=NEEDS_RUNC_SHIM_REASON)


def _is_catatonit(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "catatonit"
    except OSError:  # gone (or reaped while we read)
        return False


def _ns(pid: int, kind: str) -> int:
    return os.stat(f"/proc/{pid}/ns/{kind}").st_ino


@needs_runc_shim
def test_pid_pod_runs_catatonit_in_the_pods_namespaces(pods: PodEnv) -> None:
    pb = pods.pb
    before = pods.snapshot()
    config = pods.config(pid="POD")
    sandbox_id = pods.run(config)
    status, info = pods.status(sandbox_id)
    assert status.state == pb.SANDBOX_READY and status.linux.namespaces.options.pid == pb.POD
    infra = info["infraContainer"]
    assert infra["status"] == "running" and infra["pid"] > 0
    pid = infra["pid"]
    assert Path(f"/proc/{pid}/comm").read_text().strip() == "catatonit"
    for kind in ("net", "ipc", "uts"):
        assert _ns(pid, kind) == os.stat(info["namespaces"][kind]).st_ino, kind
    assert _ns(pid, "pid") != _ns(os.getpid(), "pid")
    assert int(Path(f"/proc/{pid}/oom_score_adj").read_text()) >= int(Path("/proc/self/oom_score_adj").read_text())
    pods.stop(sandbox_id)
    assert not _is_catatonit(pid)
    assert pods.status(sandbox_id)[1]["infraContainer"]["status"] in ("missing", "stopped")
    pods.stop(sandbox_id)
    pods.remove(sandbox_id)
    pods.remove(sandbox_id)
    assert pods.snapshot() == before


@needs_runc_shim
def test_crictl_style_empty_linux_section_means_pid_pod(pods: PodEnv) -> None:
    pb = pods.pb
    config = pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name="crictl", namespace="crirt-test", uid="c1"),
                                 linux=pb.LinuxPodSandboxConfig())
    sandbox_id = pods.run(config)
    info = pods.status(sandbox_id)[1]
    assert info["infraContainer"]["status"] == "running"
    pods.remove(sandbox_id)  # remove without stop kills it too
    assert not _is_catatonit(info["infraContainer"]["pid"])


@needs_runc_shim
def test_host_network_pid_pod(pods: PodEnv) -> None:
    sandbox_id = pods.run(pods.config(pid="POD", network="NODE", ipc="NODE"))
    pid = pods.status(sandbox_id)[1]["infraContainer"]["pid"]
    assert _ns(pid, "net") == _ns(os.getpid(), "net") and _ns(pid, "pid") != _ns(os.getpid(), "pid")
    pods.remove(sandbox_id)


@needs_runc_shim
def test_restart_keeps_ready_pods_and_stops_pods_whose_infra_died(tmp_path: Path, pb: ModuleType) -> None:
    base = tmp_path / "d"
    daemon, net = start_pod_env(base, pb)
    try:
        with daemon.channel() as channel:
            env = PodEnv(daemon, net, base, pb.grpc.RuntimeServiceStub(channel), pb)
            before = env.snapshot()
            keep, lose = env.run(env.config(pid="POD")), env.run(env.config(pid="POD"))
            victim = env.status(lose)[1]["infraContainer"]["pid"]
        daemon.stop()
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: not _is_catatonit(victim))
        daemon, _ = start_pod_env(base, pb, net)
        with daemon.channel() as channel:
            env = PodEnv(daemon, net, base, pb.grpc.RuntimeServiceStub(channel), pb)
            assert env.status(keep)[0].state == pb.SANDBOX_READY
            status = env.status(lose)[0]
            assert status.state == pb.SANDBOX_NOTREADY  # its network was released on start
            assert status.network.ip not in env.snapshot()["allocations"]
            env.remove_all()
            assert env.snapshot() == before
    finally:
        daemon.stop()
        net.cleanup(base / "state")


@pytest.mark.parametrize("pid", ["POD", "CONTAINER"])
def test_an_unavailable_handler_is_failed_precondition(tmp_path: Path, pb: ModuleType, pid: str) -> None:
    """Whether or not the pod needs an infra container: its containers could never run (as containerd)."""
    base = tmp_path / "d"
    daemon, net = start_pod_env(base, pb, extra='[runtimes.broken]\nshim = "no-such-plugin"\n')
    try:
        with daemon.channel() as channel:
            env = PodEnv(daemon, net, base, pb.grpc.RuntimeServiceStub(channel), pb)
            before = env.snapshot()
            with pytest.raises(grpc.RpcError) as info:
                env.run(env.config(pid=pid), handler="broken")
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "'broken'" in info.value.details() and "no-such-plugin" in info.value.details()
            assert env.snapshot() == before
    finally:
        daemon.stop()
        net.cleanup(base / "state")


def test_systemd_cgroup_driver_wants_slices(tmp_path: Path, pb: ModuleType) -> None:
    base = tmp_path / "d"
    daemon, net = start_pod_env(base, pb, extra='cgroup_driver = "systemd"')
    try:
        with daemon.channel() as channel:
            env = PodEnv(daemon, net, base, pb.grpc.RuntimeServiceStub(channel), pb)
            before = env.snapshot()
            with pytest.raises(grpc.RpcError) as info:
                env.run(env.config(linux=pb.LinuxPodSandboxConfig(cgroup_parent="/kubepods/pod1")))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "systemd slice" in info.value.details()
            sandbox_id = env.run(env.config(linux=pb.LinuxPodSandboxConfig(cgroup_parent="kubepods-pod1.slice")))
            info_ = env.status(sandbox_id)[1]
            assert (info_["cgroupDriver"], info_["cgroupParent"]) == ("systemd", "kubepods-pod1.slice")
            assert info_["cgroupVersion"] in ("v1", "v1 (hybrid)", "v2")
            env.remove(sandbox_id)
            if runc_shim_installed() and not Path("/run/systemd/system").is_dir():
                with pytest.raises(grpc.RpcError) as info:
                    env.run(env.config(pid="POD"))
                assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                assert "systemd is not running" in info.value.details()
            assert env.snapshot() == before
    finally:
        daemon.stop()
        net.cleanup(base / "state")
