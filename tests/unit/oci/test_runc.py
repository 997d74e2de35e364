"""runc accepts generated specs: create, start and delete a busybox container from one (no pod namespaces are
joined; fresh ones stand in for them). Skipped without runc, root or a static /bin/busybox."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from crirt.model.container import ContainerConfig
from crirt.model.sandbox import PodSandboxConfig
from crirt.oci.devices import devices_at, host_devices
from crirt.oci.host import detect_host_facts
from crirt.oci.mounts import PodFiles
from crirt.oci.spec import SpecInputs, container_spec
from crirt.oci.user import resolve_user

RUNC = shutil.which("runc")
BUSYBOX = Path("/bin/busybox")
pytestmark = [
    pytest.mark.skipif(RUNC is None, reason="runc is not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="runc needs root"),
    pytest.mark.skipif(not BUSYBOX.is_file(), reason="needs a static /bin/busybox for the rootfs (busybox-static)"),
]
SCRIPT = ("id > /out/id; grep -E '^(Seccomp|CapEff|CapBnd):' /proc/self/status > /out/status; "
          "touch /ro/x 2> /out/ro || true; echo done > /dev/termination-log")


def runc(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run runc with files for its output: a created container keeps inherited pipes open."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        done = subprocess.run([str(RUNC), "--root", str(root), *args], stdin=subprocess.DEVNULL, stdout=out,
                              stderr=err, timeout=60, check=False)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(done.args, done.returncode, out.read(), err.read())


def bundle(tmp: Path, cid: str, privileged: bool) -> Path:
    rootfs = tmp / "bundle" / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    shutil.copy(BUSYBOX, rootfs / "bin" / "busybox")
    pod = tmp / "pod"
    (pod / "shm").mkdir(parents=True)
    for name in ("hosts", "resolv.conf", "hostname"):
        (pod / name).write_text("# test\n")
    out = tmp / "out"
    out.mkdir(mode=0o777)
    out.chmod(0o777)
    (out / "term").write_text("")
    (out / "term").chmod(0o666)
    config: dict[str, Any] = {
        "metadata": {"name": "c"}, "image": {"image": "busybox"},
        "command": ["/bin/busybox", "sh", "-c", SCRIPT],
        "envs": [{"key": "A", "value": b"1"}],
        "mounts": [{"container_path": "/out", "host_path": str(out)},
                   {"container_path": "/ro", "host_path": str(pod), "readonly": True, "recursive_read_only": True},
                   {"container_path": "/dev/termination-log", "host_path": str(out / "term")}],
        "devices": [{"container_path": "/dev/xnull", "host_path": "/dev/null", "permissions": "rw"}],
        "linux": {
            "resources": {"cpu_shares": 512, "cpu_quota": 50000, "cpu_period": 100000, "oom_score_adj": -500,
                          "memory_limit_in_bytes": 64 << 20},
            "security_context": {"privileged": privileged, "seccomp": {"profile_type": 0}, "no_new_privs": privileged,
                                 "run_as_user": {"value": 1000}, "supplemental_groups": [5000],
                                 "capabilities": {"add_capabilities": ["NET_ADMIN"], "drop_capabilities": ["MKNOD"]}},
        },
    }
    sandbox = {"metadata": {"name": "p", "namespace": "ns", "uid": "u"}, "hostname": "p",
               "linux": {"security_context": {"privileged": privileged, "namespace_options": {"pid": 1}}}}
    container = ContainerConfig.model_validate(config)
    facts = detect_host_facts()
    spec = container_spec(SpecInputs(
        container_id=cid, sandbox_id="sb", config=container, sandbox_config=PodSandboxConfig.model_validate(sandbox),
        image_name="busybox", image_config={}, user=resolve_user(container.linux.security_context, "", None, None),
        pod_files=PodFiles(hostname=str(pod / "hostname"), hosts=str(pod / "hosts"),
                           resolv_conf=str(pod / "resolv.conf"), shm=str(pod / "shm")),
        host=facts, rro_mounts=True, devices={"/dev/null": devices_at("/dev/null")},
        host_devices=host_devices() if privileged else ()))
    # Fresh namespaces instead of a pod's pinned ones (those are the sandbox tests' business).
    spec["linux"]["namespaces"] = [{"type": kind} for kind in ("pid", "network", "ipc", "uts", "mount")]
    (tmp / "bundle" / "config.json").write_text(json.dumps(spec))
    return tmp / "bundle"


@pytest.mark.parametrize("privileged", [False, True], ids=["restricted", "privileged"])
def test_runc_creates_and_runs_a_generated_spec(tmp_path: Path, privileged: bool) -> None:
    cid = f"crirt-oci-test-{uuid.uuid4().hex[:12]}"
    root = tmp_path / "runc"
    path = bundle(tmp_path, cid, privileged)
    try:
        created = runc(root, "create", "--bundle", str(path), cid)
        assert created.returncode == 0, created.stderr
        assert json.loads(runc(root, "state", cid).stdout)["status"] == "created"
        started = runc(root, "start", cid)
        assert started.returncode == 0, started.stderr
        deadline = time.monotonic() + 20
        while json.loads(runc(root, "state", cid).stdout)["status"] != "stopped":
            assert time.monotonic() < deadline, "the container did not finish"
            time.sleep(0.05)
    finally:
        runc(root, "delete", "--force", cid)
    out = tmp_path / "out"
    assert (out / "id").read_text().startswith("uid=1000 gid=0 groups=0,5000")
    status = dict(line.split(":\t") for line in (out / "status").read_text().splitlines())
    assert status["Seccomp"] == ("0" if privileged else "2")
    assert status["CapEff"] == "0000000000000000"  # a non-root user keeps no effective capabilities
    bounding = int(status["CapBnd"], 16)
    assert bounding >> 12 & 1  # CAP_NET_ADMIN
    assert bool(bounding >> 27 & 1) is privileged  # CAP_MKNOD: dropped unless privileged
    assert "Read-only file system" in (out / "ro").read_text()
    assert (out / "term").read_text() == "done\n"
    assert not list(Path("/sys/fs/cgroup").glob(f"*/crirt-{cid}")) and not Path(f"/sys/fs/cgroup/crirt-{cid}").exists()
