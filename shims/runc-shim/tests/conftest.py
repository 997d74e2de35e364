"""Fixtures for testing the runc shim with the real runc and conmon: busybox bundles, and a shim whose
containers (runc state, conmon processes) are removed after each test whatever happened."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from crirt_runc_shim import RuncShim

from crirt.shim import ShimContext
from crirt.shim.conmon import is_conmon_of

BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "sleep", "echo", "cat", "stty", "tty", "yes", "head", "true", "ps")

if os.geteuid() != 0 or not shutil.which("runc") or not shutil.which("conmon") or not BUSYBOX.exists():
    pytest.skip("needs root, runc, conmon and a static busybox (Debian: runc conmon busybox-static)",
                allow_module_level=True)


@pytest.fixture(scope="session")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only-shared root filesystem: a static busybox and the applets the tests use."""
    root = tmp_path_factory.mktemp("rootfs")
    (root / "bin").mkdir()
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for applet in APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    for directory in ("proc", "sys", "dev", "tmp"):
        (root / directory).mkdir()
    return root


def oci_config(rootfs: Path, args: list[str], cgroups_path: str, *, terminal: bool = False,
               resources: dict[str, Any] | None = None) -> dict[str, Any]:
    """A minimal valid OCI runtime spec: own pid/ipc/uts/mount/network namespaces, the usual mounts,
    masked and read-only paths, a read-only root."""
    caps = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_KILL", "CAP_SETGID", "CAP_SETUID"]
    config: dict[str, Any] = {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": terminal,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {kind: caps for kind in ("bounding", "effective", "permitted")},
            "noNewPrivileges": True,
        },
        "root": {"path": str(rootfs), "readonly": True},
        "hostname": "crirt-test",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "size=8m"]},
        ],
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")],
            "cgroupsPath": cgroups_path,
            "resources": resources or {},
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        },
    }
    return config


BundleFactory = Callable[..., Path]


@pytest.fixture
def make_bundle(tmp_path: Path, rootfs: Path) -> BundleFactory:
    """``make_bundle(name, args, **spec options)`` writes ``<tmp>/bundles/<name>/config.json``. Its cgroup
    gets a unique name (relative: under the test's own cgroup), so parallel test runs never share one."""

    def make(name: str, args: list[str], **options: Any) -> Path:
        bundle = tmp_path / "bundles" / name
        bundle.mkdir(parents=True)
        config = oci_config(rootfs, args, f"crirt-test-{name}-{uuid.uuid4().hex[:12]}", **options)
        (bundle / "config.json").write_text(json.dumps(config))
        return bundle

    return make


def container_pids(shim: RuncShim, container_id: str) -> list[int]:
    """Host pids of the container's processes, as runc lists them (``runc ps``)."""
    runtime = shim.runtime
    listed = subprocess.run([str(runtime.runtime), *runtime.global_args, "ps", "--format", "json", container_id],
                            capture_output=True, text=True, check=True)
    return [int(pid) for pid in json.loads(listed.stdout) or []]


def remove_everything(shim: RuncShim) -> None:
    """Delete every container in the shim's runc root and kill every conmon it started, by id."""
    runtime = shim.runtime
    listed = subprocess.run([str(runtime.runtime), *runtime.global_args, "list", "-q"],
                            capture_output=True, text=True, check=False)
    for container_id in listed.stdout.split():
        subprocess.run([str(runtime.runtime), *runtime.global_args, "delete", "--force", container_id],
                       capture_output=True, check=False)
    for pid_file in (runtime.state_dir / "containers").glob("*/conmon.pid"):
        try:
            pid = int(pid_file.read_text())
            if is_conmon_of(Path(f"/proc/{pid}/cmdline").read_bytes(), pid_file.parent.name):
                os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass


@pytest.fixture
def shim(tmp_path: Path) -> Iterator[RuncShim]:
    """A runc shim on its own runc root and state dir, cleaned up after the test."""
    context = ShimContext(handler="runc", root=tmp_path / "root", state=tmp_path / "state")
    runc_shim = RuncShim(context, {})
    try:
        yield runc_shim
    finally:
        remove_everything(runc_shim)
