"""Cached listing encoders produce exactly the bytes a full encode would, and re-encode only changes."""

from __future__ import annotations

from crirt._gen.runtime.v1 import ListContainersResponse, ListPodSandboxResponse
from crirt.api import encoders
from crirt.api.convert import to_message
from crirt.commands.containers import ListContainersResult
from crirt.commands.sandboxes import ListPodSandboxResult
from crirt.model.container import Container, ContainerMetadata
from crirt.model.enums import ContainerState
from crirt.model.sandbox import PodSandbox, PodSandboxMetadata


def containers(n: int) -> list[Container]:
    return [Container(id=f"{i:064x}", pod_sandbox_id="p", metadata=ContainerMetadata(name=f"c{i}", attempt=i),
                      state=ContainerState.CONTAINER_RUNNING, created_at=10**18 + i, labels={"app": "x" * i})
            for i in range(200)]


def test_matches_a_full_encode_for_each_listing_rpc() -> None:
    items = containers(200)
    result = ListContainersResult(containers=items)
    assert encoders.hot_path_encoders()["ListContainers"](result) == bytes(to_message(result, ListContainersResponse))
    sandboxes = [PodSandbox(id=f"s{i}", metadata=PodSandboxMetadata(name="p", uid=f"u{i}")) for i in range(5)]
    pods = ListPodSandboxResult(items=sandboxes)
    assert encoders.hot_path_encoders()["ListPodSandbox"](pods) == bytes(to_message(pods, ListPodSandboxResponse))
    assert encoders.hot_path_encoders()["ListContainers"](ListContainersResult()) == b""


def test_only_changed_objects_are_re_encoded(monkeypatch) -> None:
    encoded: list[str] = []
    real = encoders.encode

    def counting(model, message_type):
        encoded.append(model.id)
        return real(model, message_type)

    monkeypatch.setattr(encoders, "encode", counting)
    encode = encoders.hot_path_encoders()["ListContainers"]
    items = containers(200)
    encode(ListContainersResult(containers=items))
    assert len(encoded) == 200
    encoded.clear()
    items[3] = items[3].model_copy(update={"state": ContainerState.CONTAINER_EXITED})
    body = encode(ListContainersResult(containers=items))
    assert encoded == [items[3].id]
    decoded = ListContainersResponse.FromString(body)
    assert decoded.containers[3].state == ContainerState.CONTAINER_EXITED.value
