"""cri-tools' own clients against crirt: a local registry holding critest's images under their upstream names
(mirror mode), a private bridge network with portmap, and one crirt daemon per test module."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.critest_images import mirror_config, publish
from support.daemon import Daemon, start_daemon
from support.images import unmount_under
from support.network import NEEDS_RUNC_SHIM_REASON, BridgeNetwork, kill_containers_under, runc_shim_installed
from support.registry import Registry, start_registry
from support.shared import shared_dir
from support.userns import searchable_tmpdir

CRI_TOOLS = shared_dir() / "tools" / "cri-tools"
"""critest and crictl v1.36.0, static binaries (``../shared/tools/cri-tools`` beside a clean clone)."""

pytestmark = pytest.mark.skipif(not runc_shim_installed(), reason=NEEDS_RUNC_SHIM_REASON)


@dataclass
class Mirror:
    """The registry serving critest's images and the image id of each upstream reference."""

    registry: Registry
    ids: dict[str, str]


@dataclass
class CriEnv:
    """A daemon reached through cri-tools: its endpoint and an empty config file for ``--config``."""

    daemon: Daemon
    empty_config: Path
    base: Path

    def endpoint_args(self) -> list[str]:
        return ["--config", str(self.empty_config), "--runtime-endpoint", self.daemon.endpoint,
                "--image-endpoint", self.daemon.endpoint]


@pytest.fixture(scope="session")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mirror]:
    """The images critest pulls, built once per session and pushed to a registry on 127.0.0.1."""
    base = tmp_path_factory.mktemp("critest-registry")
    registry = start_registry(base / "registry")
    try:
        yield Mirror(registry, publish(base / "layout", registry.host))
    finally:
        registry.stop()


@pytest.fixture(scope="module")
def cri_env(mirror: Mirror) -> Iterator[CriEnv]:
    """A crirt daemon whose upstream registries are mirrored to ``mirror`` only, on a private bridge network;
    whatever its pods leave behind is removed afterwards."""
    for tool in ("critest", "crictl"):
        assert (CRI_TOOLS / tool).is_file(), f"{CRI_TOOLS / tool} is missing (cri-tools belong in shared/tools)"
    base = searchable_tmpdir("crirt-cri-tools-")  # the UserNamespaces specs run pods with a user namespace
    net = BridgeNetwork(base / "d" / "cni")
    net.write()
    empty = base / "crictl.yaml"
    empty.write_text("")
    daemon = None
    try:
        daemon = start_daemon(base / "d", cni_config="default_network = false\n",
                              registries=mirror_config(mirror.registry.host))
        yield CriEnv(daemon, empty, base)
    finally:
        if daemon is not None:
            daemon.stop()
        kill_containers_under(base / "d" / "state")
        net.cleanup(base / "d" / "state")
        unmount_under(base)
        shutil.rmtree(base, ignore_errors=True)
