"""ContainerStats, ListContainerStats, StreamContainerStats, PodSandboxStats, ListPodSandboxStats and
StreamPodSandboxStats on real runc containers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from support.network import runc_shim_installed, wait_until

from .conftest import ContainerEnv

pytestmark = pytest.mark.skipif(not runc_shim_installed(), reason="the runc shim plugin is not installed")

BUSY = "while :; do :; done"
IDLE = "trap 'exit 0' TERM; /bin/busybox sleep 1000 & wait"


@pytest.fixture
def pod(env: ContainerEnv, tmp_path: Path) -> Iterator[str]:
    """A ready pod (pod network, no infra container), removed by id afterwards."""
    pb = env.pb
    env.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=env.image)), timeout=60)
    name = f"stats-{tmp_path.name[-12:].lower().replace('_', '-')}"
    linux = pb.LinuxPodSandboxConfig()
    linux.security_context.namespace_options.CopyFrom(pb.NamespaceOption(network=pb.POD, pid=pb.CONTAINER,
                                                                         ipc=pb.POD))
    config = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, namespace="crirt-test", uid=f"uid-{name}"),
        hostname=name, log_directory=str(tmp_path / "logs"), linux=linux, labels={"stats-pod": name})
    sandbox_id = env.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=30).pod_sandbox_id
    yield sandbox_id
    env.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=30)
    env.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=30)


def run(env: ContainerEnv, sandbox_id: str, name: str, script: str, made: list[str], resources: Any = None) -> str:
    """Create and start a busybox container running ``script`` (with optional LinuxContainerResources)."""
    pb = env.pb
    config = pb.ContainerConfig(metadata=pb.ContainerMetadata(name=name), image=pb.ImageSpec(image=env.image),
                                command=["/bin/sh", "-c", script], log_path=f"{name}/0.log", labels={"role": name})
    if resources is not None:
        config.linux.resources.CopyFrom(resources)
    container_id = env.runtime.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=sandbox_id, config=config),
                                               timeout=30).container_id
    made.append(container_id)
    env.runtime.StartContainer(pb.StartContainerRequest(container_id=container_id), timeout=30)
    return container_id


def stats(env: ContainerEnv, container_id: str) -> Any:
    return env.runtime.ContainerStats(env.pb.ContainerStatsRequest(container_id=container_id), timeout=10).stats


def listed(env: ContainerEnv, **wanted: Any) -> set[str]:
    pb = env.pb
    reply = env.runtime.ListContainerStats(pb.ListContainerStatsRequest(filter=pb.ContainerStatsFilter(**wanted)),
                                           timeout=10)
    return {s.attributes.id for s in reply.stats}


def streamed(env: ContainerEnv, **wanted: Any) -> list[Any]:
    """StreamContainerStats' items; the stream always sends at least one message."""
    pb = env.pb
    replies = list(env.runtime.StreamContainerStats(
        pb.StreamContainerStatsRequest(filter=pb.ContainerStatsFilter(**wanted)), timeout=10))
    assert replies
    return [s for reply in replies for s in reply.container_stats]


def code_of(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code()


def test_container_and_pod_stats(env: ContainerEnv, pod: str) -> None:
    pb = env.pb
    made: list[str] = []
    try:
        busy = run(env, pod, "busy", BUSY, made)
        idle = run(env, pod, "idle", IDLE, made)

        first = {c: stats(env, c) for c in (busy, idle)}
        for sample in first.values():
            assert sample.memory.working_set_bytes.value > 0
            assert sample.memory.usage_bytes.value > 0
            assert sample.cpu.timestamp > 0
            assert not sample.cpu.HasField("usage_nano_cores")  # no earlier sample yet
            assert sample.writable_layer.fs_id.mountpoint
            assert sample.writable_layer.HasField("used_bytes")
        assert first[busy].attributes.metadata.name == "busy"
        assert dict(first[busy].attributes.labels) == {"role": "busy"}
        time.sleep(1)
        second = {c: stats(env, c) for c in (busy, idle)}
        assert all(s.cpu.HasField("usage_nano_cores") for s in second.values())
        assert second[busy].cpu.usage_core_nano_seconds.value > 0
        assert second[busy].cpu.usage_nano_cores.value > 10 * second[idle].cpu.usage_nano_cores.value
        assert second[busy].cpu.usage_nano_cores.value > 50_000_000  # a fair share of a core, even on a busy host

        assert listed(env, id=busy[:12]) == {busy}
        assert listed(env, pod_sandbox_id=pod[:12]) == {busy, idle}
        assert listed(env, pod_sandbox_id=pod, label_selector={"role": "idle"}) == {idle}
        assert listed(env, label_selector={"role": "nobody"}) == set()
        assert {busy, idle} <= listed(env)

        sample = env.runtime.PodSandboxStats(pb.PodSandboxStatsRequest(pod_sandbox_id=pod[:12]), timeout=10).stats
        assert sample.attributes.id == pod
        linux = sample.linux
        assert {c.attributes.id for c in linux.containers} == {busy, idle}
        assert linux.cpu.usage_core_nano_seconds.value > 0
        assert linux.memory.working_set_bytes.value > 0
        assert linux.process.process_count.value >= 3  # sh, sh and sleep
        assert linux.HasField("network")
        assert all(i.name != "lo" for i in linux.network.interfaces)

        reply = env.runtime.ListPodSandboxStats(pb.ListPodSandboxStatsRequest(
            filter=pb.PodSandboxStatsFilter(label_selector={"stats-pod": sample.attributes.metadata.name})),
            timeout=10)
        assert [s.attributes.id for s in reply.stats] == [pod]

        done = run(env, pod, "done", "exit 0", made)
        wait_until(lambda: env.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=done), timeout=10)
                   .status.state == pb.CONTAINER_EXITED, timeout=10)
        exited = stats(env, done)
        assert exited.attributes.id == done
        assert not exited.HasField("cpu")
    finally:
        for container_id in made:
            env.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=container_id), timeout=30)


def test_unknown_ids_are_not_found(env: ContainerEnv) -> None:
    pb = env.pb
    assert code_of(lambda: stats(env, "f" * 64)) == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: env.runtime.PodSandboxStats(pb.PodSandboxStatsRequest(pod_sandbox_id="f" * 64),
                                                       timeout=10)) == grpc.StatusCode.NOT_FOUND
    assert listed(env, id="f" * 64) == set()


def test_stream_rpcs_send_what_the_list_rpcs_list(env: ContainerEnv, pod: str) -> None:
    pb = env.pb
    made: list[str] = []
    try:
        first = run(env, pod, "first", IDLE, made)
        second = run(env, pod, "second", IDLE, made)
        for wanted in ({"pod_sandbox_id": pod}, {"id": first[:12]}, {"label_selector": {"role": "second"}},
                       {"id": "f" * 64}, {"pod_sandbox_id": pod, "label_selector": {"role": "nobody"}}):
            stream = streamed(env, **wanted)
            assert sorted(s.attributes.id for s in stream) == sorted(listed(env, **wanted)), wanted
        items = {s.attributes.id: s for s in streamed(env, pod_sandbox_id=pod)}
        assert set(items) == {first, second}
        assert all(s.memory.working_set_bytes.value > 0 and s.writable_layer.HasField("used_bytes")
                   for s in items.values())

        pod_filter = pb.PodSandboxStatsFilter(id=pod[:12])
        replies = list(env.runtime.StreamPodSandboxStats(pb.StreamPodSandboxStatsRequest(filter=pod_filter),
                                                         timeout=10))
        [sample] = [s for reply in replies for s in reply.pod_sandbox_stats]
        assert sample.attributes.id == pod
        assert {c.attributes.id for c in sample.linux.containers} == {first, second}
        assert sample.linux.memory.working_set_bytes.value > 0
        listed_pods = env.runtime.ListPodSandboxStats(pb.ListPodSandboxStatsRequest(filter=pod_filter), timeout=10)
        assert [s.attributes.id for s in listed_pods.stats] == [pod]

        nobody = pb.PodSandboxStatsFilter(label_selector={"stats-pod": "nobody"})
        replies = list(env.runtime.StreamPodSandboxStats(pb.StreamPodSandboxStatsRequest(filter=nobody), timeout=10))
        assert len(replies) == 1 and not replies[0].pod_sandbox_stats
    finally:
        for container_id in made:
            env.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=container_id), timeout=30)
