"""Runtime calls that fail for a while lose nothing: an exit is still recorded, a failed CreateContainer is undone
step by step (what cannot be undone yet is retried), and a StartContainer whose caller gave up is still recorded.

The ``flaky`` handler runs runc through a wrapper that fails a runc command while a marker file named after it
exists (``fail-state``, ``fail-delete``; ``fail-create`` lets runc create the container, then reports failure),
or takes a second longer (``slow-start``)."""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest
from support.network import runc_shim_installed, wait_until

from .conftest import ContainerEnv, container_env

pytestmark = pytest.mark.skipif(not runc_shim_installed(), reason="the runc shim plugin is not installed")

WRAPPER = """#!/bin/sh
# runc, but a command fails while {markers}/fail-<command> exists ("create" fails after runc created it),
# and takes a second longer while {markers}/slow-<command> exists.
command=""
for arg in "$@"; do
    case "$arg" in create|start|state|delete|kill) command=$arg; break;; esac
done
[ -n "$command" ] && [ -e "{markers}/slow-$command" ] && sleep 1
if [ -n "$command" ] && [ -e "{markers}/fail-$command" ]; then
    [ "$command" = create ] && {runc} "$@" >/dev/null 2>&1
    echo "injected failure of runc $command" >&2
    exit 1
fi
exec {runc} "$@"
"""
IDLE = "trap 'exit 0' TERM; /bin/busybox sleep 1000 & wait"


@pytest.fixture(scope="module")
def flaky(tmp_path_factory: pytest.TempPathFactory, pb: ModuleType) -> Iterator[tuple[ContainerEnv, Path]]:
    base = tmp_path_factory.mktemp("retries")
    markers = base / "markers"
    markers.mkdir()
    wrapper = base / "flaky-runc"
    wrapper.write_text(WRAPPER.format(markers=markers, runc=shutil.which("runc")))
    wrapper.chmod(0o755)
    config = f"""
default_runtime = "flaky"
[runtimes.flaky]
shim = "runc"
options = {{ binary = "{wrapper}", exit_sweep_interval = 1 }}
"""
    with container_env(base, pb, config) as env:
        env.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=env.image)), timeout=60)
        yield env, markers


def make_pod(env: ContainerEnv, name: str) -> str:
    pb = env.pb
    config = pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name=name, namespace="retries", uid=f"u-{name}"))
    return env.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=30).pod_sandbox_id


def create(env: ContainerEnv, sandbox_id: str, name: str, timeout: float = 30) -> str:
    pb = env.pb
    config = pb.ContainerConfig(metadata=pb.ContainerMetadata(name=name), image=pb.ImageSpec(image=env.image),
                                command=["/bin/sh", "-c", IDLE])
    return env.runtime.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=sandbox_id, config=config),
                                       timeout=timeout).container_id


def status(env: ContainerEnv, container_id: str) -> Any:
    return env.runtime.ContainerStatus(env.pb.ContainerStatusRequest(container_id=container_id), timeout=10).status


def remove_pod(env: ContainerEnv, sandbox_id: str) -> None:
    env.runtime.StopPodSandbox(env.pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=60)
    env.runtime.RemovePodSandbox(env.pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=60)


def runc_ids(env: ContainerEnv) -> set[str]:
    root = env.base / "state" / "shims" / "flaky" / "runc-root"
    return {p.name for p in root.iterdir()} if root.is_dir() else set()


def test_an_exit_is_recorded_even_while_the_runtime_fails_for_a_while(flaky: tuple[ContainerEnv, Path]) -> None:
    """conmon and the container are killed while ``runc state`` fails: the sweep cannot tell yet, keeps asking,
    and records the exit once runc answers again (the watcher used to give up, leaving it RUNNING for good)."""
    env, markers = flaky
    sandbox_id = make_pod(env, "exit")
    try:
        container_id = create(env, sandbox_id, "c")
        env.runtime.StartContainer(env.pb.StartContainerRequest(container_id=container_id), timeout=30)
        info = env.runtime.ContainerStatus(env.pb.ContainerStatusRequest(container_id=container_id, verbose=True),
                                           timeout=10).info["info"]
        pid = json.loads(info)["pid"]
        conmon = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        (markers / "fail-state").touch()
        os.kill(conmon, signal.SIGKILL)
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: "injected failure of runc state" in env.daemon.log_text(), 20)
        assert status(env, container_id).state == env.pb.CONTAINER_RUNNING  # not known yet
        (markers / "fail-state").unlink()
        done = wait_until(lambda: (s := status(env, container_id)).state == env.pb.CONTAINER_EXITED and s, 60)
        assert done.exit_code == 255
    finally:
        (markers / "fail-state").unlink(missing_ok=True)
        remove_pod(env, sandbox_id)


def test_a_failed_create_is_undone_step_by_step_and_the_rest_retried(flaky: tuple[ContainerEnv, Path]) -> None:
    """runc creates the container but reports failure, and ``runc delete`` fails too: CreateContainer's undo still
    removes the bundle and the root filesystem at once, and deletes runc's container once runc lets it."""
    env, markers = flaky
    sandbox_id = make_pod(env, "undo")
    before = runc_ids(env)
    bundles = env.base / "state" / "containers"
    try:
        (markers / "fail-create").touch()
        (markers / "fail-delete").touch()
        with pytest.raises(grpc.RpcError) as caught:
            create(env, sandbox_id, "broken")
        assert "injected failure of runc create" in caught.value.details()
        (markers / "fail-create").unlink()
        left = runc_ids(env) - before - {sandbox_id}
        assert len(left) == 1  # runc's container could not be deleted yet
        container_id = left.pop()
        assert not (bundles / container_id).exists()
        assert not any(container_id in line for line in Path("/proc/self/mountinfo").read_text().splitlines())
        (markers / "fail-delete").unlink()
        wait_until(lambda: container_id not in runc_ids(env), 30)  # the janitor's retry
        assert create(env, sandbox_id, "broken")  # the name was released with the undo
    finally:
        for marker in ("fail-create", "fail-delete"):
            (markers / marker).unlink(missing_ok=True)
        remove_pod(env, sandbox_id)


def test_a_start_whose_caller_gave_up_is_still_recorded(flaky: tuple[ContainerEnv, Path]) -> None:
    """StartContainer's deadline passes while runc starts the task: the start still completes and is recorded,
    so the container is RUNNING and watched (it used to stay CREATED, and the retry then failed it)."""
    env, markers = flaky
    sandbox_id = make_pod(env, "start")
    try:
        container_id = create(env, sandbox_id, "c")
        (markers / "slow-start").touch()
        with pytest.raises(grpc.RpcError) as caught:
            env.runtime.StartContainer(env.pb.StartContainerRequest(container_id=container_id), timeout=0.3)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert status(env, container_id).state == env.pb.CONTAINER_CREATED  # runc start is still sleeping
        running = wait_until(lambda: (s := status(env, container_id)).state == env.pb.CONTAINER_RUNNING and s, 20)
        assert running.started_at > 0
        env.runtime.StopContainer(env.pb.StopContainerRequest(container_id=container_id, timeout=5), timeout=30)
        assert status(env, container_id).exit_code == 0  # the watcher recorded the exit of the TERM-trapping shell
    finally:
        (markers / "slow-start").unlink(missing_ok=True)
        remove_pod(env, sandbox_id)
