"""Sandbox records: phases, name reservation keys, the listing derived from a record."""

from __future__ import annotations

from pathlib import Path

from crirt.model.common import NamespaceOption
from crirt.model.enums import PodSandboxState
from crirt.model.sandbox import PodSandboxConfig, PodSandboxMetadata
from crirt.sandboxes.records import Phase, PodPaths, SandboxRecord, name_key


def record(phase: Phase) -> SandboxRecord:
    config = PodSandboxConfig(metadata=PodSandboxMetadata(name="n", namespace="ns", uid="u", attempt=2),
                              labels={"a": "b"}, annotations={"c": "d"})
    return SandboxRecord(id="abc", config=config, runtime_handler="runc", created_at=5, phase=phase,
                         namespace_options=NamespaceOption())


def test_name_key_is_namespace_name_uid_attempt() -> None:
    assert record(Phase.READY).name_key == "ns/n/u/2" == name_key(PodSandboxMetadata(name="n", namespace="ns",
                                                                                     uid="u", attempt=2))


def test_only_ready_is_ready_and_half_made_or_leftover_is_not_listed() -> None:
    assert record(Phase.READY).state == PodSandboxState.SANDBOX_READY
    for phase in (Phase.STOPPING, Phase.STOPPED, Phase.REMOVING):
        assert record(phase).state == PodSandboxState.SANDBOX_NOTREADY and record(phase).listed
    assert not record(Phase.CREATING).listed and not record(Phase.LEFTOVER).listed


def test_listing_and_round_trip() -> None:
    item = record(Phase.READY).listing()
    assert (item.id, item.created_at, item.labels, item.annotations, item.runtime_handler) == (
        "abc", 5, {"a": "b"}, {"c": "d"}, "runc")
    again = SandboxRecord.model_validate_json(record(Phase.STOPPING).model_dump_json())
    assert again == record(Phase.STOPPING)


def test_pod_paths() -> None:
    paths = PodPaths(Path("/run/crirt/pods"), "abc")
    assert paths.namespace("net") == Path("/run/crirt/pods/abc/net")
    assert (paths.shm.name, paths.hosts.name, paths.resolv_conf.name, paths.infra_bundle.name) == (
        "shm", "hosts", "resolv.conf", "infra")
