"""Confinement a pod spec asks for, on real runc through the CRI: a Localhost seccomp profile that denies some
syscalls, and a recursive read-only mount whose submounts are read-only too; bad requests for either are
INVALID_ARGUMENT and leave nothing behind."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from support.network import runc_shim_installed

from .test_behaviour import IDLE, Pods, error_of, pods

__all__ = ["pods"]  # the fixture, shared with the behaviour tests

pytestmark = pytest.mark.skipif(not runc_shim_installed(), reason="the runc shim plugin is not installed")


def leaves_nothing(pods: Pods, pod: str) -> None:
    listed = pods.rt.ListContainers(pods.pb.ListContainersRequest(), timeout=10).containers
    assert not [c for c in listed if c.pod_sandbox_id == pod]


# ---- Localhost seccomp profiles ----------------------------------------------------------------------------------

DENY_CHMOD_AND_MKDIR = {  # plain OCI form
    "defaultAction": "SCMP_ACT_ALLOW",
    "syscalls": [{"names": ["chmod", "fchmodat", "mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
}
DENY_CHMOD_AND_MKDIR_DOCKER = {  # Docker's form: an archMap and one rule per syscall name
    "defaultAction": "SCMP_ACT_ALLOW",
    "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
                {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]}],
    "syscalls": [{"name": name, "action": "SCMP_ACT_ERRNO", "errnoRet": 1}
                 for name in ("chmod", "fchmodat", "mkdir", "mkdirat")],
}


def localhost_seccomp(pb: Any, path: Path, how: str) -> Any:
    """The security context choosing the profile at ``path`` through the field or the deprecated path."""
    if how == "field":
        return pb.LinuxContainerSecurityContext(
            seccomp=pb.SecurityProfile(profile_type=pb.SecurityProfile.Localhost, localhost_ref=str(path)))
    return pb.LinuxContainerSecurityContext(seccomp_profile_path=f"localhost/{path}")


@pytest.mark.parametrize(("how", "profile"), [("field", DENY_CHMOD_AND_MKDIR),
                                              ("deprecated-path", DENY_CHMOD_AND_MKDIR_DOCKER)])
def test_a_localhost_profile_denies_its_syscalls_and_allows_the_rest(
        pods: Pods, tmp_path: Path, how: str, profile: dict[str, Any]) -> None:
    path = tmp_path / "deny-chmod-mkdir.json"
    path.write_text(json.dumps(profile))
    container = pods.run(pods.pod(), "filtered", IDLE, context=localhost_seccomp(pods.pb, path, how))
    for script in ("chmod 600 /tmp/file", "mkdir /tmp/dir"):
        reply = pods.sh(container, f"touch /tmp/file && {script}")
        assert reply.exit_code != 0 and b"Operation not permitted" in reply.stderr, (script, reply)
    reply = pods.sh(container, "echo x > /tmp/new && cat /tmp/new && ls -d /tmp && grep ^Seccomp: /proc/self/status")
    assert (reply.exit_code, reply.stdout.split()) == (0, [b"x", b"/tmp", b"Seccomp:", b"2"]), reply
    plain = pods.run(pods.pod(), "plain", IDLE)  # the same image without the profile: chmod and mkdir work
    reply = pods.sh(plain, "touch /tmp/file && chmod 600 /tmp/file && mkdir /tmp/dir && stat -c %a /tmp/file")
    assert (reply.exit_code, reply.stdout) == (0, b"600\n"), reply


def test_a_missing_or_invalid_localhost_profile_is_refused_naming_it(pods: Pods, tmp_path: Path) -> None:
    pb = pods.pb
    pod = pods.pod()
    missing, invalid = tmp_path / "missing.json", tmp_path / "invalid.json"
    invalid.write_text('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["chmod"], "action": "deny"}]}')
    cases = {missing: "No such file or directory", invalid: "syscalls[0].action: 'deny' is not a seccomp action"}
    for path, problem in cases.items():
        for how in ("field", "deprecated-path"):
            with pytest.raises(grpc.RpcError) as caught:
                pods.create(pod, "refused", command=["true"], context=localhost_seccomp(pb, path, how))
            error = caught.value
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
            assert str(path) in error.details() and problem in error.details(), error.details()
    leaves_nothing(pods, pod)
    pods.run(pod, "refused", "true")  # the name is free again


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
