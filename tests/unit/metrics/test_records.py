"""Pods and containers by state and handler, read from the records at each scrape."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from crirt.containers.records import ContainerRecord
from crirt.metrics.records import CONTAINER_STATES, POD_STATES, RecordsCollector
from crirt.model.container import ContainerConfig
from crirt.model.enums import ContainerState
from crirt.model.sandbox import NamespaceOption, PodSandboxConfig
from crirt.sandboxes.records import Phase, SandboxRecord
from crirt.shim.registry import Handler, ShimRegistry


def pod(pod_id: str, phase: Phase, handler: str = "") -> SandboxRecord:
    return SandboxRecord(id=pod_id, config=PodSandboxConfig(), runtime_handler=handler, created_at=1, phase=phase,
                         namespace_options=NamespaceOption())


def container(container_id: str, state: ContainerState, handler: str = "") -> ContainerRecord:
    return ContainerRecord(id=container_id, sandbox_id="p", config=ContainerConfig(), runtime_handler=handler,
                           image_ref="busybox", image_id="sha256:1", bundle="/b", created_at=1, state=state)


def test_counts_follow_the_records_at_each_scrape_with_zeros_for_every_handler_and_state() -> None:
    pods = {"a": pod("a", Phase.READY), "b": pod("b", Phase.READY, "kata"), "c": pod("c", Phase.STOPPED, "runc")}
    containers = {"x": container("x", ContainerState.CONTAINER_RUNNING),
                  "y": container("y", ContainerState.CONTAINER_EXITED, "kata")}
    handlers = ShimRegistry("runc", {"runc": Handler("runc", "runc"), "kata": Handler("kata", "kata")})
    registry = CollectorRegistry()
    registry.register(RecordsCollector(pods.values(), containers.values(), handlers))

    def value(name: str, state: str, handler: str) -> float | None:
        return registry.get_sample_value(name, {"state": state, "handler": handler})

    assert value("crirt_pods", "ready", "runc") == 1  # "" is the default handler
    assert value("crirt_pods", "ready", "kata") == 1
    assert value("crirt_pods", "stopped", "runc") == 1
    assert value("crirt_containers", "running", "runc") == 1
    assert value("crirt_containers", "exited", "kata") == 1
    assert all(value("crirt_pods", state, h) is not None for state in POD_STATES for h in ("runc", "kata"))
    assert all(value("crirt_containers", s, h) is not None for s in CONTAINER_STATES for h in ("runc", "kata"))
    assert POD_STATES == ["creating", "ready", "stopping", "stopped", "removing", "leftover"]
    assert CONTAINER_STATES == ["created", "running", "exited", "unknown"]

    del pods["a"]
    pods["d"] = pod("d", Phase.READY, "gone")  # a handler no longer configured still shows with its pods
    containers["x"] = container("x", ContainerState.CONTAINER_EXITED)
    assert value("crirt_pods", "ready", "runc") == 0
    assert value("crirt_pods", "ready", "gone") == 1
    assert value("crirt_containers", "running", "runc") == 0
    assert value("crirt_containers", "exited", "runc") == 1
