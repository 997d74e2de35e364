"""A crirt daemon with two Kata handlers: ``kata`` as a user would configure it (Kata's shim, not installed
here) and ``kata-runc``, the same plugin and driver pointed at Debian's ``containerd-shim-runc-v2``, which
speaks the same task API. Plus a local registry with a busybox image and a private bridge network."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from conftest import pb  # noqa: F401 - crirt's grpcio stubs fixture, shared with crirt's own tests
from support.daemon import Daemon, start_daemon
from support.images import Layout, busybox_layer, push, unmount_under
from support.network import BridgeNetwork
from support.registry import start_registry

HANDLER = "kata-runc"
MISSING_HANDLER = "kata"
RUNC_SHIM = "containerd-shim-runc-v2"
RUNC_ROOT = Path("/run/containerd/runc/crirt")
"""Where containerd-shim-runc-v2 keeps runc's state for crirt's namespace (its default root + namespace)."""
RUNTIME_CONFIG = (f'[runtimes.{MISSING_HANDLER}]\nshim = "kata"\n'
                  f'[runtimes.{HANDLER}]\nshim = "kata"\noptions = {{ binary = "{RUNC_SHIM}" }}\n')

MISSING = [tool for tool in (RUNC_SHIM, "runc", "catatonit") if not shutil.which(tool)]
if os.geteuid() != 0 or MISSING or not Path("/bin/busybox").exists():
    pytest.skip(f"needs root, {RUNC_SHIM}, runc, catatonit and busybox-static "
                f"(missing: {', '.join(MISSING) or 'root'})", allow_module_level=True)


@dataclass
class KataEnv:
    """The daemon, its network, the stubs and the test image's reference."""

    daemon: Daemon
    net: BridgeNetwork
    base: Path
    runtime: Any
    images: Any
    pb: ModuleType
    image: str

    @property
    def shim_state(self) -> Path:
        return self.base / "state" / "shims" / HANDLER


def shim_processes(shim_state: Path) -> list[int]:
    """Pids of the shim daemons started by the driver working in ``shim_state`` (found by their -address)."""
    marker = str(shim_state / "shim.sock").encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = Path(entry.path, "cmdline").read_bytes().split(b"\0")
            if os.path.basename(argv[0]) == RUNC_SHIM.encode() and marker in argv:
                found.append(int(entry.name))
    return found


def remove_everything(base: Path) -> None:
    """Delete the runc containers whose bundles are under ``base`` and kill the driver's shims, by pid."""
    listed = subprocess.run(["runc", "--root", str(RUNC_ROOT), "list", "--format", "json"], capture_output=True,
                            text=True, check=False)
    for container in json.loads(listed.stdout or "null") or []:
        if container.get("bundle", "").startswith(f"{base}/"):
            subprocess.run(["runc", "--root", str(RUNC_ROOT), "delete", "--force", container["id"]],
                           capture_output=True, check=False)
    for pid in shim_processes(base / "state" / "shims" / HANDLER):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, pb: ModuleType) -> Iterator[KataEnv]:  # noqa: F811
    """One registry, daemon and network per module. A test may replace ``daemon`` with a restarted one on the
    same socket; the last one is stopped."""
    base = tmp_path_factory.mktemp("kata")
    registry = start_registry(base / "registry")
    net = BridgeNetwork(base / "d" / "cni")
    current: KataEnv | None = None
    daemon = None
    try:
        layout = Layout(base / "layout")
        layout.tag(layout.image([(busybox_layer().bytes(), "gzip")]), "busybox")
        image = f"{registry.host}/library/busybox:1"
        push(layout, "busybox", image)
        net.write()
        daemon = start_daemon(base / "d", RUNTIME_CONFIG, cni_config="default_network = false\n", registries="")
        with daemon.channel() as channel:
            current = KataEnv(daemon, net, base / "d", pb.grpc.RuntimeServiceStub(channel),
                              pb.grpc.ImageServiceStub(channel), pb, image)
            yield current
    finally:
        if current is not None:
            daemon = current.daemon
        if daemon is not None:
            daemon.stop()
        remove_everything(base / "d")
        net.cleanup(base / "d" / "state")
        unmount_under(base)
        registry.stop()
