"""A registry that stalls mid-blob: ``FaultProxy`` in front of the test registry sends half of the image's layer
and then nothing. The pull must fail within the stall timeout (2 s here) with a clear error, the daemon must
answer meanwhile, no partial blob may stay in the content store's ingest dir, and a pull from a healthy
endpoint must then succeed; a mirror that stalls must give way to the registry itself."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest
from support.daemon import Daemon, start_daemon
from support.images import Client, Layout, busybox_layer, push
from support.registry import FaultProxy, Faults, Registry, ServiceLoop, start_registry

STALL_TIMEOUT = 2.0
SETTINGS = f"[images]\nstall_timeout = {STALL_TIMEOUT}\nmax_retries = 1\n"


@dataclass
class Stalling:
    """The test registry with busybox, and a proxy in front of it that stalls half-way through the layer."""

    registry: Registry
    proxy: FaultProxy
    path: str
    """The image's repository and tag."""
    image_id: str
    layer_size: int


@pytest.fixture(scope="module")
def stalling(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stalling]:
    base = tmp_path_factory.mktemp("stall")
    registry = start_registry(base / "registry")
    services = ServiceLoop()
    try:
        layout = Layout(base / "layout")
        descriptor = layout.image([(busybox_layer().bytes(), "gzip")])
        layout.tag(descriptor, "busybox")
        push(layout, "busybox", f"{registry.host}/library/busybox:stall")
        manifest = json.loads(layout.read(descriptor["digest"]))
        layer_size = manifest["layers"][0]["size"]
        proxy = FaultProxy(registry.url, Faults(stall_blob_after=layer_size // 2))
        proxy.start(services)
        yield Stalling(registry, proxy, "library/busybox:stall", manifest["config"]["digest"], layer_size)
    finally:
        services.close()
        registry.stop()


def start(tmp_path: Path, stalling: Stalling, mirrored: bool) -> Daemon:
    """A daemon with a 2 s stall timeout; ``mirrored``: the stalling proxy is the registry's mirror."""
    mirror = f'[registries."{stalling.registry.host}"]\nmirrors = ["http://{stalling.proxy.host}"]\n'
    return start_daemon(tmp_path / "d", SETTINGS, registries=mirror if mirrored else "")


@contextlib.contextmanager
def client(daemon: Daemon, pb: ModuleType) -> Iterator[tuple[Client, Any]]:
    """The daemon's image client and runtime stub; the daemon is stopped afterwards."""
    try:
        with daemon.channel() as channel:
            yield Client(daemon, pb, pb.grpc.ImageServiceStub(channel)), pb.grpc.RuntimeServiceStub(channel)
    finally:
        daemon.stop()


def ingest(daemon: Daemon) -> list[str]:
    """What the content store holds half-received."""
    return [p.name for p in (daemon.root / "images" / "content" / "ingest").iterdir()]


def layer_gets(stalling: Stalling) -> list[str]:
    """The layer downloads the proxy served (and stalled half-way)."""
    return [path for path in stalling.proxy.blob_gets() if stalling.image_id[7:] not in path]


def test_a_registry_that_stalls_mid_layer_fails_the_pull_cleanly(tmp_path: Path, stalling: Stalling,
                                                                 pb: ModuleType) -> None:
    with client(start(tmp_path, stalling, mirrored=False), pb) as (images, runtime):
        stalling.proxy.requests.clear()
        started = time.monotonic()
        pulling = images.stub.PullImage.future(pb.PullImageRequest(image=pb.ImageSpec(
            image=f"{stalling.proxy.host}/{stalling.path}")), timeout=STALL_TIMEOUT * 4 + 10)
        assert runtime.Version(pb.VersionRequest(), timeout=1).runtime_name == "crirt"  # served meanwhile
        assert images.stub.ListImages(pb.ListImagesRequest(), timeout=1).images == []
        with pytest.raises(grpc.RpcError) as info:
            pulling.result()
        elapsed = time.monotonic() - started
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value.details()
        assert f"sent nothing for {STALL_TIMEOUT:.0f}s" in info.value.details()
        assert STALL_TIMEOUT <= elapsed < STALL_TIMEOUT * 2 + 3
        assert layer_gets(stalling)  # the layer was asked for (and stalled), not refused earlier
        assert ingest(images.daemon) == [] and images.leftovers() == set()
        assert images.images() == []
        assert images.pull(f"{stalling.registry.host}/{stalling.path}") == stalling.image_id  # a healthy endpoint
        assert [i.id for i in images.images()] == [stalling.image_id]
        assert ingest(images.daemon) == []


def test_a_mirror_that_stalls_mid_layer_gives_way_to_the_registry(tmp_path: Path, stalling: Stalling,
                                                                   pb: ModuleType) -> None:
    with client(start(tmp_path, stalling, mirrored=True), pb) as (images, _):
        stalling.proxy.requests.clear()
        started = time.monotonic()
        assert images.pull(f"{stalling.registry.host}/{stalling.path}") == stalling.image_id
        assert layer_gets(stalling)  # the mirror was asked first and stalled
        assert STALL_TIMEOUT <= time.monotonic() - started < STALL_TIMEOUT * 2 + 3
        assert ingest(images.daemon) == []
        assert [i.id for i in images.images()] == [stalling.image_id]
