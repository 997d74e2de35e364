"""The strict wire check that runs before betterproto2 decodes a request."""

from __future__ import annotations

import pytest

from crirt._gen.runtime.v1 import (
    ContainerFilter,
    ContainerStateValue,
    LinuxContainerResources,
    ListContainersRequest,
    PodSandboxConfig,
    PodSandboxMetadata,
    PortMapping,
    RunPodSandboxRequest,
    UpdateContainerResourcesRequest,
)
from crirt.api.wire import WireError, check_message


def valid_request() -> bytes:
    config = PodSandboxConfig(metadata=PodSandboxMetadata(name="a", uid="u", namespace="n"), labels={"k": "v"},
                              port_mappings=[PortMapping(container_port=80, host_port=8080)])
    return bytes(RunPodSandboxRequest(config=config, runtime_handler="runc"))


def test_accepts_what_the_encoder_writes() -> None:
    check_message(valid_request(), RunPodSandboxRequest)
    check_message(bytes(ListContainersRequest(filter=ContainerFilter(state=ContainerStateValue(state=2)))),
                  ListContainersRequest)
    resources = LinuxContainerResources(cpu_shares=2, cpuset_cpus="0-1", unified={"memory.high": "1G"})
    check_message(bytes(UpdateContainerResourcesRequest(container_id="c", linux=resources)),
                  UpdateContainerResourcesRequest)


def test_accepts_unknown_fields_that_are_well_formed() -> None:
    check_message(valid_request() + b"\xf8\x07\x01" + b"\xfa\x07\x02hi", RunPodSandboxRequest)


@pytest.mark.parametrize(("body", "where", "reason"), [
    (b"\x12\x05run", "runtime_handler", "runs past the end"),
    (b"\x12\x02\xc3\x28", "runtime_handler", "invalid UTF-8"),
    (b"\x0a\x02\x0a\x05", "config.metadata", "runs past the end"),
    (b"\x0a\x03\x0a\x01\x80", "config.metadata", "truncated varint"),
    (b"\x08\x01", "config", "wire type 0 does not match field type message"),
    (b"\x15\x00\x00\x00\x00", "runtime_handler", "wire type 5 does not match"),
    (b"\x0b", "config", "wire type 3"),
    (b"\x00\x01", "", "field number 0"),
    (b"\xf8\x07" + b"\xff" * 10 + b"\x01", "<unknown field 127>", "varint"),
    (b"\x0a\x04\x2a\x02\x0a\x00", "config.port_mappings.protocol", "wire type 2 does not match field type enum"),
])
def test_rejects_malformed_bytes_naming_the_field(body: bytes, where: str, reason: str) -> None:
    with pytest.raises(WireError) as info:
        check_message(body, RunPodSandboxRequest)
    assert info.value.field == where
    assert reason in info.value.reason


def test_rejects_bad_map_entries_and_nested_values() -> None:
    with pytest.raises(WireError, match=r"config\.labels\.value: invalid UTF-8"):
        check_message(b"\x0a\x07\x32\x05\x12\x03\xff\xfe\xfd", RunPodSandboxRequest)
    with pytest.raises(WireError, match=r"^linux: truncated varint"):
        check_message(b"\x12\x03\x18\x01\x80", UpdateContainerResourcesRequest)
