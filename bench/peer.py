"""The peer for side-by-side benchmarks: Debian's containerd with its CRI plugin, next to crirt.

``containerd(base, registries)`` and ``crirt(base, registries)`` each start one runtime on private
socket, root and state directories under ``base``, configured to pull from the given local registries
(``127.0.0.1:<port>``) over plain HTTP, and yield its CRI endpoint. A benchmark then runs the same workload
against both with the same grpcio client (``compile_stubs``). containerd is configured as a node would
have it for that registry (a ``hosts.toml`` per registry under ``config_path``), with its defaults
otherwise: the overlayfs snapshotter and ``max_concurrent_downloads = 3``, the same as crirt's.

Run it alone to check that both runtimes start and answer ``Version``:
``python bench/peer.py``.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from list_containers import compile_stubs, server_process

__all__ = ["compile_stubs", "containerd", "crirt", "unmount_under"]


def _containerd_config(base: Path, registries: list[str]) -> Path:
    for directory in ("root", "state", "opt", "cni", "certs.d"):
        (base / directory).mkdir(parents=True, exist_ok=True)
    for host in registries:
        (base / "certs.d" / host).mkdir(parents=True, exist_ok=True)
        (base / "certs.d" / host / "hosts.toml").write_text(
            f'server = "http://{host}"\n\n[host."http://{host}"]\n  capabilities = ["pull", "resolve"]\n')
    config = base / "containerd.toml"
    config.write_text(f"""version = 2
root = "{base}/root"
state = "{base}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{base}/containerd.sock"

[ttrpc]
  address = "{base}/containerd.sock.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{base}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"

[plugins."io.containerd.grpc.v1.cri".cni]
  conf_dir = "{base}/cni"

[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "{base}/certs.d"
""")
    return config


def unmount_under(base: Path) -> None:
    """Unmount whatever is still mounted below ``base`` (deepest first)."""
    prefix = str(base.resolve()) + "/"
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
              if line.split()[4].startswith(prefix)]
    for mountpoint in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", mountpoint], check=False)


@contextlib.contextmanager
def containerd(base: Path, registries: list[str]) -> Iterator[str]:
    """containerd with its CRI plugin on private directories under ``base``; yields the CRI endpoint."""
    config = _containerd_config(base, registries)
    try:
        with server_process(["containerd", "--config", str(config)], base / "containerd.sock",
                            base / "containerd.log") as endpoint:
            yield endpoint
    finally:
        unmount_under(base)


@contextlib.contextmanager
def crirt(base: Path, registries: list[str], extra_config: str = "") -> Iterator[str]:
    """crirt on private directories under ``base``; loopback registries need no configuration."""
    (base / "cni").mkdir(parents=True, exist_ok=True)
    config = base / "config.toml"
    config.write_text(f'address = "unix://{base}/crirt.sock"\nroot = "{base}/root"\nstate = "{base}/state"\n'
                      f'log_level = "info"\n{extra_config}\n[cni]\nconf_dir = "{base}/cni"\n'
                      'default_network = false\n')
    try:
        with server_process([sys.executable, "-m", "crirt", "serve", "--config", str(config)],
                            base / "crirt.sock", base / "crirt.log") as endpoint:
            yield endpoint
    finally:
        unmount_under(base)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="crirt-peer-") as tmp:
        api_pb2, api_pb2_grpc = compile_stubs(Path(tmp) / "stubs")
        for name, runtime in (("crirt", crirt), ("containerd", containerd)):
            with runtime(Path(tmp) / name, []) as endpoint, grpc.insecure_channel(endpoint) as channel:
                reply = api_pb2_grpc.RuntimeServiceStub(channel).Version(api_pb2.VersionRequest())
                print(f"{name}: {reply.runtime_name} {reply.runtime_version} on {endpoint}")


if __name__ == "__main__":
    main()
