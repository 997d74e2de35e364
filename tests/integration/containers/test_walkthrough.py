"""The container lifecycle end to end on runc: pull, run a pod, create, start, log, exec, stop, remove."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from support.containers import Events
from support.network import runc_shim_installed, wait_until

from .conftest import ContainerEnv

pytestmark = pytest.mark.skipif(not runc_shim_installed(), reason="the runc shim plugin is not installed")

SERVE = "trap 'exit 0' TERM; echo hello; /bin/busybox sleep 1000 & wait"


@pytest.fixture(params=["CONTAINER"])
def pod(env: ContainerEnv, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[str, Path]]:
    """A ready pod (pid CONTAINER unless parametrized: no infra container) with a log directory; removed by id
    afterwards."""
    pb = env.pb
    env.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=env.image)), timeout=60)
    name = f"pod-{tmp_path.name[-12:].lower().replace('_', '-')}"
    options = pb.NamespaceOption(network=pb.POD, pid=getattr(pb, request.param), ipc=pb.POD)
    linux = pb.LinuxPodSandboxConfig()
    linux.security_context.namespace_options.CopyFrom(options)
    config = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, namespace="crirt-test", uid=f"uid-{name}"),
        hostname=name, log_directory=str(tmp_path / "logs"), linux=linux)
    sandbox_id = env.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=30).pod_sandbox_id
    yield sandbox_id, tmp_path / "logs"
    env.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=30)
    env.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=30)


def create(env: ContainerEnv, sandbox_id: str, name: str, script: str, *, image: str = "") -> str:
    pb = env.pb
    config = pb.ContainerConfig(metadata=pb.ContainerMetadata(name=name), image=pb.ImageSpec(image=image or env.image),
                                command=["/bin/sh", "-c", script], log_path=f"{name}/0.log")
    return env.runtime.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=sandbox_id, config=config),
                                       timeout=30).container_id


def status(env: ContainerEnv, container_id: str) -> Any:
    return env.runtime.ContainerStatus(env.pb.ContainerStatusRequest(container_id=container_id), timeout=10).status


def code_of(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code()


def test_walkthrough(env: ContainerEnv, pod: tuple[str, Path]) -> None:
    pb, rt = env.pb, env.runtime
    sandbox_id, logs = pod
    events = Events(env)
    time.sleep(0.2)  # let the subscription reach the daemon
    try:
        cid = create(env, sandbox_id, "web", SERVE)
        assert status(env, cid).state == pb.CONTAINER_CREATED
        assert code_of(lambda: create(env, sandbox_id, "web", SERVE)) == grpc.StatusCode.ALREADY_EXISTS
        rt.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=30)
        assert code_of(lambda: rt.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=30)) \
            == grpc.StatusCode.FAILED_PRECONDITION
        running = status(env, cid)
        assert running.state == pb.CONTAINER_RUNNING and running.started_at > 0
        assert running.log_path == str(logs / "web" / "0.log") and running.image.image == env.image
        assert running.image_id.startswith("sha256:")
        listed = rt.ListContainers(pb.ListContainersRequest(), timeout=10).containers
        assert [c.state for c in listed if c.id == cid] == [pb.CONTAINER_RUNNING]
        line = wait_until(lambda: (logs / "web" / "0.log").exists() and (logs / "web" / "0.log").read_text(), 10)
        assert re.match(r"^\S+ stdout F hello$", line.splitlines()[0]), line

        log = logs / "web" / "0.log"
        log.rename(logs / "web" / "0.log.1")  # what the kubelet's rotation does
        rt.ReopenContainerLog(pb.ReopenContainerLogRequest(container_id=cid), timeout=10)
        assert log.exists()  # the new file is there when the call returns (critest checks at once)

        reply = rt.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["echo", "hi"], timeout=10), timeout=20)
        assert (reply.stdout, reply.exit_code) == (b"hi\n", 0)
        failing = rt.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", "echo no >&2; exit 7"]),
                              timeout=20)
        assert (failing.stderr, failing.exit_code) == (b"no\n", 7)
        with pytest.raises(grpc.RpcError) as caught:
            rt.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["/bin/busybox", "sleep", "10"], timeout=1),
                        timeout=20)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "timeout" in caught.value.details()

        started = time.monotonic()
        rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=2), timeout=30)
        assert time.monotonic() - started < 2  # the TERM trap ends it at once
        stopped = status(env, cid)
        assert (stopped.state, stopped.exit_code, stopped.reason) == (pb.CONTAINER_EXITED, 0, "Completed")
        assert stopped.finished_at >= stopped.started_at
        rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=2), timeout=30)  # idempotent
        assert code_of(lambda: rt.ReopenContainerLog(pb.ReopenContainerLogRequest(container_id=cid), timeout=10)) \
            == grpc.StatusCode.FAILED_PRECONDITION
        rt.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=30)
        rt.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=30)
        assert code_of(lambda: status(env, cid)) == grpc.StatusCode.NOT_FOUND
        rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=2), timeout=30)  # unknown: OK too
        wait_until(lambda: len(events.of(cid)) >= 4, 10)
        assert events.of(cid) == ["CONTAINER_CREATED_EVENT", "CONTAINER_STARTED_EVENT", "CONTAINER_STOPPED_EVENT",
                                  "CONTAINER_DELETED_EVENT"]
        mine = [e for e in events.raw if e.container_id == cid]
        assert all(e.pod_sandbox_status.id == sandbox_id and e.created_at > 0 for e in mine)
        assert [[s.state for s in e.containers_statuses if s.id == cid] for e in mine] == \
            [[pb.CONTAINER_CREATED], [pb.CONTAINER_RUNNING], [pb.CONTAINER_EXITED], []]
    finally:
        events.close()


def test_exit_code_and_reason(env: ContainerEnv, pod: tuple[str, Path]) -> None:
    pb, rt = env.pb, env.runtime
    sandbox_id, _ = pod
    cid = create(env, sandbox_id, "fails", "exit 3")
    rt.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=30)
    done = wait_until(lambda: (s := status(env, cid)).state == pb.CONTAINER_EXITED and s, 10)
    assert (done.exit_code, done.reason) == (3, "Error")
    code = code_of(lambda: rt.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["true"]), timeout=10))
    assert code == grpc.StatusCode.FAILED_PRECONDITION


def test_sandbox_removal_takes_running_containers(env: ContainerEnv, pod: tuple[str, Path]) -> None:
    pb, rt = env.pb, env.runtime
    sandbox_id, _ = pod
    cid = create(env, sandbox_id, "stubborn", "/bin/busybox sleep 1000")  # ignores TERM (pid 1 without handler)
    rt.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=30)
    rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=30)
    assert status(env, cid).state == pb.CONTAINER_EXITED
    rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=30)
    assert code_of(lambda: status(env, cid)) == grpc.StatusCode.NOT_FOUND


def test_refusals(env: ContainerEnv, pod: tuple[str, Path]) -> None:
    sandbox_id, _ = pod
    assert code_of(lambda: create(env, "0" * 64, "x", "true")) == grpc.StatusCode.NOT_FOUND
    missing = env.image.rsplit(":", 1)[0] + ":not-pulled"
    assert code_of(lambda: create(env, sandbox_id, "x", "true", image=missing)) == grpc.StatusCode.NOT_FOUND
    # the refused name is free again
    cid = create(env, sandbox_id, "x", "true")
    env.runtime.RemoveContainer(env.pb.RemoveContainerRequest(container_id=cid), timeout=30)


@pytest.mark.parametrize("pod", ["POD"], indirect=True)
def test_pid_pod_shares_the_infra_pid_namespace(env: ContainerEnv, pod: tuple[str, Path]) -> None:
    pb, rt = env.pb, env.runtime
    sandbox_id, _ = pod
    cid = create(env, sandbox_id, "shared", SERVE)
    rt.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=30)
    reply = rt.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["cat", "/proc/1/cmdline"], timeout=10), timeout=20)
    assert reply.exit_code == 0 and b"catatonit" in reply.stdout, reply
    rt.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=30)
