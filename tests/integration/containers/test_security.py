"""Confinement a pod spec asks for, on real runc through the CRI: a recursive read-only mount whose submounts are
read-only too; bad requests are INVALID_ARGUMENT and leave nothing behind."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from support.network import runc_shim_installed

from .conftest import ContainerEnv
from .test_behaviour import IDLE, Pods, error_of

pytestmark = pytest.mark.skipif(not runc_shim_installed(), reason="the runc shim plugin is not installed")


@pytest.fixture
def pods(env: ContainerEnv, tmp_path: Path) -> Iterator[Pods]:
    env.images.PullImage(env.pb.PullImageRequest(image=env.pb.ImageSpec(image=env.image)), timeout=60)
    made = Pods(env, tmp_path / "logs")
    yield made
    made.remove_all()
    listed = env.runtime.ListContainers(env.pb.ListContainersRequest(), timeout=10).containers
    assert not {c.id for c in listed} & set(made.containers)


def leaves_nothing(pods: Pods, pod: str) -> None:
    listed = pods.rt.ListContainers(pods.pb.ListContainersRequest(), timeout=10).containers
    assert not [c for c in listed if c.pod_sandbox_id == pod]


# ---- recursive read-only mounts ----------------------------------------------------------------------------------

@pytest.fixture
def volume_with_submount(tmp_path: Path) -> Iterator[Path]:
    """A host directory with a tmpfs mounted on its ``sub`` directory."""
    volume = tmp_path / "volume"
    (volume / "sub").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(volume / "sub")], check=True)
    try:
        yield volume
    finally:
        subprocess.run(["umount", "-l", str(volume / "sub")], check=True)


def test_a_recursive_read_only_mount_makes_its_submounts_read_only(pods: Pods, volume_with_submount: Path) -> None:
    pb = pods.pb
    handlers = pods.rt.Status(pb.StatusRequest(), timeout=10).runtime_handlers
    assert [h.features.recursive_read_only_mounts for h in handlers if h.name == ""] == [True]  # runc, kernel 5.12+
    pod = pods.pod()
    rro = pods.run(pod, "rro", IDLE, mounts=[pb.Mount(container_path="/vol", host_path=str(volume_with_submount),
                                                       readonly=True, recursive_read_only=True)])
    ro = pods.run(pod, "ro", IDLE, mounts=[pb.Mount(container_path="/vol", host_path=str(volume_with_submount),
                                                     readonly=True)])
    for path in ("/vol/file", "/vol/sub/file"):
        reply = pods.sh(rro, f"echo x > {path}")
        assert reply.exit_code != 0 and b"Read-only file system" in reply.stderr, (path, reply)
    # A plain read-only bind leaves the submount writable: the difference rro makes.
    assert pods.sh(ro, "echo x > /vol/file").exit_code != 0
    reply = pods.sh(ro, "echo x > /vol/sub/file && cat /vol/sub/file")
    assert (reply.exit_code, reply.stdout) == (0, b"x\n"), reply
    assert (volume_with_submount / "sub" / "file").read_text() == "x\n"


@pytest.mark.parametrize(("fields", "problem"), [
    ({"readonly": False}, "recursive_read_only: needs readonly"),
    ({"readonly": True, "propagation": "PROPAGATION_HOST_TO_CONTAINER"},
     "recursive_read_only: needs propagation PROPAGATION_PRIVATE, got PROPAGATION_HOST_TO_CONTAINER"),
])
def test_bad_recursive_read_only_mounts_are_refused(pods: Pods, tmp_path: Path, fields: dict[str, Any],
                                                    problem: str) -> None:
    pb = pods.pb
    pod = pods.pod()
    propagation = getattr(pb, fields.get("propagation", "PROPAGATION_PRIVATE"))
    mount = pb.Mount(container_path="/vol", host_path=str(tmp_path), recursive_read_only=True,
                     readonly=fields["readonly"], propagation=propagation)
    error = error_of(lambda: pods.create(pod, "refused", command=["true"], mounts=[mount]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    assert f"config.mounts[0].{problem}" in error.details() and str(tmp_path) in error.details(), error.details()
    leaves_nothing(pods, pod)
