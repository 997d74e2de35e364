"""Standard filesystems, the pod's files, CRI bind mounts, masked and read-only paths."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from crirt.errors import InvalidArgument, Unimplemented
from crirt.model.common import Mount
from crirt.model.container import LinuxContainerSecurityContext
from crirt.oci.mounts import (
    DEFAULT_MASKED_PATHS,
    DEFAULT_READONLY_PATHS,
    PodFiles,
    container_mounts,
    masked_and_readonly_paths,
    resolve_host_paths,
)

POD = PodFiles(hostname="/run/p/hostname", hosts="/run/p/hosts", resolv_conf="/run/p/resolv.conf", shm="/run/p/shm")


def mounts(*cri: dict[str, Any], pod: PodFiles = POD, **flags: Any) -> tuple[list[dict[str, Any]], str | None]:
    args = {"privileged": False, "readonly_rootfs": False, "host_ipc": False, "host_paths": {},
            "rro_supported": True, **flags}
    return container_mounts([Mount.model_validate(m) for m in cri], pod, **args)


def by_destination(result: tuple[list[dict[str, Any]], str | None]) -> dict[str, dict[str, Any]]:
    return {m["destination"]: m for m in result[0]}


def test_standard_filesystems_read_only_sys_unless_privileged() -> None:
    found = by_destination(mounts(pod=PodFiles()))
    assert list(found) == ["/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/sys/fs/cgroup"]
    assert "ro" in found["/sys"]["options"] and "ro" in found["/sys/fs/cgroup"]["options"]
    assert found["/dev/shm"]["type"] == "tmpfs"  # no pod shm given: a private one
    privileged = by_destination(mounts(pod=PodFiles(), privileged=True))
    assert "rw" in privileged["/sys"]["options"] and "rw" in privileged["/sys/fs/cgroup"]["options"]


def test_pod_files_and_shm_are_bound() -> None:
    found = by_destination(mounts())
    assert found["/etc/hosts"] == {"destination": "/etc/hosts", "type": "bind", "source": "/run/p/hosts",
                                   "options": ["rbind", "rprivate", "rw"]}
    assert found["/etc/resolv.conf"]["source"] == "/run/p/resolv.conf"
    assert found["/etc/hostname"]["source"] == "/run/p/hostname"
    assert found["/dev/shm"] == {"destination": "/dev/shm", "type": "bind", "source": "/run/p/shm",
                                 "options": ["rbind", "rprivate", "rw"]}
    readonly = by_destination(mounts(readonly_rootfs=True))
    assert readonly["/etc/hosts"]["options"][-1] == "ro" and readonly["/dev/shm"]["options"][-1] == "rw"
    assert by_destination(mounts(host_ipc=True))["/dev/shm"]["source"] == "/dev/shm"  # hostIPC: the node's


def test_cri_mounts_cover_pod_files_and_standard_filesystems() -> None:
    # the kubelet manages /etc/hosts itself for pods on the pod network
    found = by_destination(mounts({"container_path": "/etc/hosts", "host_path": "/var/lib/kubelet/pods/u/etc-hosts"},
                                  {"container_path": "/dev/shm/", "host_path": "/mem"}))
    assert found["/etc/hosts"]["source"] == "/var/lib/kubelet/pods/u/etc-hosts"
    assert found["/dev/shm/"]["source"] == "/mem" and "/dev/shm" not in found
    assert [m["destination"] for m in mounts({"container_path": "/etc/hosts", "host_path": "/h"})[0]].count(
        "/etc/hosts") == 1
    dev = by_destination(mounts({"container_path": "/dev", "host_path": "/dev"}, pod=PodFiles()))
    assert not [d for d in dev if d.startswith("/dev/")] and dev["/dev"]["type"] == "bind"


def test_binds_follow_standard_filesystems_shallowest_first() -> None:
    result, _ = mounts({"container_path": "/data/cache/deep", "host_path": "/a"},
                       {"container_path": "/dev/termination-log", "host_path": "/t"},
                       {"container_path": "/data", "host_path": "/b"})
    destinations = [m["destination"] for m in result]
    assert destinations.index("/sys/fs/cgroup") < destinations.index("/data")
    assert destinations.index("/data") < destinations.index("/data/cache/deep")
    assert destinations.index("/dev") < destinations.index("/dev/termination-log")


def test_cri_mount_options_and_propagation() -> None:
    found, propagation = mounts({"container_path": "/a", "host_path": "/ha", "readonly": True},
                                {"container_path": "/b", "host_path": "/hb", "propagation": 1})
    binds = {m["destination"]: m for m in found}
    assert binds["/a"]["options"] == ["rbind", "rprivate", "ro"]
    assert binds["/b"]["options"] == ["rbind", "rslave", "rw"] and propagation == "rslave"
    _, propagation = mounts({"container_path": "/b", "host_path": "/hb", "propagation": 1},
                            {"container_path": "/c", "host_path": "/hc", "propagation": 2})
    assert propagation == "rshared"
    assert mounts()[1] is None


def test_recursive_read_only() -> None:
    found = by_destination(mounts({"container_path": "/r", "host_path": "/h", "readonly": True,
                                   "recursive_read_only": True}))
    assert found["/r"]["options"] == ["rbind", "rprivate", "rro"]
    with pytest.raises(InvalidArgument, match=r"config\.mounts\[0\]\.recursive_read_only: needs readonly"):
        mounts({"container_path": "/r", "host_path": "/h", "recursive_read_only": True})
    with pytest.raises(InvalidArgument, match="needs propagation PROPAGATION_PRIVATE"):
        mounts({"container_path": "/r", "host_path": "/h", "readonly": True, "recursive_read_only": True,
                "propagation": 1})
    with pytest.raises(InvalidArgument, match="does not support recursive read-only"):
        mounts({"container_path": "/r", "host_path": "/h", "readonly": True, "recursive_read_only": True},
               rro_supported=False)


def test_bad_cri_mounts() -> None:
    with pytest.raises(InvalidArgument, match=r"config\.mounts\[1\]\.container_path: 'rel'"):
        mounts({"container_path": "/ok", "host_path": "/h"}, {"container_path": "rel", "host_path": "/h"})
    with pytest.raises(InvalidArgument, match=r"config\.mounts\[0\]\.host_path: ''"):
        mounts({"container_path": "/x"})
    with pytest.raises(Unimplemented, match=r"config\.mounts\[0\]\.image: image volume"):
        mounts({"container_path": "/x", "image": {"image": "sha256:abc"}})
    with pytest.raises(InvalidArgument, match="user namespaces"):
        mounts({"container_path": "/x", "host_path": "/h", "uid_mappings": [{"host_id": 1000, "length": 1}]})


def test_resolved_host_paths_are_used(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    cri = [Mount(container_path="/data", host_path=str(tmp_path / "link"))]
    resolved = resolve_host_paths(cri)
    assert resolved == {str(tmp_path / "link"): str(tmp_path / "real")}
    found = container_mounts(cri, PodFiles(), privileged=False, readonly_rootfs=False, host_ipc=False,
                             host_paths=resolved, rro_supported=False)[0]
    assert found[-1]["source"] == str(tmp_path / "real")
    with pytest.raises(InvalidArgument, match=r"config\.mounts\[0\]\.host_path: .*missing: No such file"):
        resolve_host_paths([Mount(container_path="/x", host_path=str(tmp_path / "missing"))])


def sc(**fields: Any) -> LinuxContainerSecurityContext:
    return LinuxContainerSecurityContext.model_validate(fields)


def test_masked_and_readonly_paths() -> None:
    assert masked_and_readonly_paths(sc()) == (list(DEFAULT_MASKED_PATHS), list(DEFAULT_READONLY_PATHS))
    assert "/proc/kcore" in DEFAULT_MASKED_PATHS and "/proc/sys" in DEFAULT_READONLY_PATHS
    assert masked_and_readonly_paths(sc(masked_paths=["/bin/ls"])) == (["/bin/ls"], list(DEFAULT_READONLY_PATHS))
    assert masked_and_readonly_paths(sc(readonly_paths=["/tmp"]))[1] == ["/tmp"]
    assert masked_and_readonly_paths(sc(privileged=True, masked_paths=["/x"])) == ([], [])
