"""A crirt daemon with a ``runsc`` handler served by the gvisor shim, on a private bridge network, and a local
registry serving a busybox image; everything the tests make (runsc sandboxes, conmons, holders, mounts, the
network) is removed at the end whatever happened."""

from __future__ import annotations

import contextlib
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

HANDLER = "runsc"
RUNTIME_CONFIG = f'[runtimes.{HANDLER}]\nshim = "gvisor"\noptions = {{ network = "host" }}\n'

MISSING = [tool for tool in ("runsc", "conmon", "catatonit", "nsenter") if not shutil.which(tool)]
MISSING += [] if Path("/bin/busybox").exists() else ["/bin/busybox"]
MISSING += [] if os.geteuid() == 0 else ["root"]
needs_gvisor = pytest.mark.skipif(bool(MISSING), reason="needs root, runsc, conmon, catatonit, nsenter and "
                                  f"busybox-static (Debian: runsc conmon catatonit util-linux busybox-static); "
                                  f"missing: {', '.join(MISSING)}")


@dataclass
class GvisorEnv:
    """The daemon, its network, the stubs and the test image's reference."""

    daemon: Daemon
    net: BridgeNetwork
    base: Path
    runtime: Any
    images: Any
    pb: ModuleType
    image: str

    @property
    def runsc_root(self) -> Path:
        return self.base / "state" / "shims" / HANDLER / "runsc-root"

    @property
    def shim_state(self) -> Path:
        return self.base / "state" / "shims" / HANDLER


def runsc_processes(runsc_root: Path) -> list[tuple[int, list[str]]]:
    """(pid, argv) of every runsc process (sandbox, gofer, wait, exec) working on ``runsc_root``."""
    found = []
    marker = f"--root={runsc_root}".encode()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            argv = Path(entry.path, "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in argv:
            found.append((int(entry.name), [a.decode(errors="replace") for a in argv if a]))
    return found


def remove_everything(env_base: Path) -> None:
    """Delete every runsc container under the daemon's state and kill every process working for it, by pid."""
    root = env_base / "state" / "shims" / HANDLER / "runsc-root"
    flags = [f"--root={root}", "--network=host", "--platform=ptrace"]
    if root.is_dir():
        listed = subprocess.run(["runsc", *flags, "list", "-quiet"], capture_output=True, text=True, check=False)
        for container_id in listed.stdout.split():
            subprocess.run(["runsc", *flags, "delete", "--force", container_id], capture_output=True, check=False)
    for pid, _ in runsc_processes(root):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for pid_file in (env_base / "state" / "shims" / HANDLER / "containers").glob("*/*pid"):
        with contextlib.suppress(ValueError, OSError):
            pid = int(pid_file.read_text())
            if pid_file.parent.name.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, pb: ModuleType) -> Iterator[GvisorEnv]:  # noqa: F811
    base = tmp_path_factory.mktemp("gvisor")
    registry = start_registry(base / "registry")
    net = BridgeNetwork(base / "d" / "cni")
    daemon = None
    try:
        layout = Layout(base / "layout")
        layout.tag(layout.image([(busybox_layer().bytes(), "gzip")]), "busybox")
        image = f"{registry.host}/library/busybox:1"
        push(layout, "busybox", image)
        net.write()
        daemon = start_daemon(base / "d", RUNTIME_CONFIG, cni_config="default_network = false\n", registries="")
        with daemon.channel() as channel:
            yield GvisorEnv(daemon, net, base / "d", pb.grpc.RuntimeServiceStub(channel),
                            pb.grpc.ImageServiceStub(channel), pb, image)
    finally:
        if daemon is not None:
            daemon.stop()
        remove_everything(base / "d")
        net.cleanup(base / "d" / "state")
        unmount_under(base)
        registry.stop()
