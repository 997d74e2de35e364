"""gVisor pods end to end: a real crirt daemon with a ``runsc`` handler, Debian's runsc, conmon and a pod
network; two containers in one gVisor sandbox, their logs, ExecSync, exit codes, stats and a clean teardown."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from support.network import wait_until

from .conftest import HANDLER, GvisorEnv, needs_gvisor, runsc_processes

pytestmark = needs_gvisor

GVISOR_KERNEL = "Linux version 4.4.0"
"""What gVisor's /proc/version says (the host's kernel is 6.x)."""


def run_pod(env: GvisorEnv, logs: Path, name: str, pid: str = "CONTAINER", cgroup_parent: str = "",
            network: str = "POD") -> str:
    pb = env.pb
    env.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=env.image)), timeout=60)
    linux = pb.LinuxPodSandboxConfig(cgroup_parent=cgroup_parent)
    linux.security_context.namespace_options.CopyFrom(
        pb.NamespaceOption(network=getattr(pb, network), pid=getattr(pb, pid), ipc=pb.POD))
    config = pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name=name, namespace="crirt-gvisor", uid=f"u-{name}"),
                                 hostname=name, log_directory=str(logs), linux=linux)
    return env.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=config, runtime_handler=HANDLER),
                                     timeout=60).pod_sandbox_id


@pytest.fixture
def pod(env: GvisorEnv, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A ready gVisor pod (pid CONTAINER) with a log directory; stopped and removed afterwards."""
    sandbox_id = run_pod(env, tmp_path / "logs", f"g-{tmp_path.name[-10:].lower().replace('_', '-')}")
    yield sandbox_id, tmp_path / "logs"
    env.runtime.StopPodSandbox(env.pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=60)
    env.runtime.RemovePodSandbox(env.pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=60)


def start(env: GvisorEnv, sandbox_id: str, name: str, script: str) -> str:
    pb = env.pb
    config = pb.ContainerConfig(metadata=pb.ContainerMetadata(name=name), image=pb.ImageSpec(image=env.image),
                                command=["/bin/sh", "-c", script], log_path=f"{name}.log")
    cid = env.runtime.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=sandbox_id, config=config),
                                      timeout=60).container_id
    env.runtime.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=60)
    return cid


def status(env: GvisorEnv, container_id: str) -> Any:
    return env.runtime.ContainerStatus(env.pb.ContainerStatusRequest(container_id=container_id), timeout=10).status


def exec_sync(env: GvisorEnv, container_id: str, *cmd: str) -> Any:
    return env.runtime.ExecSync(env.pb.ExecSyncRequest(container_id=container_id, cmd=list(cmd), timeout=20),
                                timeout=30)


def log_lines(path: Path) -> list[tuple[str, str]]:
    """(stream, text) of each full line of a CRI-format log, checking every line's format."""
    lines = []
    for line in path.read_text().splitlines():
        match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\S+) (stdout|stderr) F (.*)", line)
        assert match, f"not a CRI log line: {line!r}"
        lines.append((match.group(2), match.group(3)))
    return lines


def runsc_list(env: GvisorEnv) -> list[dict[str, Any]]:
    out = subprocess.run(["runsc", f"--root={env.runsc_root}", "--network=host", "list", "-format=json"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out) or []


def sandbox_processes(env: GvisorEnv) -> list[int]:
    return [pid for pid, argv in runsc_processes(env.runsc_root) if argv[0] == "runsc-sandbox"]


def test_status_lists_the_runsc_handler_with_its_features(env: GvisorEnv) -> None:
    reply = env.runtime.Status(env.pb.StatusRequest(verbose=True), timeout=10)
    handlers = {h.name: h.features for h in reply.runtime_handlers}
    assert HANDLER in handlers, handlers
    features = handlers[HANDLER]
    assert (features.recursive_read_only_mounts, features.user_namespaces) == (False, False)
    assert "runsc" not in reply.info.get("problems", ""), reply.info


def test_two_containers_share_one_gvisor_sandbox(env: GvisorEnv, pod: tuple[str, Path]) -> None:
    pb = env.pb
    sandbox_id, logs = pod
    assert len(sandbox_processes(env)) == 1  # the pod's infra container made the sandbox
    first = start(env, sandbox_id, "first", "echo first-out; echo first-err >&2; exec sleep 1000")
    second = start(env, sandbox_id, "second", "echo second-out; echo second-err >&2; exec sleep 1000")
    assert status(env, first).state == status(env, second).state == pb.CONTAINER_RUNNING

    listed = {c["id"]: c for c in runsc_list(env)}
    assert {sandbox_id, first, second} <= set(listed)
    assert listed[first]["pid"] == listed[second]["pid"] == listed[sandbox_id]["pid"]
    assert sandbox_processes(env) == [listed[sandbox_id]["pid"]]

    for name in ("first", "second"):
        wait_until(lambda n=name: len(log_lines(logs / f"{n}.log")) == 2, 15)  # type: ignore[misc]
        assert sorted(log_lines(logs / f"{name}.log")) == [("stderr", f"{name}-err"), ("stdout", f"{name}-out")]

    host_kernel = Path("/proc/version").read_text()
    for cid in (first, second):
        inside = exec_sync(env, cid, "cat", "/proc/version")
        assert inside.exit_code == 0 and inside.stdout.decode().startswith(GVISOR_KERNEL) and \
            inside.stdout.decode() != host_kernel


def test_exec_sync_output_and_exit_code(env: GvisorEnv, pod: tuple[str, Path]) -> None:
    sandbox_id, _ = pod
    start(env, sandbox_id, "sleeper", "exec sleep 1000")
    cid = start(env, sandbox_id, "worker", "exec sleep 1000")
    reply = exec_sync(env, cid, "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (reply.stdout, reply.stderr, reply.exit_code) == (b"out\n", b"err\n", 3)
    assert exec_sync(env, cid, "/bin/busybox", "hostname").stdout.decode().strip() == hostname_of(env, sandbox_id)
    with pytest.raises(grpc.RpcError) as caught:
        env.runtime.ExecSync(env.pb.ExecSyncRequest(container_id=cid, cmd=["/bin/busybox", "sleep", "555"],
                                                    timeout=1), timeout=30)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    processes = exec_sync(env, cid, "/bin/busybox", "ps", "-o", "args").stdout.decode()
    assert "sleep 1000" in processes and "sleep 555" not in processes  # killed inside the sandbox too


def hostname_of(env: GvisorEnv, sandbox_id: str) -> str:
    reply = env.runtime.PodSandboxStatus(env.pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id), timeout=10)
    return reply.status.metadata.name


def test_exit_codes_after_exit_and_stop(env: GvisorEnv, pod: tuple[str, Path]) -> None:
    pb = env.pb
    sandbox_id, logs = pod
    quitter = start(env, sandbox_id, "quitter", "echo bye; exit 7")
    sleeper = start(env, sandbox_id, "sleeper", "trap '' TERM; while :; do sleep 1; done")
    done = wait_until(lambda: status(env, quitter).state == pb.CONTAINER_EXITED and status(env, quitter), 15)
    assert (done.exit_code, done.reason) == (7, "Error")
    assert log_lines(logs / "quitter.log") == [("stdout", "bye")]

    env.runtime.StopContainer(pb.StopContainerRequest(container_id=sleeper, timeout=1), timeout=60)
    stopped = status(env, sleeper)
    assert (stopped.state, stopped.exit_code) == (pb.CONTAINER_EXITED, 137)  # TERM ignored: KILLed
    assert status(env, quitter).exit_code == 7
    for cid in (quitter, sleeper):
        env.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=60)
    assert {c["id"] for c in runsc_list(env)} == {sandbox_id}


def test_container_stats_come_from_the_sandbox(env: GvisorEnv, pod: tuple[str, Path]) -> None:
    sandbox_id, _ = pod
    cid = start(env, sandbox_id, "busy", "exec sleep 1000")
    exec_sync(env, cid, "sh", "-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done")
    stats = env.runtime.ContainerStats(env.pb.ContainerStatsRequest(container_id=cid), timeout=10).stats
    assert stats.attributes.id == cid
    assert stats.cpu.usage_core_nano_seconds.value > 0
    assert stats.memory.working_set_bytes.value > 0


def test_the_pod_network_reaches_the_sandbox(env: GvisorEnv, pod: tuple[str, Path]) -> None:
    """With network=host the sandbox uses the pod's namespace: its CNI address serves a listener in gVisor, on
    port 80 too (as nginx does), though the host kernel sees the bind come from the capability-less sentry."""
    sandbox_id, _ = pod
    ip = env.runtime.PodSandboxStatus(env.pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id),
                                      timeout=10).status.network.ip
    assert ip in [str(h) for h in env.net.subnet.hosts()]
    cid = start(env, sandbox_id, "web", "echo served-by-gvisor > /tmp/index.html; exec httpd -f -p 80 -h /tmp")
    assert ip in exec_sync(env, cid, "/bin/busybox", "ip", "-4", "addr").stdout.decode()
    page = wait_until(lambda: subprocess.run(["busybox", "wget", "-q", "-O", "-", f"http://{ip}/index.html"],
                                             capture_output=True, text=True, timeout=10).stdout, 15)
    assert page == "served-by-gvisor\n"


def test_bidirectional_mounts_are_refused_naming_the_mount(env: GvisorEnv, pod: tuple[str, Path],
                                                           tmp_path: Path) -> None:
    pb = env.pb
    sandbox_id, _ = pod
    config = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="shared"), image=pb.ImageSpec(image=env.image),
                                command=["sleep", "1000"], mounts=[pb.Mount(
                                    container_path="/shared", host_path=str(tmp_path),
                                    propagation=pb.PROPAGATION_BIDIRECTIONAL)])
    with pytest.raises(grpc.RpcError) as caught:
        env.runtime.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=sandbox_id, config=config), timeout=60)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "config.mounts: '/shared' asks for PROPAGATION_BIDIRECTIONAL" in caught.value.details()
    listed = env.runtime.ListContainers(pb.ListContainersRequest(), timeout=10).containers
    assert not [c for c in listed if c.pod_sandbox_id == sandbox_id]


def test_host_network_pod_has_the_nodes_name(env: GvisorEnv, tmp_path: Path) -> None:
    sandbox_id = run_pod(env, tmp_path / "logs", f"h-{tmp_path.name[-10:].lower().replace('_', '-')}",
                         network="NODE")
    try:
        cid = start(env, sandbox_id, "h", "exec sleep 1000")
        assert exec_sync(env, cid, "/bin/busybox", "hostname").stdout.decode().strip() == socket.gethostname()
        assert exec_sync(env, cid, "cat", "/proc/version").stdout.decode().startswith(GVISOR_KERNEL)
    finally:
        env.runtime.StopPodSandbox(env.pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=60)
        env.runtime.RemovePodSandbox(env.pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=60)


def test_pid_pod_containers_see_each_other(env: GvisorEnv, tmp_path: Path) -> None:
    sandbox_id = run_pod(env, tmp_path / "logs", f"p-{tmp_path.name[-10:].lower().replace('_', '-')}", pid="POD")
    try:
        start(env, sandbox_id, "a", "exec sleep 1001")
        b = start(env, sandbox_id, "b", "exec sleep 1002")
        seen = exec_sync(env, b, "/bin/busybox", "ps", "-o", "args").stdout.decode()
        assert "sleep 1001" in seen and "sleep 1002" in seen, seen
        # as with runc, pid 1 of the pod's namespace is the infra container's process, not the first container
        assert "sleep" not in exec_sync(env, b, "cat", "/proc/1/cmdline").stdout.decode()
    finally:
        env.runtime.StopPodSandbox(env.pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=60)
        env.runtime.RemovePodSandbox(env.pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=60)


def test_stop_and_remove_leave_nothing(env: GvisorEnv, tmp_path: Path) -> None:
    pb = env.pb
    sandbox_id = run_pod(env, tmp_path / "logs", f"r-{tmp_path.name[-10:].lower().replace('_', '-')}")
    netns = json.loads(env.runtime.PodSandboxStatus(
        pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id, verbose=True), timeout=10).info["info"])["namespaces"]
    start(env, sandbox_id, "one", "exec sleep 1000")
    start(env, sandbox_id, "two", "exec sleep 1000")
    assert len(runsc_list(env)) == 3
    started = time.monotonic()
    env.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=60)
    assert time.monotonic() - started < 30
    env.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=60)
    assert runsc_list(env) == []
    assert runsc_processes(env.runsc_root) == []
    assert not list((env.shim_state / "containers").glob("*"))
    mounts = Path("/proc/self/mountinfo").read_text()
    assert sandbox_id not in mounts and str(env.base / "state" / "pods" / sandbox_id) not in mounts
    assert not any(Path(path).exists() for path in netns.values()), netns
    with pytest.raises(grpc.RpcError) as caught:
        env.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id), timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


MEMORY_CGROUPS = Path("/sys/fs/cgroup/memory")


@pytest.mark.skipif(not (MEMORY_CGROUPS / "memory.limit_in_bytes").exists(),
                    reason="needs the cgroup v1 memory controller at /sys/fs/cgroup/memory (this host's layout)")
def test_a_pod_over_its_memory_limit_is_oom_killed(env: GvisorEnv, tmp_path: Path) -> None:
    pb = env.pb
    parent = f"/crirt-gvisor-oom-{tmp_path.name[-8:].lower()}"
    limit = MEMORY_CGROUPS / parent.lstrip("/")
    limit.mkdir()
    sandbox_id = ""
    try:
        (limit / "memory.limit_in_bytes").write_text(str(192 << 20))
        sandbox_id = run_pod(env, tmp_path / "logs", f"o-{tmp_path.name[-10:].lower().replace('_', '-')}",
                             cgroup_parent=parent)
        # runsc keeps the container's root filesystem writes in the sandbox's memory (overlay2 root:memory)
        cid = start(env, sandbox_id, "hog", "dd if=/dev/zero of=/tmp/fill bs=1M count=400; echo survived")
        done = wait_until(lambda: status(env, cid).state == pb.CONTAINER_EXITED and status(env, cid), 60)
        assert (done.reason, done.exit_code) == ("OOMKilled", 137), (done.reason, done.exit_code, done.message)
        assert int((limit / "memory.failcnt").read_text()) > 0
    finally:
        if sandbox_id:
            env.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=60)
            env.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=60)
        for child in sorted(limit.rglob("*"), reverse=True):
            if child.is_dir():
                child.rmdir()
        limit.rmdir()
