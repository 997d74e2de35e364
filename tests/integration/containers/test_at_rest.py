"""What a node costs at rest, as behaviour: query RPCs run no program, exits arrive as events (and a missed one
is swept up), and a loaded daemon never stalls its event loop in crirt's own code.

The daemon is crirt as ``crirt serve`` runs it, plus a probe that counts every program it starts
(``support/instrumented_server.py``), with the loop-stall watchdog on at a generous 250 ms.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from support.network import runc_shim_installed, wait_until

import crirt

from .conftest import ContainerEnv, container_env

pytestmark = pytest.mark.skipif(not runc_shim_installed(), reason="the runc shim plugin is not installed")

CRIRT_PACKAGE = str(Path(crirt.__file__).parent) + os.sep
INSTRUMENTED = Path(__file__).resolve().parents[2] / "support" / "instrumented_server.py"
SWEEP_SECONDS = 2
EXTRA_CONFIG = f"""
[debug]
loop_stall_ms = 250

[runtimes.runc]
shim = "runc"
options = {{ exit_sweep_interval = {SWEEP_SECONDS} }}
"""
IDLE = "trap 'exit 0' TERM; /bin/busybox sleep 1000 & wait"


@pytest.fixture(scope="module")
def rest(tmp_path_factory: pytest.TempPathFactory, pb: ModuleType) -> Iterator[ContainerEnv]:
    base = tmp_path_factory.mktemp("at-rest")
    (base / "markers").mkdir()
    with container_env(base, pb, EXTRA_CONFIG, [sys.executable, str(INSTRUMENTED), str(base / "markers")]) as env:
        env.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=env.image)), timeout=60)
        yield env


class Node:
    """Pods with one container each, made by one test and removed by id at its end."""

    def __init__(self, env: ContainerEnv, logs: Path) -> None:
        self.env, self.pb, self.rt, self.logs = env, env.pb, env.runtime, logs
        self.pods: list[str] = []

    def pod(self, name: str, pid: str = "CONTAINER") -> str:
        pb = self.pb
        linux = pb.LinuxPodSandboxConfig()
        linux.security_context.namespace_options.CopyFrom(pb.NamespaceOption(network=pb.POD, pid=getattr(pb, pid),
                                                                             ipc=pb.POD))
        config = pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name=name, namespace="rest", uid=f"u-{name}"),
                                     hostname=name, log_directory=str(self.logs / name), linux=linux)
        sandbox_id = self.rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=30).pod_sandbox_id
        self.pods.append(sandbox_id)
        return sandbox_id

    def container(self, sandbox_id: str, name: str, script: str = IDLE) -> str:
        pb = self.pb
        config = pb.ContainerConfig(metadata=pb.ContainerMetadata(name=name), image=pb.ImageSpec(image=self.env.image),
                                    command=["/bin/sh", "-c", script], log_path=f"{name}.log")
        container_id = self.rt.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=sandbox_id, config=config),
                                               timeout=30).container_id
        self.rt.StartContainer(pb.StartContainerRequest(container_id=container_id), timeout=30)
        return container_id

    def status(self, container_id: str, verbose: bool = False) -> Any:
        return self.rt.ContainerStatus(self.pb.ContainerStatusRequest(container_id=container_id, verbose=verbose),
                                       timeout=10)

    def remove_all(self) -> None:
        for sandbox_id in self.pods:
            self.rt.StopPodSandbox(self.pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=30)
            self.rt.RemovePodSandbox(self.pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=30)


@pytest.fixture
def node(rest: ContainerEnv, tmp_path: Path) -> Iterator[Node]:
    made = Node(rest, tmp_path / "logs")
    yield made
    made.remove_all()


def in_crirt(frame: str) -> bool:
    """Whether a formatted stack frame is crirt's own code, other than the frame that runs the loop itself."""
    match = re.search(r'File "([^"]+)", line \d+, in (\S+)', frame)
    if match is None or not match.group(1).startswith(CRIRT_PACKAGE):
        return False
    return match.group(1) != f"{CRIRT_PACKAGE}server.py" or match.group(2) != "run"


def spawns(env: ContainerEnv) -> int:
    return int(env.runtime.Version(env.pb.VersionRequest(version="spawns"), timeout=10).runtime_version)


def test_query_rpcs_run_no_program(node: Node) -> None:
    """Every Status, List and stats RPC the kubelet polls, verbose or not, answers from memory and the kernel's
    files: the daemon starts no program (no runc state, no runc events) while answering them."""
    pb, rt, images = node.pb, node.rt, node.env.images
    plain, infra = node.pod("plain"), node.pod("infra", pid="POD")
    containers = [node.container(plain, "a"), node.container(infra, "b")]
    before = spawns(node.env)
    assert before > 0  # the probe sees the programs crirt does start (conmon, runc, CNI plugins)
    for _ in range(3):
        rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10)
        rt.ListContainers(pb.ListContainersRequest(), timeout=10)
        rt.Status(pb.StatusRequest(verbose=True), timeout=10)
        listed = rt.ListContainerStats(pb.ListContainerStatsRequest(), timeout=10).stats
        pods = rt.ListPodSandboxStats(pb.ListPodSandboxStatsRequest(), timeout=10).stats
        rt.ListPodSandboxMetrics(pb.ListPodSandboxMetricsRequest(), timeout=10)
        rt.ListMetricDescriptors(pb.ListMetricDescriptorsRequest(), timeout=10)
        images.ListImages(pb.ListImagesRequest(), timeout=10)
        images.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=node.env.image), verbose=True), timeout=10)
        images.ImageFsInfo(pb.ImageFsInfoRequest(), timeout=10)
        for sandbox_id in (plain, infra):
            rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id, verbose=True), timeout=10)
            rt.PodSandboxStats(pb.PodSandboxStatsRequest(pod_sandbox_id=sandbox_id), timeout=10)
        for container_id in containers:
            info = json.loads(node.status(container_id, verbose=True).info["info"])
            assert info["pid"] > 0 and Path(f"/proc/{info['pid']}").exists()
            rt.ContainerStats(pb.ContainerStatsRequest(container_id=container_id), timeout=10)
    assert spawns(node.env) == before
    # and the answers are real readings of the kernel's files
    by_id = {s.attributes.id: s for s in listed}
    assert all(by_id[c].memory.working_set_bytes.value > 0 and by_id[c].cpu.usage_core_nano_seconds.value > 0
               for c in containers)
    infra_stats = next(p for p in pods if p.attributes.id == infra)
    assert infra_stats.linux.network.default_interface.name == "eth0"
    infra_info = json.loads(rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=infra, verbose=True),
                                                timeout=10).info["info"])["infraContainer"]
    assert infra_info["status"] == "running" and Path(f"/proc/{infra_info['pid']}/comm").read_text() == "catatonit\n"


def test_an_exit_arrives_as_an_event(node: Node) -> None:
    """A container whose process is killed from outside crirt (no RPC involved) is seen EXITED: conmon's exit
    file wakes the one watcher."""
    container = node.container(node.pod("killed"), "victim")
    pid = json.loads(node.status(container, verbose=True).info["info"])["pid"]
    os.kill(pid, signal.SIGKILL)
    done = wait_until(lambda: (s := node.status(container).status).state == node.pb.CONTAINER_EXITED and s, 10)
    assert (done.exit_code, done.reason) == (137, "Error")


def test_an_exit_no_event_reports_is_found_by_the_sweep(node: Node) -> None:
    """conmon killed first, then the container: no exit file is ever written. The slow sweep (every
    ``SWEEP_SECONDS`` here) asks runc, finds the container stopped and records conmon's "unknown" exit code."""
    container = node.container(node.pod("unwatched"), "orphan")
    pid = json.loads(node.status(container, verbose=True).info["info"])["pid"]
    conmon = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])  # the container's parent
    assert Path(f"/proc/{conmon}/comm").read_text().strip() == "conmon"
    os.kill(conmon, signal.SIGKILL)
    os.kill(pid, signal.SIGKILL)
    done = wait_until(lambda: (s := node.status(container).status).state == node.pb.CONTAINER_EXITED and s,
                      SWEEP_SECONDS * 10)
    assert done.exit_code == 255


def test_a_loaded_daemon_never_stalls_its_loop_in_crirt_code(node: Node) -> None:
    """Pods started and torn down in parallel while other clients poll stats and lists: the watchdog (250 ms)
    must report no stall whose stack runs through crirt's own code."""
    pb, rt = node.pb, node.rt
    stop = threading.Event()
    errors: list[BaseException] = []

    def poll() -> None:
        try:
            while not stop.is_set():
                rt.ListContainerStats(pb.ListContainerStatsRequest(), timeout=30)
                rt.ListPodSandboxStats(pb.ListPodSandboxStatsRequest(), timeout=30)
                rt.ListContainers(pb.ListContainersRequest(), timeout=30)
                rt.Status(pb.StatusRequest(), timeout=30)
        except BaseException as exc:
            errors.append(exc)

    def churn(index: int) -> None:
        try:
            pods = Node(node.env, node.logs / f"churn-{index}")
            for round_ in range(3):
                pod = pods.pod(f"churn-{index}-{round_}")
                pods.container(pod, "c")
                node.status(pods.container(pod, "d"), verbose=True)
            pods.remove_all()
        except BaseException as exc:
            errors.append(exc)

    pollers = [threading.Thread(target=poll) for _ in range(2)]
    workers = [threading.Thread(target=churn, args=(i,)) for i in range(4)]
    for thread in pollers + workers:
        thread.start()
    for thread in workers:
        thread.join(300)
    stop.set()
    for thread in pollers:
        thread.join(60)
    assert not errors, errors
    info = rt.Status(pb.StatusRequest(verbose=True), timeout=10).info
    stalls = json.loads(info["loopStalls"])
    ours = [s for s in stalls if any(in_crirt(frame) for frame in s["stack"])]
    assert not ours, "\n\n".join(f"{s['ms']} ms:\n" + "\n".join(s["stack"][-8:]) for s in ours)
