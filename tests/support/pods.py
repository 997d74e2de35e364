"""A busybox image in a local registry, and the CRI calls a test makes to run a pod with one container on a
chosen runtime handler and to take it down again."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
from support.images import Layout, busybox_layer, push
from support.registry import start_registry


@contextlib.contextmanager
def busybox_registry(base: Path) -> Iterator[str]:
    """Serve a busybox image from a registry on 127.0.0.1; yields its reference."""
    registry = start_registry(base / "registry")
    try:
        layout = Layout(base / "layout")
        layout.tag(layout.image([(busybox_layer().bytes(), "gzip")]), "busybox")
        image = f"{registry.host}/library/busybox:1"
        push(layout, "busybox", image)
        yield image
    finally:
        registry.stop()


def pod_config(pb: ModuleType, name: str, logs: Path, network: str = "POD") -> Any:
    """A pod named ``name`` whose container logs go under ``logs``; ``network="NODE"`` needs no CNI."""
    linux = pb.LinuxPodSandboxConfig()
    linux.security_context.namespace_options.CopyFrom(pb.NamespaceOption(network=getattr(pb, network)))
    return pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name=name, namespace="crirt-test", uid=f"uid-{name}"),
                               hostname=name, log_directory=str(logs), linux=linux)


def run_pod(runtime: Any, pb: ModuleType, config: Any, handler: str) -> str:
    return runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=config, runtime_handler=handler),
                                 timeout=60).pod_sandbox_id


def run_container(runtime: Any, pb: ModuleType, sandbox_id: str, image: str, name: str, script: str) -> str:
    """Create and start a container running ``/bin/sh -c script``; it logs to ``<pod log dir>/<name>.log``."""
    config = pb.ContainerConfig(metadata=pb.ContainerMetadata(name=name), image=pb.ImageSpec(image=image),
                                command=["/bin/sh", "-c", script], log_path=f"{name}.log")
    container_id = runtime.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=sandbox_id, config=config),
                                           timeout=60).container_id
    runtime.StartContainer(pb.StartContainerRequest(container_id=container_id), timeout=60)
    return container_id


def remove_pod(runtime: Any, pb: ModuleType, sandbox_id: str) -> None:
    """Stop and remove a pod with its containers (NOT_FOUND on the stop is fine: it is gone already)."""
    with contextlib.suppress(grpc.RpcError):
        runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=60)
    runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=60)


def log_stdout(path: Path) -> str:
    """The stdout text of a CRI log file ("" while it does not exist): partial entries joined, full ones ended."""
    if not path.exists():
        return ""
    text = []
    for line in path.read_text(errors="replace").splitlines():
        fields = line.split(" ", 3)
        if len(fields) >= 3 and fields[1] == "stdout":
            text.append((fields[3] if len(fields) == 4 else "") + ("\n" if fields[2] == "F" else ""))
    return "".join(text)


def oci_containers(binary: str, root: Path, *flags: str) -> list[dict[str, Any]]:
    """The containers an OCI runtime (runc, runsc) keeps under ``root``, as its ``list --format json`` shows them."""
    if not root.is_dir():
        return []
    listing = subprocess.run([binary, "--root", str(root), *flags, "list", "--format", "json"], capture_output=True,
                             text=True, check=False, timeout=30)
    return json.loads(listing.stdout or "null") or []


def oci_runtime_ids(binary: str, root: Path, *flags: str) -> list[str]:
    """Ids of the containers an OCI runtime keeps under ``root``."""
    return [container["id"] for container in oci_containers(binary, root, *flags)]


def force_delete_all(binary: str, root: Path, *flags: str, bundles_under: Path | None = None) -> None:
    """Kill and delete the containers under an OCI runtime root (all, or those whose bundle is under
    ``bundles_under``): what a failed test left running."""
    for container in oci_containers(binary, root, *flags):
        if bundles_under is None or container.get("bundle", "").startswith(f"{bundles_under}/"):
            subprocess.run([binary, "--root", str(root), *flags, "delete", "--force", container["id"]],
                           capture_output=True, check=False, timeout=60)


def kill_processes_mentioning(text: str) -> None:
    """SIGKILL every process one of whose arguments contains ``text`` (monitors and shims of a test's daemon,
    found by the private paths in their command lines)."""
    needle = text.encode()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if any(needle in arg for arg in Path(entry.path, "cmdline").read_bytes().split(b"\0")):
                os.kill(int(entry.name), signal.SIGKILL)
