"""Runtime handlers side by side in one daemon: pods on runc (the default), gVisor (``runsc``, the gvisor plugin)
and the shim v2 path (``kata-runc``: the kata plugin driving Debian's containerd-shim-runc-v2) run at the same
time, each through its own handler; ``Status`` lists every handler with its features; a pod asking for an
unknown or a broken handler fails with the right code and leaves nothing behind."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest
from support.daemon import Daemon, start_daemon
from support.images import unmount_under
from support.network import BridgeNetwork, wait_until
from support.pods import (
    busybox_registry,
    force_delete_all,
    kill_processes_mentioning,
    log_stdout,
    oci_containers,
    pod_config,
    remove_pod,
    run_container,
    run_pod,
)

RUNSC_FLAGS = ("--network=host", "--platform=ptrace")
SHIM_V2_RUNC_ROOT = Path("/run/containerd/runc/crirt")
"""Where containerd-shim-runc-v2 keeps runc's state for crirt's namespace."""
CONFIG = """
[runtimes.runsc]
shim = "gvisor"
options = { network = "host" }
[runtimes.kata-runc]
shim = "kata"
options = { binary = "containerd-shim-runc-v2" }
[runtimes.broken]
shim = "no-such-plugin"
"""
HANDLERS = ("runc", "runsc", "kata-runc", "broken")

_plugins = {ep.name for ep in entry_points(group="crirt.shims")}
MISSING = [tool for tool in ("runc", "conmon", "runsc", "containerd-shim-runc-v2", "catatonit", "nsenter")
           if not shutil.which(tool)]
MISSING += [f"the {name!r} shim plugin" for name in ("runc", "gvisor", "kata") if name not in _plugins]
MISSING += [] if Path("/bin/busybox").exists() else ["/bin/busybox (busybox-static)"]
MISSING += [] if os.geteuid() == 0 else ["root"]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"needs {', '.join(MISSING)}")


@dataclass
class Env:
    daemon: Daemon
    net: BridgeNetwork
    base: Path
    runtime: Any
    pb: ModuleType
    image: str

    def root_of(self, handler: str) -> tuple[str, Path]:
        """The OCI runtime binary and root that hold the containers of a handler's pods."""
        shims = self.base / "state" / "shims"
        return {"runc": ("runc", shims / "runc" / "runc-root"), "runsc": ("runsc", shims / "runsc" / "runsc-root"),
                "kata-runc": ("runc", SHIM_V2_RUNC_ROOT)}[handler]

    def ids_in(self, handler: str) -> set[str]:
        """Ids of this daemon's containers that the OCI runtime behind ``handler`` knows."""
        binary, root = self.root_of(handler)
        flags = RUNSC_FLAGS if binary == "runsc" else ()
        return {c["id"] for c in oci_containers(binary, root, *flags)
                if c.get("bundle", "").startswith(f"{self.base}/")}


def remove_everything(base: Path) -> None:
    """Delete every container of the daemon under ``base`` in each runtime and kill its monitors and shims."""
    shims = base / "state" / "shims"
    force_delete_all("runc", shims / "runc" / "runc-root")
    force_delete_all("runsc", shims / "runsc" / "runsc-root", *RUNSC_FLAGS)
    force_delete_all("runc", SHIM_V2_RUNC_ROOT, bundles_under=base)
    kill_processes_mentioning(f"{base}/")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, pb: ModuleType) -> Iterator[Env]:
    base = tmp_path_factory.mktemp("handlers")
    net = BridgeNetwork(base / "d" / "cni")
    daemon = None
    with busybox_registry(base) as image:
        try:
            net.write()
            daemon = start_daemon(base / "d", CONFIG, registries="")
            with daemon.channel() as channel:
                runtime = pb.grpc.RuntimeServiceStub(channel)
                pb.grpc.ImageServiceStub(channel).PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=image)),
                                                            timeout=60)
                yield Env(daemon, net, base / "d", runtime, pb, image)
        finally:
            if daemon is not None:
                daemon.stop()
            remove_everything(base / "d")
            net.cleanup(base / "d" / "state")
            unmount_under(base)


def rpc_error(call: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def test_pods_on_three_handlers_run_side_by_side(env: Env, tmp_path: Path) -> None:
    pb, runtime = env.pb, env.runtime
    host_kernel = Path("/proc/version").read_text()
    pods: dict[str, str] = {}
    containers: dict[str, str] = {}
    try:
        # "" is the default handler, runc.
        for requested, handler in (("", "runc"), ("runsc", "runsc"), ("kata-runc", "kata-runc")):
            name = f"side-{handler}"
            pods[handler] = run_pod(runtime, pb, pod_config(pb, name, tmp_path / handler), requested)
            status = runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pods[handler])).status
            assert (status.state, status.runtime_handler) == (pb.SANDBOX_READY, requested)
            containers[handler] = run_container(runtime, pb, pods[handler], env.image, "app",
                                                f"echo 'on {handler}'; cat /proc/version; exec /bin/busybox sleep 1000")

        # All three run at once, each container in its pod and in its handler's runtime only.
        listed = runtime.ListContainers(pb.ListContainersRequest()).containers
        running = {c.id: c.pod_sandbox_id for c in listed if c.state == pb.CONTAINER_RUNNING}
        assert {running.get(containers[h]) for h in pods} == set(pods.values()), listed
        ready = {p.id: p.runtime_handler for p in runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items
                 if p.state == pb.SANDBOX_READY}
        assert {ready.get(pods[h]) for h in pods} == {"", "runsc", "kata-runc"}
        for handler in pods:  # the pod's infra container (named after the pod) and its app container
            assert env.ids_in(handler) == {pods[handler], containers[handler]}, handler
        assert (env.base / "state" / "shims" / "kata-runc" / "tasks" / pods["kata-runc"]).is_dir()

        # Each container's own output, through its handler's logging; gVisor's kernel is not the host's.
        for handler in pods:
            log = tmp_path / handler / "app.log"
            wait_until(lambda log=log: log_stdout(log).count("\n") >= 2, 15)
            text = log_stdout(log)
            first, version = text.splitlines()[:2]
            assert first == f"on {handler}", text
            assert (version == host_kernel.strip()) is (handler != "runsc"), (handler, version)
    finally:
        for sandbox_id in pods.values():
            with contextlib.suppress(grpc.RpcError):
                remove_pod(runtime, pb, sandbox_id)
    for handler in pods:
        assert not env.ids_in(handler), handler
    assert not runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items


def test_status_lists_every_handler_with_its_features(env: Env) -> None:
    pb, runtime = env.pb, env.runtime
    brief = runtime.Status(pb.StatusRequest())
    verbose = runtime.Status(pb.StatusRequest(verbose=True))
    assert not brief.info
    for reply in (brief, verbose):
        names = [h.name for h in reply.runtime_handlers]
        assert names[0] == "" and sorted(names[1:]) == sorted(HANDLERS), names
    features = {h.name: {"recursive_read_only_mounts": h.features.recursive_read_only_mounts,
                         "user_namespaces": h.features.user_namespaces} for h in brief.runtime_handlers}
    assert features == {h.name: {"recursive_read_only_mounts": h.features.recursive_read_only_mounts,
                                 "user_namespaces": h.features.user_namespaces} for h in verbose.runtime_handlers}
    assert features[""] == features["runc"]
    # runsc 20221219 has neither (docs/gvisor.md); the kata plugin claims neither.
    assert features["runsc"] == features["kata-runc"] == {"recursive_read_only_mounts": False,
                                                            "user_namespaces": False}

    status = json.loads(verbose.info["handlerStatus"])
    assert {name: (s["shim"], s["ready"]) for name, s in status.items()} == {
        "runc": ("runc", True), "runsc": ("gvisor", True), "kata-runc": ("kata", True),
        "broken": ("no-such-plugin", False)}
    for name in HANDLERS:
        assert status[name]["features"] == features[name], name
    conditions = {c.type: c for c in brief.status.conditions}
    assert conditions["RuntimeReady"].status
    assert not conditions["ShimPluginsReady"].status
    assert "'no-such-plugin' is not installed" in conditions["ShimPluginsReady"].message


def test_unknown_or_broken_handler_fails_cleanly(env: Env, tmp_path: Path) -> None:
    pb, runtime = env.pb, env.runtime
    pods_dir = env.base / "state" / "pods"
    before = (sorted(os.listdir(pods_dir)) if pods_dir.is_dir() else [], env.net.allocations(),
              {h: env.ids_in(h) for h in ("runc", "runsc", "kata-runc")})

    unknown = rpc_error(lambda: run_pod(runtime, pb, pod_config(pb, "unknown", tmp_path / "u"), "nope"))
    assert unknown.code() == grpc.StatusCode.INVALID_ARGUMENT, unknown.details()
    assert "unknown runtime handler 'nope'" in unknown.details()
    assert all(repr(name) in unknown.details() for name in HANDLERS), unknown.details()

    broken = rpc_error(lambda: run_pod(runtime, pb, pod_config(pb, "broken", tmp_path / "b"), "broken"))
    assert broken.code() == grpc.StatusCode.FAILED_PRECONDITION, broken.details()
    assert "runtime handler 'broken' is unavailable" in broken.details()
    assert "'no-such-plugin' is not installed" in broken.details()

    assert not runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items
    after = (sorted(os.listdir(pods_dir)) if pods_dir.is_dir() else [], env.net.allocations(),
             {h: env.ids_in(h) for h in ("runc", "runsc", "kata-runc")})
    assert after == before
    assert env.daemon.proc.poll() is None
