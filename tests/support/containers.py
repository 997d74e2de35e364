"""A crirt daemon on a private bridge network with a local registry serving a runnable busybox image, and the
checks container tests share: conmon monitors by container id, GetContainerEvents read in a thread."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
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


def conmons_under(base: Path) -> dict[int, str]:
    """conmon processes whose command line mentions ``base``: pid -> container id (its ``-c`` argument)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"conmon") and any(str(base).encode() in a for a in argv) and b"-c" in argv:
            found[int(entry.name)] = argv[argv.index(b"-c") + 1].decode()
    return found


class Events:
    """GetContainerEvents read in a thread: (type name, container id) pairs."""

    def __init__(self, env: ContainerEnv) -> None:
        self.pb = env.pb
        self.stream = env.runtime.GetContainerEvents(env.pb.GetEventsRequest())
        self.seen: list[tuple[str, str]] = []
        self.raw: list[Any] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for event in self.stream:
                self.raw.append(event)
                self.seen.append((self.pb.ContainerEventType.Name(event.container_event_type),
                                  event.container_id))
        except grpc.RpcError:
            pass

    def of(self, container_id: str) -> list[str]:
        return [kind for kind, cid in self.seen if cid == container_id]

    def close(self) -> None:
        self.stream.cancel()
        self.thread.join(5)
