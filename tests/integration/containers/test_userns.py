"""Pods with their own user namespace (Kubernetes ``hostUsers: false``) on real runc through the CRI: the
namespace and its mappings as containers see them, an id-mapped root filesystem (files of host root are root
inside; files written inside belong to the mapped ids on the host), INVALID_ARGUMENT for what the CRI does not
allow, and nothing left behind (pins, id-mapped mounts) once the pod is removed."""

from __future__ import annotations

import itertools
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest
from support.network import runc_shim_installed, wait_until
from support.userns import searchable_tmpdir

from crirt.images.idmap import idmapped_bind

from .conftest import ContainerEnv, container_env
from .test_behaviour import IDLE, Pods, error_of
from .test_recovery import kill_daemon, restart

pytestmark = pytest.mark.skipif(not runc_shim_installed(), reason="the runc shim plugin is not installed")

RANGE = 65536
FIRST_HOST_ID = 3_000_000_000  # far above any id this host uses
COUNTER = itertools.count()


@pytest.fixture(scope="module")
def env(pb: ModuleType) -> Iterator[ContainerEnv]:
    """This module's daemon, under a directory runc in a pod's user namespace can pass through."""
    base = searchable_tmpdir("crirt-userns-")
    try:
        with container_env(base, pb, "") as made:
            yield made
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def pods(env: ContainerEnv, tmp_path: Path) -> Iterator[Pods]:
    env.images.PullImage(env.pb.PullImageRequest(image=env.pb.ImageSpec(image=env.image)), timeout=60)
    made = Pods(env, tmp_path / "logs")
    yield made
    made.remove_all()


def userns_options(pb: Any, host: int, *, mode: str = "POD", uids: int = 1, container_id: int = 0) -> Any:
    mapping = pb.IDMapping(host_id=host, container_id=container_id, length=RANGE)
    return pb.UserNamespace(mode=getattr(pb, mode), uids=[mapping] * uids, gids=[mapping])


def namespace_options(pb: Any, userns: Any, *, pid: str = "POD", network: str = "POD") -> Any:
    return pb.NamespaceOption(network=getattr(pb, network), pid=getattr(pb, pid), ipc=pb.POD, userns_options=userns)


def run_pod(pods: Pods, options: Any, sysctls: dict[str, str] | None = None) -> str:
    pb = pods.pb
    name = f"userns-{next(COUNTER)}"
    linux = pb.LinuxPodSandboxConfig(sysctls=sysctls or {})
    linux.security_context.namespace_options.CopyFrom(options)
    config = pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name=name, namespace="crirt-test", uid=name),
                                 hostname=name, log_directory=str(pods.logs / name), linux=linux)
    sandbox_id = pods.rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=30).pod_sandbox_id
    pods.sandboxes.append(sandbox_id)
    return sandbox_id


def host_id() -> int:
    return FIRST_HOST_ID + RANGE * next(COUNTER)


def mounts_under(path: Path) -> list[str]:
    points = [line.split(" ")[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return [p for p in points if p == str(path) or p.startswith(f"{path}/")]


def test_status_reports_user_namespaces_for_runc(env: ContainerEnv) -> None:
    status = env.runtime.Status(env.pb.StatusRequest(), timeout=10)
    runc = [h for h in status.runtime_handlers if h.name in ("", "runc")]
    assert runc and all(h.features.user_namespaces for h in runc)


def test_pod_runs_in_its_user_namespace_with_an_idmapped_rootfs(env: ContainerEnv, pods: Pods) -> None:
    pb, host = pods.pb, host_id()
    options = namespace_options(pb, userns_options(pb, host))
    pod = run_pod(pods, options)
    info = json.loads(pods.rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod, verbose=True),
                                               timeout=10).info["info"])
    infra_pid = info["infraContainer"]["pid"]
    assert Path(f"/proc/{infra_pid}/uid_map").read_text().split() == ["0", str(host), str(RANGE)]
    assert os.stat(f"/proc/{infra_pid}").st_uid == host  # catatonit runs as the pod's root: host id `host`
    assert "user" in info["namespaces"]

    context = pb.LinuxContainerSecurityContext(namespace_options=options)
    script = ("cat /proc/self/uid_map /proc/self/gid_map; id -u; stat -c %u:%g /bin/busybox /; "
              "echo hi > /written && mkdir -p /home/app && chown 1000:1000 /home/app && echo owned; " + IDLE)
    container = pods.run(pod, "c", script, context=context)
    out = wait_until(lambda: (text := pods.stdout(container)).count("\n") >= 6 and text)
    lines = out.splitlines()
    assert lines[0].split() == ["0", str(host), str(RANGE)] and lines[1].split() == ["0", str(host), str(RANGE)]
    assert lines[2] == "0"
    assert lines[3:5] == ["0:0", "0:0"]  # host-root-owned image files (and the rootfs top) are root inside
    assert lines[5] == "owned"

    upper = env.daemon.root / "rootfs" / container / "upper"
    assert os.stat(upper / "written").st_uid == host  # root inside is `host` on the node, no chown copy made
    home = os.stat(upper / "home" / "app")
    assert (home.st_uid, home.st_gid) == (host + 1000, host + 1000)
    layer_files = [p for p in (env.daemon.root / "images" / "snapshots").glob("*/bin/busybox")]
    assert layer_files and all(os.stat(p).st_uid == 0 for p in layer_files)  # the shared layers are untouched
    assert not mounts_under(env.daemon.root / "rootfs" / container / "lower")  # the overlay holds the idmap

    exec_out = pods.sh(container, "cat /proc/self/uid_map; stat -c %u /written").stdout.decode().split()
    assert exec_out == ["0", str(host), str(RANGE), "0"]  # ExecSync joins the same namespace


def test_pod_without_infra_container_and_two_pods_apart(pods: Pods) -> None:
    pb = pods.pb
    hosts = [host_id(), host_id()]
    seen = []
    for host in hosts:
        options = namespace_options(pb, userns_options(pb, host), pid="CONTAINER")
        pod = run_pod(pods, options)
        context = pb.LinuxContainerSecurityContext(namespace_options=options)
        container = pods.run(pod, f"c{host}", "cat /proc/self/uid_map; hostname", context=context)
        pods.exited(container)
        seen.append(pods.stdout(container).split())
    assert [s[:3] for s in seen] == [["0", str(h), str(RANGE)] for h in hosts]
    assert all(s[3].startswith("userns-") for s in seen)  # the hostname was set inside the pod's namespaces


def test_uts_and_ipc_sysctls_are_set_in_the_pods_namespaces(pods: Pods) -> None:
    pb = pods.pb
    options = namespace_options(pb, userns_options(pb, host_id()), pid="CONTAINER")
    pod = run_pod(pods, options, {"kernel.domainname": "crirt.test", "kernel.shmmni": "2048"})
    container = pods.run(pod, "c", "cat /proc/sys/kernel/domainname /proc/sys/kernel/shmmni",
                         context=pb.LinuxContainerSecurityContext(namespace_options=options))
    pods.exited(container)
    assert pods.stdout(container).split() == ["crirt.test", "2048"]


@pytest.mark.parametrize(("change", "field"), [
    (lambda pb, h: namespace_options(pb, userns_options(pb, h, mode="CONTAINER")), "userns_options.mode"),
    (lambda pb, h: namespace_options(pb, userns_options(pb, h, mode="TARGET")), "userns_options.mode"),
    (lambda pb, h: namespace_options(pb, userns_options(pb, h, uids=2)), "userns_options.uids"),
    (lambda pb, h: namespace_options(pb, userns_options(pb, h, container_id=1)), "uids[0].container_id"),
    (lambda pb, h: namespace_options(pb, pb.UserNamespace(mode=pb.NODE, uids=[pb.IDMapping(host_id=h, length=1)])),
     "userns_options"),
    (lambda pb, h: namespace_options(pb, userns_options(pb, h), network="NODE"), "namespace_options.network"),
    (lambda pb, h: namespace_options(pb, userns_options(pb, h), pid="NODE"), "namespace_options.pid"),
])
def test_invalid_pod_user_namespaces_are_refused(env: ContainerEnv, pods: Pods, change: Any, field: str) -> None:
    before = sorted(p.name for p in (env.daemon.root.parent / "state" / "pods").iterdir())
    error = error_of(lambda: run_pod(pods, change(pods.pb, host_id())))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and field in error.details()
    assert sorted(p.name for p in (env.daemon.root.parent / "state" / "pods").iterdir()) == before


def test_container_must_keep_its_pods_user_namespace(pods: Pods) -> None:
    pb, host = pods.pb, host_id()
    pod = run_pod(pods, namespace_options(pb, userns_options(pb, host)))
    other = pb.LinuxContainerSecurityContext(namespace_options=namespace_options(pb, userns_options(pb, host_id())))
    error = error_of(lambda: pods.create(pod, "other", context=other))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "userns_options" in error.details()
    plain = run_pod(pods, namespace_options(pb, None))
    error = error_of(lambda: pods.create(plain, "asks", context=pb.LinuxContainerSecurityContext(
        namespace_options=namespace_options(pb, userns_options(pb, host)))))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "must be its pod's" in error.details()


def test_stop_and_remove_release_the_namespace_and_mounts(env: ContainerEnv, pods: Pods) -> None:
    pb, host = pods.pb, host_id()
    options = namespace_options(pb, userns_options(pb, host))
    pod = run_pod(pods, options)
    container = pods.run(pod, "c", IDLE, context=pb.LinuxContainerSecurityContext(namespace_options=options))
    pod_dir = env.daemon.root.parent / "state" / "pods" / pod
    assert {Path(p).name for p in mounts_under(pod_dir)} >= {"user", "net", "ipc", "uts"}
    pods.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=30)
    assert not [p for p in mounts_under(pod_dir) if Path(p).name in ("user", "net", "ipc", "uts")]
    pods.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=30)
    pods.containers.remove(container)
    assert not mounts_under(pod_dir) and not pod_dir.exists()
    assert not mounts_under(env.daemon.root / "rootfs" / container)
    assert not (env.daemon.root / "rootfs" / container).exists()


def test_a_crash_keeps_the_pod_and_recovery_drops_a_half_made_idmapped_rootfs(env: ContainerEnv,
                                                                                 pods: Pods) -> None:
    pb, host = pods.pb, host_id()
    options = namespace_options(pb, userns_options(pb, host))
    context = pb.LinuxContainerSecurityContext(namespace_options=options)
    pod = run_pod(pods, options)
    before = pods.run(pod, "before", IDLE, context=context)
    # what a crash between the id-mapped bind and the overlay mount leaves: a rootfs nobody knows, still mapped
    orphan = env.daemon.root / "rootfs" / ("0" * 64)
    (orphan / "lower").mkdir(parents=True)
    pod_dir = env.daemon.root.parent / "state" / "pods" / pod
    idmapped_bind(env.daemon.root / "images" / "snapshots", orphan / "lower", pod_dir / "user")
    assert mounts_under(orphan) == [str(orphan / "lower")]
    # ... and an id-mapped volume of a container whose record was never written
    binds = env.daemon.root.parent / "state" / "idmapped" / ("1" * 64)
    binds.mkdir(parents=True)
    (binds / "0").mkdir()
    idmapped_bind(env.daemon.root / "images" / "snapshots", binds / "0", pod_dir / "user")

    kill_daemon(env)
    restart(env)
    assert not orphan.exists() and not mounts_under(orphan)
    assert not binds.exists() and not mounts_under(binds) and (pod_dir / "user").exists()
    assert pods.status(before).state == pb.CONTAINER_RUNNING
    after = pods.run(pod, "after", "cat /proc/self/uid_map", context=context)  # the pins survived the crash
    pods.exited(after)
    assert pods.stdout(after).split() == ["0", str(host), str(RANGE)]
    assert pods.sh(before, "cat /proc/self/uid_map").stdout.decode().split() == ["0", str(host), str(RANGE)]


def test_volumes_and_pod_files_are_idmapped(env: ContainerEnv, pods: Pods) -> None:
    pb, host = pods.pb, host_id()
    volume = searchable_tmpdir("crirt-userns-volume-")
    try:
        (volume / "of-root").write_text("node data\n")
        options = namespace_options(pb, userns_options(pb, host))
        pod = run_pod(pods, options)
        mount = pb.Mount(container_path="/vol", host_path=str(volume))
        script = ("stat -c %u:%g /vol /vol/of-root /etc/hosts /etc/hostname /etc/resolv.conf /dev/shm; "
                  "echo mine > /vol/written && echo shm > /dev/shm/x && echo wrote; " + IDLE)
        container = pods.run(pod, "c", script, mounts=[mount],
                             context=pb.LinuxContainerSecurityContext(namespace_options=options))
        out = wait_until(lambda: (text := pods.stdout(container)).count("\n") >= 7 and text)
        assert out.splitlines()[:7] == ["0:0"] * 6 + ["wrote"]  # node-root files are root inside, not nobody
        # As Kubernetes intends for volumes: the idmap undoes the pod's offset, so root inside writes root's files
        # on the node, and pods with other ranges see the same owners (the rootfs' upper dir keeps the offset).
        assert os.stat(volume / "written").st_uid == 0
        binds = env.daemon.root.parent / "state" / "idmapped" / container
        assert len(mounts_under(binds)) == 5  # the volume, hosts, hostname, resolv.conf and /dev/shm

        pods.containers.remove(container)
        pods.rt.RemoveContainer(pb.RemoveContainerRequest(container_id=container), timeout=30)
        assert not mounts_under(binds) and not binds.exists()
        assert (volume / "of-root").read_text() == "node data\n"  # removal unmounts; it never deletes through
    finally:
        shutil.rmtree(volume, ignore_errors=True)
