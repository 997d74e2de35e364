"""Device nodes: the CRI's devices, and the host's for privileged containers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from crirt.errors import InvalidArgument
from crirt.model.common import Device
from crirt.oci.devices import HostDevice, device_entries, devices_at, host_devices

NULL = HostDevice(path="/dev/null", type="c", major=1, minor=3, file_mode=0o666, uid=0, gid=0)
SND = {"/controlC0": HostDevice("/dev/snd/controlC0", "c", 116, 2, 0o660, 0, 29),
       "/pcmC0D0p": HostDevice("/dev/snd/pcmC0D0p", "c", 116, 16, 0o660, 0, 29)}


def devices(*requested: dict[str, str], privileged: bool = False, host: tuple[HostDevice, ...] = ()):
    found = {"/dev/null": {"": NULL}, "/dev/snd": SND}
    return device_entries([Device.model_validate(d) for d in requested], found, privileged, host)


def test_none_requested_denies_all() -> None:
    assert devices() == ([], [{"allow": False, "access": "rwm"}])


def test_a_device_node_at_its_container_path_with_its_permissions() -> None:
    nodes, rules = devices({"container_path": "/dev/xnull", "host_path": "/dev/null", "permissions": "rw"})
    assert nodes == [{"path": "/dev/xnull", "type": "c", "major": 1, "minor": 3, "fileMode": 0o666, "uid": 0,
                      "gid": 0}]
    assert rules == [{"allow": False, "access": "rwm"},
                     {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rw"}]
    assert devices({"container_path": "/dev/null", "host_path": "/dev/null"})[1][1]["access"] == "rwm"


def test_a_directory_maps_its_tree() -> None:
    nodes, rules = devices({"container_path": "/dev/sound", "host_path": "/dev/snd", "permissions": "r"})
    assert [n["path"] for n in nodes] == ["/dev/sound/controlC0", "/dev/sound/pcmC0D0p"]
    assert [r.get("minor") for r in rules] == [None, 2, 16]


def test_errors_name_the_field() -> None:
    with pytest.raises(InvalidArgument, match=r"config\.devices\[0\]\.permissions: 'rx'"):
        devices({"container_path": "/dev/x", "host_path": "/dev/null", "permissions": "rx"})
    with pytest.raises(InvalidArgument, match=r"config\.devices\[1\]\.host_path: '/dev/nope'"):
        devices({"container_path": "/dev/x", "host_path": "/dev/null"},
                {"container_path": "/d", "host_path": "/dev/nope"})
    with pytest.raises(InvalidArgument, match=r"config\.devices\[0\]\.container_path: 'x'"):
        devices({"container_path": "x", "host_path": "/dev/null"})


def test_privileged_gets_host_devices_and_any_access() -> None:
    fuse = HostDevice("/dev/fuse", "c", 10, 229, 0o666, 0, 0)
    nodes, rules = devices({"container_path": "/dev/fuse", "host_path": "/dev/null"}, privileged=True,
                           host=(NULL, fuse))
    assert [n["path"] for n in nodes] == ["/dev/fuse", "/dev/null"]
    assert nodes[0]["major"] == 1  # a requested device keeps its container path
    assert rules == [{"allow": True, "access": "rwm"}]


def test_devices_at_reads_the_host() -> None:
    found = devices_at("/dev/null")
    assert list(found) == [""] and found[""].type == "c" and (found[""].major, found[""].minor) == (1, 3)
    with pytest.raises(InvalidArgument, match="not a character or block device"):
        devices_at("/etc/hostname")
    with pytest.raises(InvalidArgument, match="No such file"):
        devices_at("/dev/does-not-exist")


def test_devices_at_a_directory_and_through_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "stdio").symlink_to("/dev/null")
    assert devices_at(str(tmp_path / "stdio"))[""].path == "/dev/null"
    if os.path.isdir("/dev/net"):
        assert all(key.startswith("/") for key in devices_at("/dev/net"))


def test_host_devices_skip_pts_shm_console_and_symlinks() -> None:
    paths = {d.path for d in host_devices()}
    assert "/dev/null" in paths and "/dev/console" not in paths
    assert not [p for p in paths if p.startswith(("/dev/pts/", "/dev/shm/", "/dev/mqueue/"))]
    assert "/dev/stdin" not in paths  # a symlink
