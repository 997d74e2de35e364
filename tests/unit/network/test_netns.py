"""Namespace pinning and mounts, for real (root): pins survive without a process and unpin cleanly."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from crirt.network import netns


def test_parse_mountinfo_with_escapes() -> None:
    text = ("36 35 98:0 /mnt1 /mnt\\040with\\040space rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n"
            "37 35 0:4 net:[4026532179] /run/crirt/pods/x/net rw - nsfs nsfs rw\n"
            "garbage line\n")
    assert netns.parse_mountinfo(text) == [("/mnt with space", "ext3"), ("/run/crirt/pods/x/net", "nsfs")]
    assert netns.unescape_mountinfo("a\\134b") == "a\\b" and netns.unescape_mountinfo("a\\9") == "a\\9"


@pytest.fixture
def pods_dir(tmp_path: Path):
    directory = tmp_path / "pods"
    netns.ensure_shared_dir(directory)
    yield directory
    for point, _ in reversed(netns.mounts_under(directory)):
        netns.unmount(point)


def test_shared_pods_dir_is_idempotent(pods_dir: Path) -> None:
    netns.ensure_shared_dir(pods_dir)
    assert [p for p, _ in netns.mounts_under(pods_dir)] == [str(pods_dir)]
    line = next(line for line in Path("/proc/self/mountinfo").read_text().splitlines()
                if line.split()[4] == str(pods_dir))
    assert "shared:" in line


def test_pin_hostname_sysctls_then_unpin(pods_dir: Path) -> None:
    pod = pods_dir / "p1"
    pod.mkdir()
    paths = asyncio.run(netns.pin_namespaces(pod, ["net", "uts", "ipc"], "pinned-host",
                                             [("net/ipv4/ip_unprivileged_port_start", "79"),
                                              ("kernel/shmmni", "1234")]))
    for kind, path in paths.items():
        assert netns.is_namespace_file(path), kind
        assert os.stat(path).st_ino != os.stat(f"/proc/self/ns/{kind}").st_ino
    run = subprocess.run(["nsenter", f"--uts={paths['uts']}", f"--net={paths['net']}", f"--ipc={paths['ipc']}",
                          "sh", "-c", "hostname; cat /proc/sys/net/ipv4/ip_unprivileged_port_start "
                          "/proc/sys/kernel/shmmni"], capture_output=True, text=True)
    assert run.stdout.split() == ["pinned-host", "79", "1234"]
    for path in paths.values():
        assert netns.unpin(path)
        assert not path.exists()
        assert not netns.unpin(path)  # twice is fine
    assert [p for p, _ in netns.mounts_under(pods_dir)] == [str(pods_dir)]


def test_a_refused_sysctl_is_a_sysctl_error_naming_it(pods_dir: Path) -> None:
    with pytest.raises(netns.SysctlError, match="kernel/shmmax = 'many'"):
        asyncio.run(netns.pin_namespaces(pods_dir, ["ipc"], "", [("kernel/shmmax", "many")]))
    netns.unpin(pods_dir / "ipc")
    with pytest.raises(ValueError, match="pid"):
        asyncio.run(netns.pin_namespaces(pods_dir, ["pid"]))


def test_shm_tmpfs(pods_dir: Path) -> None:
    shm = pods_dir / "p" / "shm"
    netns.mount_shm(shm, 1 << 20)
    assert (str(shm), "tmpfs") in netns.mounts_under(pods_dir)
    (shm / "segment").write_bytes(b"x")
    assert netns.unpin(shm) and not shm.exists()


def test_loopback_up_in_a_pinned_namespace_only(pods_dir: Path) -> None:
    net = asyncio.run(netns.pin_namespaces(pods_dir, ["net"]))["net"]
    show = ["nsenter", f"--net={net}", "ip", "-o", "link", "show", "lo"]
    assert ",UP" not in subprocess.run(show, capture_output=True, text=True).stdout
    own = os.stat("/proc/thread-self/ns/net").st_ino
    asyncio.run(netns.loopback_up(net))
    assert ",UP" in subprocess.run(show, capture_output=True, text=True).stdout
    assert os.stat("/proc/thread-self/ns/net").st_ino == own  # only the helper thread moved
    netns.unpin(net)
    with pytest.raises(netns.NamespaceError, match="bringing up lo"):
        asyncio.run(netns.loopback_up(net))
