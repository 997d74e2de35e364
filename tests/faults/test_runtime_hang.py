"""A runtime binary that hangs: the handler ``stuck`` runs runc through a wrapper whose ``start`` waits for a lock
the test holds. StartContainer must end at its deadline, the daemon must keep serving meanwhile (listings,
another pod on another handler), and once the wrapper ends the stuck container is removed without a trace."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import grpc
import pytest
from support.containers import ContainerEnv, container_env
from support.network import PodEnv, runc_shim_installed, wait_until
from support.pods import oci_containers, run_container

from .conftest import executable_script, held, processes_mentioning, traces

pytestmark = pytest.mark.skipif(not runc_shim_installed(), reason="the runc shim plugin is not installed")

SERVE = "trap 'exit 0' TERM; /bin/busybox sleep 1000 & wait"


def hanging_runc(path: Path, lock: Path) -> Path:
    """A runc wrapper whose ``start`` first takes ``lock`` (flock), so it hangs while the test holds it."""
    return executable_script(path, (
        "#!/bin/sh\n"
        'for arg; do case "$arg" in -*) ;; start) flock ' f"{lock} true; break ;; *) break ;; esac; done\n"
        f'exec {shutil.which("runc")} "$@"\n'))


@dataclass
class Stuck:
    """A daemon whose handler ``stuck`` runs runc through ``hanging_runc``, with busybox pulled."""

    env: ContainerEnv
    pods: PodEnv
    lock: Path
    logs: Path

    def pod_with_container(self, name: str) -> tuple[str, str]:
        """A pod on the ``stuck`` handler and a container created (not started) in it: (pod id, container id)."""
        pb = self.env.pb
        sandbox = self.pods.run(self.pods.config(name, log_directory=str(self.logs)), handler="stuck")
        config = pb.ContainerConfig(metadata=pb.ContainerMetadata(name=name), image=pb.ImageSpec(image=self.env.image),
                                    command=["/bin/sh", "-c", SERVE], log_path=f"{name}.log")
        return sandbox, self.env.runtime.CreateContainer(
            pb.CreateContainerRequest(pod_sandbox_id=sandbox, config=config), timeout=30).container_id


@pytest.fixture
def stuck(tmp_path: Path, pb: ModuleType) -> Iterator[Stuck]:
    """The ``stuck`` handler's daemon; its registry, network and containers are removed afterwards."""
    lock = tmp_path / "runc.lock"
    wrapper = hanging_runc(tmp_path / "bin" / "runc-wrapper", lock)
    with container_env(tmp_path, pb, f'[runtimes.stuck]\nshim = "runc"\noptions = {{ binary = "{wrapper}" }}\n') as env:
        env.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=env.image)), timeout=60)
        yield Stuck(env, PodEnv(env.daemon, env.net, env.base, env.runtime, pb), lock, tmp_path / "logs")


def test_a_hung_runtime_call_ends_at_its_deadline_and_is_cleaned_up_after(stuck: Stuck) -> None:
    env, pods, lock = stuck.env, stuck.pods, stuck.lock
    pb, rt = env.pb, env.runtime
    stuck_pod, hung = stuck.pod_with_container("hung")
    other_pod = pods.run(pods.config("other", log_directory=str(stuck.logs)))
    with held(lock):
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            rt.StartContainer(pb.StartContainerRequest(container_id=hung), timeout=3)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 5
        assert processes_mentioning(str(lock))  # the wrapper still waits

        started = time.monotonic()
        listed = {c.id for c in rt.ListContainers(pb.ListContainersRequest(), timeout=2).containers}
        sandboxes = {s.id for s in rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=2).items}
        assert listed == {hung} and sandboxes == {stuck_pod, other_pod}
        assert time.monotonic() - started < 1  # the listings do not wait for the hung call
        other = run_container(rt, pb, other_pod, env.image, "other", SERVE)  # another handler works on
        assert rt.ContainerStatus(pb.ContainerStatusRequest(container_id=other),
                                  timeout=5).status.state == pb.CONTAINER_RUNNING
    wait_until(lambda: not processes_mentioning(str(lock)), 30)  # the wrapper's runc start went on and ended
    rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=stuck_pod), timeout=30)
    rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=stuck_pod), timeout=30)
    assert traces(env.base, env.net, [stuck_pod, hung]) == {}
    assert rt.ContainerStatus(pb.ContainerStatusRequest(container_id=other),
                              timeout=5).status.state == pb.CONTAINER_RUNNING
    pods.stop(other_pod)
    pods.remove(other_pod)
    assert traces(env.base, env.net, [stuck_pod, hung, other_pod, other]) == {}


def test_a_start_that_completes_after_its_deadline_is_not_left_running_as_created(stuck: Stuck) -> None:
    env, pb, rt = stuck.env, stuck.env.pb, stuck.env.runtime
    sandbox, late = stuck.pod_with_container("late")
    with held(stuck.lock), pytest.raises(grpc.RpcError):
        rt.StartContainer(pb.StartContainerRequest(container_id=late), timeout=2)
    wait_until(lambda: not processes_mentioning(str(stuck.lock)), 30)  # runc start went on and ended
    runc_root = env.base / "state" / "shims" / "stuck" / "runc-root"
    assert {c["id"]: c["status"] for c in oci_containers("runc", runc_root)} == {late: "running"}
    assert rt.ContainerStatus(pb.ContainerStatusRequest(container_id=late),
                              timeout=5).status.state != pb.CONTAINER_CREATED  # it runs: not "created"
    rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sandbox), timeout=30)
    assert [c["status"] for c in oci_containers("runc", runc_root)] in ([], ["stopped"])
    rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox), timeout=30)
    assert traces(env.base, env.net, [sandbox, late]) == {}
