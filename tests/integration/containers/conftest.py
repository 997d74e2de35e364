"""A crirt daemon on a private bridge network, and a local registry serving a runnable busybox image."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from support.daemon import Daemon, start_daemon
from support.images import Layout, busybox_layer, push, unmount_under
from support.network import BridgeNetwork
from support.registry import start_registry


@dataclass
class ContainerEnv:
    """The daemon, its network, the stubs and the test image's reference."""

    daemon: Daemon
    net: BridgeNetwork
    base: Path
    runtime: Any
    images: Any
    pb: ModuleType
    image: str


@contextlib.contextmanager
def container_env(base: Path, pb: ModuleType, extra_config: str,
                  argv: list[str] | None = None) -> Iterator[ContainerEnv]:
    """A registry serving busybox, a bridge network and a daemon (``argv``: another server command) with
    ``extra_config``; everything is removed afterwards. A test may replace ``daemon`` with a restarted one on the
    same socket: the stubs reconnect, and the last one is stopped."""
    registry = start_registry(base / "registry")
    net = BridgeNetwork(base / "d" / "cni")
    daemon = None
    current: ContainerEnv | None = None
    try:
        layout = Layout(base / "layout")
        layout.tag(layout.image([(busybox_layer().bytes(), "gzip")]), "busybox")
        image = f"{registry.host}/library/busybox:1"
        push(layout, "busybox", image)
        net.write()
        daemon = start_daemon(base / "d", extra_config, argv=argv, cni_config="default_network = false\n",
                              registries="")
        with daemon.channel() as channel:
            current = ContainerEnv(daemon, net, base / "d", pb.grpc.RuntimeServiceStub(channel),
                                   pb.grpc.ImageServiceStub(channel), pb, image)
            yield current
    finally:
        if current is not None:
            daemon = current.daemon  # a test may have restarted it
        if daemon is not None:
            daemon.stop()
        net.cleanup(base / "d" / "state")
        unmount_under(base)
        registry.stop()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, pb: ModuleType) -> Iterator[ContainerEnv]:
    """One registry, daemon and network per module; the module checks that nothing is left running. Every stats
    call measures the writable layers anew, so the tests see what a container just wrote."""
    with container_env(tmp_path_factory.mktemp("containers"), pb, "[stats]\nfs_usage_interval = 0\n") as made:
        yield made
