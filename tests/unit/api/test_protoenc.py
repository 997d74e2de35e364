"""crirt.api.protoenc writes what betterproto would: every sample decodes to the same message."""

from __future__ import annotations

import betterproto2
import pytest

import crirt._gen.runtime.v1 as gen
from crirt.api.convert import to_command, to_message
from crirt.api.protoenc import encode
from crirt.commands.containers import ListContainersResult
from crirt.commands.stats import ListPodSandboxStatsResult
from crirt.model.base import Model

from .test_convert import ROUND_TRIPS


def u(value: int) -> gen.UInt64Value:
    return gen.UInt64Value(value=value)


STATS = gen.ListPodSandboxStatsResponse(stats=[gen.PodSandboxStats(
    attributes=gen.PodSandboxAttributes(id="p1", metadata=gen.PodSandboxMetadata(name="p", uid="u", namespace="n",
                                                                                 attempt=2),
                                        labels={"a": "b", "": "empty key"}, annotations={"k": ""}),
    linux=gen.LinuxPodSandboxStats(
        cpu=gen.CpuUsage(timestamp=1, usage_core_nano_seconds=u(0), usage_nano_cores=u(2**64 - 1),
                         psi=gen.PsiStats(full=gen.PsiData(total=3, avg_10=0.5, avg_60=0.0, avg_300=12.25))),
        memory=gen.MemoryUsage(timestamp=2, working_set_bytes=u(1 << 40)),
        network=gen.NetworkUsage(timestamp=3, default_interface=gen.NetworkInterfaceUsage(name="eth0", rx_bytes=u(9)),
                                 interfaces=[gen.NetworkInterfaceUsage(name="eth0", rx_bytes=u(9)),
                                             gen.NetworkInterfaceUsage(name="eth1")]),
        containers=[gen.ContainerStats(attributes=gen.ContainerAttributes(id="c1"),
                                       writable_layer=gen.FilesystemUsage(
                                           fs_id=gen.FilesystemIdentifier(mountpoint="/x"), used_bytes=u(4096)))],
    )), gen.PodSandboxStats()])

SAMPLES: list[tuple[betterproto2.Message, type[Model]]] = [*ROUND_TRIPS, (STATS, ListPodSandboxStatsResult)]


@pytest.mark.parametrize(("message", "model_type"), SAMPLES, ids=[type(m).__name__ for m, _ in SAMPLES])
def test_encoding_decodes_to_the_same_message(message: betterproto2.Message, model_type: type[Model]) -> None:
    model = to_command(type(message).parse(bytes(message)), model_type)
    encoded = encode(model, type(message))
    assert type(message).parse(encoded) == message
    assert type(message).parse(encoded) == to_message(model, type(message))


def test_defaults_are_left_out_and_set_messages_kept() -> None:
    listed = to_command(gen.ListContainersResponse(containers=[gen.Container()]), ListContainersResult)
    assert encode(listed, gen.ListContainersResponse) == b"\x0a\x00"  # one empty Container, nothing inside it
