"""CDI devices on real runc through the CRI: a spec in the daemon's spec directory exposes a host device node,
an environment variable and a bind mount; the container sees all three, whether it asks through
``CDI_devices`` or a ``cdi.k8s.io/`` annotation. A missing device and a malformed spec are INVALID_ARGUMENT and
leave nothing behind."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest
from support.network import runc_shim_installed

from .conftest import ContainerEnv, container_env

pytestmark = pytest.mark.skipif(not runc_shim_installed(), reason="the runc shim plugin is not installed")

IDLE = "trap 'exit 0' TERM; /bin/busybox sleep 1000 & wait"
NULL = os.stat("/dev/null")


@pytest.fixture(scope="module")
def cdi(tmp_path_factory: pytest.TempPathFactory, pb: ModuleType) -> Iterator[tuple[ContainerEnv, Path]]:
    """A daemon whose spec directories are ``etc`` (empty) and ``run``, which defines vendor.com/test=dev0: a
    char node made with /dev/null's numbers under another name, an env edit and a read-only bind mount."""
    base = tmp_path_factory.mktemp("cdi")
    (base / "etc").mkdir()
    run = base / "run"
    run.mkdir()
    node = base / "vendor-node"
    os.mknod(node, 0o666 | 0o020000, NULL.st_rdev)
    share = base / "share"
    share.mkdir()
    (share / "hello").write_text("from the vendor\n")
    spec = {
        "cdiVersion": "0.5.0", "kind": "vendor.com/test",
        "devices": [{"name": "dev0", "containerEdits": {
            "deviceNodes": [{"path": "/dev/vendor0", "hostPath": str(node), "permissions": "rw"}],
            "env": ["VENDOR_DEVICE=dev0"]}}],
        "containerEdits": {"env": ["VENDOR_DRIVER=1.0"],
                           "mounts": [{"hostPath": str(share), "containerPath": "/opt/vendor",
                                       "options": ["ro", "nosuid", "nodev", "bind"]}]},
    }
    (run / "vendor.json").write_text(json.dumps(spec))
    config = f'[cdi]\nspec_dirs = ["{base}/etc", "{run}"]\n'
    with container_env(base, pb, config) as env:
        env.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=env.image)), timeout=60)
        yield env, base


class Pod:
    """One pod; its containers are removed with it."""

    def __init__(self, env: ContainerEnv, name: str) -> None:
        self.env, self.pb, self.rt = env, env.pb, env.runtime
        config = self.pb.PodSandboxConfig(metadata=self.pb.PodSandboxMetadata(name=name, namespace="cdi",
                                                                              uid=f"uid-{name}"))
        self.id = self.rt.RunPodSandbox(self.pb.RunPodSandboxRequest(config=config), timeout=30).pod_sandbox_id

    def create(self, name: str, devices: Sequence[str] = (), annotations: dict[str, str] | None = None) -> str:
        pb = self.pb
        config = pb.ContainerConfig(metadata=pb.ContainerMetadata(name=name), image=pb.ImageSpec(image=self.env.image),
                                    command=["/bin/sh", "-c", IDLE], annotations=annotations or {},
                                    CDI_devices=[pb.CDIDevice(name=d) for d in devices])
        request = pb.CreateContainerRequest(pod_sandbox_id=self.id, config=config)
        return self.rt.CreateContainer(request, timeout=30).container_id

    def run(self, name: str, **kw: Any) -> str:
        container_id = self.create(name, **kw)
        self.rt.StartContainer(self.pb.StartContainerRequest(container_id=container_id), timeout=30)
        return container_id

    def sh(self, container_id: str, script: str) -> Any:
        request = self.pb.ExecSyncRequest(container_id=container_id, cmd=["/bin/sh", "-c", script], timeout=10)
        return self.rt.ExecSync(request, timeout=20)

    def remove(self) -> None:
        self.rt.StopPodSandbox(self.pb.StopPodSandboxRequest(pod_sandbox_id=self.id), timeout=30)
        self.rt.RemovePodSandbox(self.pb.RemovePodSandboxRequest(pod_sandbox_id=self.id), timeout=30)


@pytest.fixture
def pod(cdi: tuple[ContainerEnv, Path], request: pytest.FixtureRequest) -> Iterator[Pod]:
    made = Pod(cdi[0], request.node.name.removeprefix("test_")[:40].replace("_", "-"))
    yield made
    made.remove()


SEE = ("stat -c '%F %t:%T' /dev/vendor0 && echo written > /dev/vendor0 && cat /opt/vendor/hello && "
       "echo \"$VENDOR_DRIVER $VENDOR_DEVICE\" && (touch /opt/vendor/x 2>&1 || true)")
SEEN = (f"character special file {os.major(NULL.st_rdev):x}:{os.minor(NULL.st_rdev):x}\nfrom the vendor\n"
        "1.0 dev0\ntouch: /opt/vendor/x: Read-only file system\n")


def test_a_container_sees_the_cdi_device_node_env_and_mount(pod: Pod) -> None:
    container_id = pod.run("by-field", devices=["vendor.com/test=dev0"])
    reply = pod.sh(container_id, SEE)
    assert (reply.exit_code, reply.stdout.decode()) == (0, SEEN), reply.stderr
    status = pod.rt.ContainerStatus(pod.pb.ContainerStatusRequest(container_id=container_id, verbose=True),
                                    timeout=10)
    linux = json.loads(status.info["info"])["runtimeSpec"]["linux"]
    rule = {"allow": True, "type": "c", "major": os.major(NULL.st_rdev), "minor": os.minor(NULL.st_rdev),
            "access": "rw"}
    assert rule in linux["resources"]["devices"]
    assert [d["path"] for d in linux["devices"]] == ["/dev/vendor0"]


def test_the_annotation_form_works_the_same(pod: Pod) -> None:
    container_id = pod.run("by-annotation", annotations={"cdi.k8s.io/test-plugin_dev0": "vendor.com/test=dev0"})
    reply = pod.sh(container_id, SEE)
    assert (reply.exit_code, reply.stdout.decode()) == (0, SEEN), reply.stderr


def test_status_reports_the_cdi_devices(cdi: tuple[ContainerEnv, Path]) -> None:
    env, base = cdi
    info = env.runtime.Status(env.pb.StatusRequest(verbose=True), timeout=10).info
    assert json.loads(info["cdi"]) == {"enabled": True, "specDirs": [f"{base}/etc", f"{base}/run"], "devices": 1,
                                       "conflicts": [], "errors": []}


def refusal(pod: Pod, name: str, device: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        pod.create(name, devices=[device])
    listed = pod.rt.ListContainers(pod.pb.ListContainersRequest(), timeout=10).containers
    assert not [c for c in listed if c.pod_sandbox_id == pod.id]
    return caught.value


def test_a_missing_device_is_invalid_argument_and_leaves_nothing(pod: Pod, cdi: tuple[ContainerEnv, Path]) -> None:
    _, base = cdi
    bundles = set(os.listdir(base / "d" / "state" / "containers"))
    error = refusal(pod, "missing", "vendor.com/test=dev9")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == ("CreateContainer: config.CDI_devices[0].name: CDI device 'vendor.com/test=dev9' is "
                               f"unresolvable: no spec file in {base}/etc, {base}/run defines it")
    assert set(os.listdir(base / "d" / "state" / "containers")) == bundles


def test_a_malformed_spec_is_reported_with_its_file_and_field(pod: Pod, cdi: tuple[ContainerEnv, Path]) -> None:
    env, base = cdi
    bad = base / "etc" / "broken.yaml"
    bad.write_text("cdiVersion: 0.6.0\nkind: vendor.com/broken\ndevices:\n  - name: b0\n    containerEdit: {}\n")
    try:
        error = refusal(pod, "malformed", "vendor.com/broken=b0")
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details().endswith(f"refused spec files: {bad}: devices[0].containerEdit: unknown field")
        info = env.runtime.Status(env.pb.StatusRequest(verbose=True), timeout=10).info
        assert json.loads(info["cdi"])["errors"] == [f"{bad}: devices[0].containerEdit: unknown field"]
    finally:
        bad.unlink()
