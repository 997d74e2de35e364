"""Pods and containers through the kata plugin and crirt's shim v2 driver, end to end through a real crirt:
against containerd-shim-runc-v2 (Kata itself cannot be installed here), and the error a user gets when the
Kata shim is missing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from support.daemon import start_daemon
from support.network import wait_until

from .conftest import HANDLER, MISSING_HANDLER, RUNTIME_CONFIG, KataEnv, shim_processes

SERVE = "trap 'exit 0' TERM; echo hello; printf 'no newline'; echo; /bin/busybox sleep 1000 & wait"
TICK = "i=0; while true; do echo tick $i; i=$((i+1)); /bin/busybox sleep 0.2; done"


LOG_LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z (stdout|stderr) [PF] .*")


def streams(log: str) -> dict[str, str]:
    """The text of each stream in a CRI log: P entries joined with what follows, F entries ending a line."""
    text: dict[str, str] = {}
    for line in log.splitlines():
        _, stream, tag, content = line.split(" ", 3) if line.count(" ") >= 3 else (*line.split(" "), "")
        text[stream] = text.get(stream, "") + content + ("\n" if tag == "F" else "")
    return text


def pod_config(env: KataEnv, name: str, logs: Path, pid: str = "CONTAINER") -> Any:
    pb = env.pb
    linux = pb.LinuxPodSandboxConfig()
    linux.security_context.namespace_options.CopyFrom(pb.NamespaceOption(network=pb.POD, pid=getattr(pb, pid),
                                                                         ipc=pb.POD))
    return pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name=name, namespace="crirt-kata", uid=f"uid-{name}"),
                               hostname=name, log_directory=str(logs), linux=linux)


@pytest.fixture(params=["CONTAINER"])
def pod(env: KataEnv, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[str, Path]]:
    """A ready pod on the kata-runc handler; stopped and removed afterwards."""
    pb = env.pb
    env.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=env.image)), timeout=60)
    name = f"kata-{tmp_path.name[-12:].lower().replace('_', '-')}"
    config = pod_config(env, name, tmp_path / "logs", request.param)
    sandbox_id = env.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=config, runtime_handler=HANDLER),
                                           timeout=30).pod_sandbox_id
    yield sandbox_id, tmp_path / "logs"
    remove_pod(env, sandbox_id)


def remove_pod(env: KataEnv, sandbox_id: str) -> None:
    """Stop and remove a pod (again: both are idempotent for a pod that is already gone)."""
    pb = env.pb
    with contextlib.suppress(grpc.RpcError):  # NOT_FOUND once removed
        env.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=30)
    env.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=30)


def create(env: KataEnv, sandbox_id: str, name: str, script: str) -> str:
    pb = env.pb
    config = pb.ContainerConfig(metadata=pb.ContainerMetadata(name=name), image=pb.ImageSpec(image=env.image),
                                command=["/bin/sh", "-c", script], log_path=f"{name}/0.log")
    return env.runtime.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=sandbox_id, config=config),
                                       timeout=30).container_id


def start(env: KataEnv, container_id: str) -> None:
    env.runtime.StartContainer(env.pb.StartContainerRequest(container_id=container_id), timeout=30)


def status(env: KataEnv, container_id: str) -> Any:
    return env.runtime.ContainerStatus(env.pb.ContainerStatusRequest(container_id=container_id), timeout=10).status


def exec_sync(env: KataEnv, container_id: str, cmd: list[str], timeout: int = 10) -> Any:
    return env.runtime.ExecSync(env.pb.ExecSyncRequest(container_id=container_id, cmd=cmd, timeout=timeout),
                                timeout=timeout + 10)


def rpc_error(call: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def test_container_lifecycle_on_one_shim_per_pod(env: KataEnv, pod: tuple[str, Path]) -> None:
    pb, rt = env.pb, env.runtime
    sandbox_id, logs = pod
    web = create(env, sandbox_id, "web", SERVE)
    assert status(env, web).state == pb.CONTAINER_CREATED
    assert len(shim_processes(env.shim_state)) == 1  # started for the pod's sandbox (infra) container
    assert (env.shim_state / "tasks" / sandbox_id / "sandbox").read_text() == sandbox_id
    start(env, web)
    side = create(env, sandbox_id, "side", "echo side; echo oops >&2; /bin/busybox sleep 1000")
    start(env, side)
    assert len(shim_processes(env.shim_state)) == 1, "both containers of the pod are served by one shim"
    assert status(env, web).state == status(env, side).state == pb.CONTAINER_RUNNING

    web_log = logs / "web" / "0.log"
    wait_until(lambda: web_log.exists() and "hello\nno newline\n" in streams(web_log.read_text())["stdout"], 10)
    assert all(LOG_LINE.fullmatch(line) for line in web_log.read_text().splitlines()), web_log.read_text()
    side_log = logs / "side" / "0.log"
    wait_until(lambda: side_log.exists() and streams(side_log.read_text()) == {"stdout": "side\n", "stderr": "oops\n"},
               10)

    reply = exec_sync(env, web, ["echo", "hi"])
    assert (reply.stdout, reply.stderr, reply.exit_code) == (b"hi\n", b"", 0)
    failing = exec_sync(env, web, ["sh", "-c", "echo no >&2; exit 7"])
    assert (failing.stdout, failing.stderr, failing.exit_code) == (b"", b"no\n", 7)
    big = exec_sync(env, web, ["sh", "-c", "yes 0123456789abcdef | head -c 300000"])
    assert big.exit_code == 0 and len(big.stdout) == 300000
    error = rpc_error(lambda: exec_sync(env, web, ["/bin/busybox", "sleep", "10"], timeout=1))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    stats = rt.ContainerStats(pb.ContainerStatsRequest(container_id=web), timeout=10).stats
    assert stats.attributes.id == web and stats.memory.working_set_bytes.value > 0
    assert stats.cpu.usage_core_nano_seconds.value > 0

    web_log.rename(logs / "web" / "0.log.1")  # the kubelet's rotation
    rt.ReopenContainerLog(pb.ReopenContainerLogRequest(container_id=web), timeout=10)
    wait_until(web_log.exists, 10)

    rt.StopContainer(pb.StopContainerRequest(container_id=web, timeout=5), timeout=30)
    stopped = status(env, web)
    assert (stopped.state, stopped.exit_code, stopped.reason) == (pb.CONTAINER_EXITED, 0, "Completed")
    rt.StopContainer(pb.StopContainerRequest(container_id=side, timeout=1), timeout=30)  # ignores TERM: killed
    killed = status(env, side)
    assert (killed.state, killed.exit_code) == (pb.CONTAINER_EXITED, 137)
    rt.RemoveContainer(pb.RemoveContainerRequest(container_id=web), timeout=30)
    assert rpc_error(lambda: status(env, web)).code() == grpc.StatusCode.NOT_FOUND
    rt.RemoveContainer(pb.RemoveContainerRequest(container_id=side), timeout=30)
    assert len(shim_processes(env.shim_state)) == 1, "the shim stays while the pod has tasks (its sandbox)"
    remove_pod(env, sandbox_id)
    wait_until(lambda: not shim_processes(env.shim_state), 10)  # shut down after the pod's last task
    assert not list((env.shim_state / "tasks").glob("*")) and not list((env.shim_state / "pods").glob("*"))


def test_exit_code_is_reported(env: KataEnv, pod: tuple[str, Path]) -> None:
    pb = env.pb
    sandbox_id, _ = pod
    cid = create(env, sandbox_id, "fails", "exit 3")
    start(env, cid)
    done = wait_until(lambda: (s := status(env, cid)).state == pb.CONTAINER_EXITED and s, 10)
    assert (done.exit_code, done.reason) == (3, "Error")
    error = rpc_error(lambda: exec_sync(env, cid, ["true"]))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_an_oom_kill_is_reported(env: KataEnv, pod: tuple[str, Path]) -> None:
    pb, rt = env.pb, env.runtime
    sandbox_id, _ = pod
    config = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="hog"), image=pb.ImageSpec(image=env.image),
                                command=["/bin/sh", "-c", "x=$(head -c 134217728 /dev/zero | tr '\\0' a); echo $x"])
    config.linux.resources.memory_limit_in_bytes = 32 << 20
    cid = rt.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=sandbox_id, config=config),
                             timeout=30).container_id
    start(env, cid)
    done = wait_until(lambda: (s := status(env, cid)).state == pb.CONTAINER_EXITED and s, 30)
    assert (done.exit_code, done.reason) == (137, "OOMKilled")


@pytest.mark.parametrize("pod", ["POD"], indirect=True)
def test_pid_pod_runs_its_infra_container_on_the_shim(env: KataEnv, pod: tuple[str, Path]) -> None:
    sandbox_id, _ = pod
    cid = create(env, sandbox_id, "shared", SERVE)
    start(env, cid)
    reply = exec_sync(env, cid, ["cat", "/proc/1/cmdline"])
    assert reply.exit_code == 0 and b"catatonit" in reply.stdout, reply
    assert len(shim_processes(env.shim_state)) == 1


def test_running_containers_survive_a_crirt_restart(env: KataEnv, pod: tuple[str, Path]) -> None:
    pb = env.pb
    sandbox_id, logs = pod
    cid = create(env, sandbox_id, "ticker", TICK)
    start(env, cid)
    log = logs / "ticker" / "0.log"
    wait_until(lambda: log.exists() and "tick 2" in log.read_text(), 10)
    assert env.daemon.stop() == 0
    time.sleep(1)  # the container keeps writing into its FIFO meanwhile
    env.daemon = start_daemon(env.base, RUNTIME_CONFIG, cni_config="default_network = false\n", registries="")
    ticks_before = len(log.read_text().splitlines())
    wait_until(lambda: len(log.read_text().splitlines()) > ticks_before + 3, 10)  # the copier is back
    numbers = [int(m.group(1)) for m in re.finditer(r" stdout F tick (\d+)$", log.read_text(), re.M)]
    assert numbers == list(range(len(numbers))), "no line lost or repeated across the restart"
    assert status(env, cid).state == pb.CONTAINER_RUNNING
    assert exec_sync(env, cid, ["echo", "still here"]).stdout == b"still here\n"
    env.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=1), timeout=30)
    assert status(env, cid).exit_code == 137


def test_missing_kata_shim_is_a_clear_error(env: KataEnv, tmp_path: Path) -> None:
    """The handler is reported unavailable, and using it fails with FAILED_PRECONDITION naming the binary:
    at RunPodSandbox, or (a pod without a shared PID namespace, while the sandbox service resolves the handler
    only for an infra container) at CreateContainer."""
    pb, rt = env.pb, env.runtime

    def refused(error: grpc.RpcError) -> None:
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error
        assert "containerd-shim-kata-v2" in error.details() and "not installed" in error.details(), error.details()

    problems = rt.Status(pb.StatusRequest(verbose=True), timeout=10).status.conditions
    assert any("containerd-shim-kata-v2" in c.message for c in problems if not c.status), problems
    refused(rpc_error(lambda: rt.RunPodSandbox(pb.RunPodSandboxRequest(
        config=pod_config(env, "nokata-pod", tmp_path / "logs", "POD"), runtime_handler=MISSING_HANDLER),
        timeout=30)))
    config = pod_config(env, "nokata-container", tmp_path / "logs")
    try:
        sandbox_id = rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config, runtime_handler=MISSING_HANDLER),
                                      timeout=30).pod_sandbox_id
    except grpc.RpcError as error:
        refused(error)
    else:
        try:
            refused(rpc_error(lambda: create(env, sandbox_id, "never", "true")))
        finally:
            rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=30)
    listed = rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10).items
    assert all(p.runtime_handler != MISSING_HANDLER for p in listed), "nothing half-made is left behind"


async def websocket_exec(url: str, stdin: bytes) -> tuple[dict[int, bytes], bytes]:
    """Drive an Exec URL as a v5.channel.k8s.io WebSocket client: send ``stdin`` and its end, collect the
    output by channel until the server closes; the output and the error channel's status."""
    output: dict[int, bytes] = {}
    async with aiohttp.ClientSession() as session, session.ws_connect(url, protocols=["v5.channel.k8s.io"]) as ws:
        await ws.send_bytes(b"\0" + stdin)
        await ws.send_bytes(b"\xff\0")  # v5: close channel 0 (stdin)
        async for message in ws:
            if message.type == aiohttp.WSMsgType.BINARY and len(message.data) > 1:
                output[message.data[0]] = output.get(message.data[0], b"") + message.data[1:]
    return {k: v for k, v in output.items() if k in (1, 2)}, output.get(3, b"{}")


def ctl(env: KataEnv, *args: str) -> list[str]:
    return [sys.executable, "-m", "crirt", "ctl", "-r", env.daemon.endpoint, *args]


def test_exec_and_attach_through_the_streaming_server(env: KataEnv, pod: tuple[str, Path]) -> None:
    """The CRI's Exec (a WebSocket client here) and Attach (``crirt ctl attach -i``) URLs reach the container
    through the driver's FIFOs and its attach socket."""
    pb = env.pb
    sandbox_id, _ = pod
    config = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="talk"), image=pb.ImageSpec(image=env.image),
                                command=["/bin/sh", "-c", 'while read line; do echo "got $line"; done'],
                                log_path="talk/0.log", stdin=True)
    cid = env.runtime.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=sandbox_id, config=config),
                                      timeout=30).container_id
    start(env, cid)
    url = env.runtime.Exec(pb.ExecRequest(container_id=cid, cmd=["sh", "-c", "cat; echo err >&2; exit 3"],
                                          stdin=True, stdout=True, stderr=True), timeout=10).url
    output, error = asyncio.run(websocket_exec(url, b"piped\n"))
    assert (output, json.loads(error)["details"]["causes"][0]["message"]) == ({1: b"piped\n", 2: b"err\n"}, "3")
    proc = subprocess.Popen(ctl(env, "attach", "-i", cid), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        for word in ("one", "two"):
            proc.stdin.write(f"{word}\n")
            proc.stdin.flush()
            assert proc.stdout.readline() == f"got {word}\n"
        proc.stdin.close()  # detaches; without stdin_once the container keeps running
        assert proc.wait(30) == 0
    finally:
        proc.kill()
    assert status(env, cid).state == pb.CONTAINER_RUNNING
