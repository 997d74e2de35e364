"""A crirt daemon with real runc containers in a pod on a private bridge network, and the independent streaming
clients (node's spdy-transport and ws, in tests/support/node/stream_*.js) that drive its streaming server."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from support.daemon import Daemon, start_daemon
from support.images import Layout, busybox_layer, push, unmount_under
from support.network import BridgeNetwork, kill_containers_under, runc_shim_installed
from support.registry import start_registry

NODE_DIR = Path(__file__).resolve().parents[2] / "support" / "node"
TOKEN_TTL = 5.0
"""Seconds a streaming URL lives in the test daemon: long enough to connect, short enough to watch it expire."""

needs_clients = pytest.mark.skipif(
    shutil.which("node") is None or not (NODE_DIR / "node_modules" / "spdy-transport").is_dir()
    or not (NODE_DIR / "node_modules" / "ws").is_dir() or not runc_shim_installed(),
    reason="needs node with tests/support/node/node_modules (make node) and the runc shim plugin")


def node(script: str, url: str, scenario: dict[str, Any], timeout: float = 90) -> dict[str, Any]:
    """Run ``stream_<script>.js`` against ``url``; its JSON result (an AssertionError if it failed)."""
    proc = subprocess.run(["node", str(NODE_DIR / f"stream_{script}.js"), url, json.dumps(scenario)],
                          capture_output=True, text=True, timeout=timeout)
    lines = proc.stdout.strip().splitlines()
    assert lines, f"stream_{script}.js printed nothing (exit {proc.returncode}): {proc.stderr[-2000:]}"
    result: dict[str, Any] = json.loads(lines[-1])
    assert "failure" not in result, result["failure"]
    return result


def running(pattern: str) -> bool:
    """Whether a process whose command line matches ``pattern`` runs on this machine (containers included)."""
    return subprocess.run(["pgrep", "-f", pattern], capture_output=True).returncode == 0


def gone(pattern: str, seconds: float = 10) -> bool:
    """Wait up to ``seconds`` for every process matching ``pattern`` to end; whether they did."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and running(pattern):
        time.sleep(0.1)
    return not running(pattern)


@dataclass
class StreamEnv:
    """The daemon, its stubs, the test image and one ready pod."""

    daemon: Daemon
    runtime: Any
    pb: ModuleType
    image: str
    pod: str

    def container(self, script: str, *, stdin: bool = False, tty: bool = False) -> str:
        """Create and start a busybox container running ``sh -c script`` in the pod."""
        pb = self.pb
        name = f"c-{secrets.token_hex(3)}"
        config = pb.ContainerConfig(metadata=pb.ContainerMetadata(name=name), image=pb.ImageSpec(image=self.image),
                                    command=["/bin/sh", "-c", script], stdin=stdin, tty=tty,
                                    log_path=f"{name}.log")
        cid = self.runtime.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=self.pod, config=config),
                                           timeout=30).container_id
        self.runtime.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=30)
        return cid

    def exec_url(self, cid: str, cmd: list[str], *, tty: bool = False, stdin: bool = False) -> str:
        request = self.pb.ExecRequest(container_id=cid, cmd=cmd, tty=tty, stdin=stdin, stdout=True, stderr=not tty)
        return str(self.runtime.Exec(request, timeout=10).url)

    def attach_url(self, cid: str, *, stdin: bool = False, tty: bool = False) -> str:
        request = self.pb.AttachRequest(container_id=cid, stdin=stdin, tty=tty, stdout=True, stderr=not tty)
        return str(self.runtime.Attach(request, timeout=10).url)

    def port_forward_url(self, ports: list[int] | None = None) -> str:
        request = self.pb.PortForwardRequest(pod_sandbox_id=self.pod, port=ports or [])
        return str(self.runtime.PortForward(request, timeout=10).url)


@pytest.fixture(scope="package")
def env(tmp_path_factory: pytest.TempPathFactory, pb: ModuleType) -> Iterator[StreamEnv]:
    """One registry, daemon, network and pod for the package's tests; everything is removed afterwards."""
    base = tmp_path_factory.mktemp("streaming")
    registry = start_registry(base / "registry")
    net = BridgeNetwork(base / "d" / "cni")
    daemon = None
    try:
        layout = Layout(base / "layout")
        layout.tag(layout.image([(busybox_layer().bytes(), "gzip")]), "busybox")
        image = f"{registry.host}/library/busybox:1"
        push(layout, "busybox", image)
        net.write()
        daemon = start_daemon(base / "d", f"[streaming]\ntoken_ttl = {TOKEN_TTL}\n",
                              cni_config="default_network = false\n", registries="")
        with daemon.channel() as channel:
            runtime = pb.grpc.RuntimeServiceStub(channel)
            pb.grpc.ImageServiceStub(channel).PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=image)),
                                                        timeout=60)
            name = f"stream-{secrets.token_hex(3)}"
            linux = pb.LinuxPodSandboxConfig()
            linux.security_context.namespace_options.CopyFrom(
                pb.NamespaceOption(network=pb.POD, pid=pb.CONTAINER, ipc=pb.POD))
            config = pb.PodSandboxConfig(
                metadata=pb.PodSandboxMetadata(name=name, namespace="crirt-test", uid=f"uid-{name}"),
                hostname=name, log_directory=str(base / "logs"), linux=linux)
            pod = runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=30).pod_sandbox_id
            try:
                yield StreamEnv(daemon, runtime, pb, image, pod)
            finally:
                runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=60)
                runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=60)
    finally:
        if daemon is not None:
            daemon.stop()
        kill_containers_under(base / "d" / "state")
        net.cleanup(base / "d" / "state")
        unmount_under(base)
        registry.stop()
