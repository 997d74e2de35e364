"""The shim v2 driver against Debian's real containerd-shim-runc-v2 and runc, on busybox bundles: one shim per
pod, stdio into CRI logs, exec, a new driver taking over (crirt restart) and cleanup of a shim that died."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from crirt.errors import FailedPrecondition, NotFound
from crirt.shim.contract import CreateTask, ExecProcess, Stdio
from crirt.shim.taskv2 import ShimV2Runtime

BINARY = shutil.which("containerd-shim-runc-v2")
NAMESPACE = "crirt-test"
RUNC_ROOT = Path("/run/containerd/runc") / NAMESPACE
if os.geteuid() != 0 or BINARY is None or not shutil.which("runc") or not Path("/bin/busybox").exists():
    pytest.skip("needs root, containerd-shim-runc-v2, runc and busybox-static", allow_module_level=True)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def shim_pids(state: Path) -> list[int]:
    """The shim daemons a driver on ``state`` started (found by their -address), by pid."""
    marker = str(state / "shim.sock").encode()
    pids = []
    for entry in os.scandir("/proc"):
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and marker in Path(entry.path, "cmdline").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
    return pids


@pytest.fixture
async def driver(tmp_path: Path) -> AsyncIterator[ShimV2Runtime]:
    """A driver on its own state dir; afterwards every runc container of the test and every shim is gone."""
    runtime = ShimV2Runtime(binary=Path(BINARY or ""), state_dir=tmp_path / "state", namespace=NAMESPACE)
    try:
        yield runtime
    finally:
        await runtime.close()
        remove_leftovers(tmp_path)


def remove_leftovers(tmp_path: Path) -> None:
    """Delete the runc containers with a bundle under ``tmp_path`` and kill the shims of its driver."""
    listed = subprocess.run(["runc", "--root", str(RUNC_ROOT), "list", "--format", "json"],
                            capture_output=True, text=True, check=False)
    for container in json.loads(listed.stdout or "null") or []:
        if container["bundle"].startswith(f"{tmp_path}/"):
            subprocess.run(["runc", "--root", str(RUNC_ROOT), "delete", "--force", container["id"]], check=False)
    for pid in shim_pids(tmp_path / "state"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def runc_knows(container_id: str) -> bool:
    return subprocess.run(["runc", "--root", str(RUNC_ROOT), "state", container_id], capture_output=True,
                          check=False).returncode == 0


@pytest.fixture
def bundle(tmp_path: Path) -> Callable[..., Path]:
    """``bundle(name, script)``: a busybox bundle running ``sh -c script``, its own namespaces and cgroup."""
    rootfs = tmp_path / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    shutil.copy2("/bin/busybox", rootfs / "bin" / "busybox")
    for applet in ("sh", "sleep", "echo", "cat", "yes", "head", "true", "stty", "tty", "dd"):
        (rootfs / "bin" / applet).symlink_to("busybox")
    for directory in ("proc", "dev", "tmp"):
        (rootfs / directory).mkdir()

    def make(name: str, script: str, resources: dict[str, Any] | None = None) -> Path:
        path = tmp_path / "bundles" / name
        path.mkdir(parents=True)
        spec: dict[str, Any] = {
            "ociVersion": "1.0.2",
            "process": {"user": {"uid": 0, "gid": 0}, "args": ["/bin/sh", "-c", script], "env": ["PATH=/bin"],
                        "cwd": "/", "capabilities": {k: ["CAP_KILL"] for k in ("bounding", "effective", "permitted")}},
            "root": {"path": str(rootfs), "readonly": True},
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                       {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid"]},
                       {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
                        "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}],
            "linux": {"namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")],
                      "cgroupsPath": f"crirt-test-{uuid.uuid4().hex[:12]}", "resources": resources or {}},
        }
        (path / "config.json").write_text(json.dumps(spec))
        return path

    return make


def task(task_id: str, pod: str, bundle: Path, log: Path | None = None, **stdio: bool) -> CreateTask:
    return CreateTask(id=task_id, sandbox_id=pod, bundle=bundle, stdio=Stdio(log_path=log, **stdio))


def log_text(path: Path) -> list[str]:
    """A CRI log's lines without their time stamps."""
    return [line.split(" ", 1)[1] for line in path.read_text().splitlines()] if path.exists() else []


async def eventually(predicate: Callable[[], Any], limit: float = 10.0) -> Any:
    for _ in range(int(limit / 0.05)):
        if value := predicate():
            return value
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met")


async def test_a_task_from_create_to_delete(driver: ShimV2Runtime, bundle: Callable[..., Path],
                                            tmp_path: Path) -> None:
    log = tmp_path / "one.log"
    created = await driver.create(task("one", "pod1", bundle("one", "echo out; echo err >&2; exit 3"), log))
    assert created.status == "created" and created.pid > 0
    assert len(shim_pids(driver.state_dir)) == 1
    assert (await driver.start("one")).pid == created.pid
    exit_status = await driver.wait("one")
    assert exit_status.exit_code == 3
    state = await driver.state("one")
    assert (state.status, state.exit_code) == ("stopped", 3)
    await driver.kill("one", signal.SIGTERM)  # an exited task: nothing to signal, not an error
    await eventually(lambda: len(log_text(log)) == 2)
    assert sorted(log_text(log)) == ["stderr F err", "stdout F out"]
    assert (await driver.delete("one")) is not None
    assert await driver.delete("one") is None  # idempotent
    with pytest.raises(NotFound):
        await driver.state("one")
    await eventually(lambda: not shim_pids(driver.state_dir))  # the pod's last task: the shim shut down
    assert not list((driver.state_dir / "tasks").iterdir()) and not list((driver.state_dir / "pods").iterdir())


async def test_reopen_log_starts_a_new_file_after_a_rotation(driver: ShimV2Runtime, bundle: Callable[..., Path],
                                                              tmp_path: Path) -> None:
    log = tmp_path / "rot.log"
    await driver.create(task("rot", "pod1", bundle("rot", "echo before; read line; echo after; sleep 1000"), log,
                             stdin=True))
    await driver.start("rot")
    await eventually(lambda: log_text(log) == ["stdout F before"])
    log.rename(tmp_path / "rot.log.1")  # the kubelet's rotation
    await driver.reopen_log("rot")
    client = await driver.attach("rot", stdin=True, terminal=False)
    await client.write_stdin(b"go\n")  # the process goes on only now: "after" is written after the reopen
    await eventually(lambda: log.exists() and log_text(log) == ["stdout F after"])
    await client.close()
    assert log_text(tmp_path / "rot.log.1") == ["stdout F before"]
    await driver.kill("rot", signal.SIGKILL)
    await driver.wait("rot")
    await driver.delete("rot")


async def test_one_shim_per_pod_and_processes_in_a_task(driver: ShimV2Runtime, bundle: Callable[..., Path],
                                                        tmp_path: Path) -> None:
    serve = "trap 'exit 0' TERM; sleep 1000 & wait"
    for task_id, pod in (("a1", "podA"), ("a2", "podA"), ("b1", "podB")):
        await driver.create(task(task_id, pod, bundle(task_id, serve)))
        await driver.start(task_id)
    shims = {task_id: (await driver.connect(task_id)).shim_pid for task_id in ("a1", "a2", "b1")}
    assert shims["a1"] == shims["a2"] != shims["b1"] and len(shim_pids(driver.state_dir)) == 2

    result = await driver.exec_sync("a1", ExecProcess(exec_id="e1", process={
        "args": ["sh", "-c", "echo hi; echo no >&2; exit 4"], "cwd": "/", "env": ["PATH=/bin"]}), 10)
    assert (result.exit_code, result.stdout, result.stderr, result.timed_out) == (4, b"hi\n", b"no\n", False)
    big = await driver.exec_sync("a2", ExecProcess(exec_id="e2", process={
        "args": ["sh", "-c", "yes abcdefgh | head -c 1000000"], "cwd": "/", "env": ["PATH=/bin"]}), 10)
    assert len(big.stdout) == 1_000_000 and big.exit_code == 0  # far more than a pipe holds
    slow = await driver.exec_sync("a1", ExecProcess(exec_id="e3", process={
        "args": ["sleep", "30"], "cwd": "/", "env": ["PATH=/bin"]}), 0.5)
    assert slow.timed_out and slow.exit_code == 137

    await driver.update("a1", {"pids": {"limit": 100}})
    stats = await driver.stats("a1")
    assert stats

    await driver.kill("a1", signal.SIGTERM)
    assert (await driver.wait("a1")).exit_code == 0
    with pytest.raises(FailedPrecondition, match="not running"):
        await driver.exec_sync("a1", ExecProcess(exec_id="e5", process={"args": ["true"], "cwd": "/"}), 5)
    assert (await driver.delete("a2")).exit_code == 137  # still running: killed first
    for task_id in ("a1", "b1"):
        await driver.delete(task_id)
    await eventually(lambda: not shim_pids(driver.state_dir))


async def test_a_new_driver_takes_over_running_tasks(driver: ShimV2Runtime, bundle: Callable[..., Path],
                                                     tmp_path: Path) -> None:
    log = tmp_path / "tick.log"
    script = "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done"
    await driver.create(task("tick", "pod1", bundle("tick", script), log))
    await driver.start("tick")
    await eventually(lambda: len(log_text(log)) >= 3)
    await driver.close()  # crirt stops; the shim and the task carry on, writing into the FIFO
    await asyncio.sleep(0.5)
    successor = ShimV2Runtime(binary=driver.binary, state_dir=driver.state_dir, namespace=NAMESPACE)
    try:
        assert (await successor.state("tick")).status == "running"
        count = len(log_text(log))
        await eventually(lambda: len(log_text(log)) > count + 3)  # the copier is back
        numbers = [int(line.rsplit(" ", 1)[1]) for line in log_text(log)]
        assert numbers == list(range(len(numbers)))  # nothing lost or doubled in between
        result = await successor.exec_sync("tick", ExecProcess(exec_id="e", process={
            "args": ["echo", "again"], "cwd": "/", "env": ["PATH=/bin"]}), 10)
        assert result.stdout == b"again\n"
        await successor.kill("tick", signal.SIGKILL)
        assert (await successor.wait("tick")).exit_code == 137
        await successor.delete("tick")
        await eventually(lambda: not shim_pids(driver.state_dir))
    finally:
        await successor.close()


async def test_a_dead_shim_is_cleaned_up_with_its_delete_action(driver: ShimV2Runtime,
                                                                bundle: Callable[..., Path]) -> None:
    await driver.create(task("orphan", "pod1", bundle("orphan", "sleep 1000")))
    await driver.start("orphan")
    (shim,) = shim_pids(driver.state_dir)
    os.kill(shim, signal.SIGKILL)
    await eventually(lambda: not shim_pids(driver.state_dir))
    assert (await driver.wait("orphan")).exit_code == 255  # nobody can tell any more
    assert (await driver.state("orphan")).status == "stopped"
    exit_status = await driver.delete("orphan")  # runs `containerd-shim-runc-v2 ... -bundle B delete`
    assert exit_status is not None and exit_status.exit_code == 137
    assert not runc_knows("orphan"), "the runc container is gone"
    assert not (driver.state_dir / "tasks" / "orphan").exists()


async def test_a_failed_create_leaves_nothing(driver: ShimV2Runtime, bundle: Callable[..., Path]) -> None:
    path = bundle("broken", "true")
    spec = json.loads((path / "config.json").read_text())
    spec["process"]["args"] = ["/bin/does-not-exist"]
    spec["root"]["path"] = "/nonexistent-rootfs"
    (path / "config.json").write_text(json.dumps(spec))
    with pytest.raises(Exception, match="Create"):
        await driver.create(task("broken", "pod1", path))
    assert not (driver.state_dir / "tasks" / "broken").exists()
    await eventually(lambda: not shim_pids(driver.state_dir))  # started for nothing: shut down again


async def read_all(session: Any) -> dict[int, bytes]:
    """Every chunk of a session's output by stream, until its end."""
    out: dict[int, bytes] = {}
    while True:
        stream, chunk = await asyncio.wait_for(session.read_output(), 10)
        if stream == 0:
            return out
        out[stream] = out.get(stream, b"") + chunk


async def test_interactive_exec_with_pipes_and_with_a_terminal(driver: ShimV2Runtime,
                                                               bundle: Callable[..., Path]) -> None:
    await driver.create(task("box", "pod1", bundle("box", "sleep 1000")))
    await driver.start("box")
    env = {"cwd": "/", "env": ["PATH=/bin"]}

    piped = await driver.exec_interactive("box", ExecProcess(exec_id="p", stdio=Stdio(stdin=True), process={
        "args": ["sh", "-c", "cat; echo done >&2; exit 5"], **env}))
    await piped.write_stdin(b"line one\n")
    await piped.write_stdin(b"x" * 200_000)  # more than the FIFO holds: waits for the process to read
    await piped.close_stdin()
    output = await read_all(piped)
    assert output == {1: b"line one\n" + b"x" * 200_000, 2: b"done\n"}
    assert await piped.wait() == 5
    await piped.close()

    tty = await driver.exec_interactive("box", ExecProcess(exec_id="t", stdio=Stdio(stdin=True, terminal=True),
                                                           process={"args": ["sh"], **env}))
    await tty.resize(100, 30)
    await tty.write_stdin(b"stty size; tty; exit 3\n")
    output = await read_all(tty)
    assert set(output) == {1} and b"30 100" in output[1] and b"/dev/pts/" in output[1], output
    assert await tty.wait() == 3
    await tty.close()

    missing = await driver.exec_interactive("box", ExecProcess(exec_id="m", process={"args": ["/no/such"], **env}))
    output = await read_all(missing)
    assert await missing.wait() == 255 and b"/no/such" in output[2], output
    await missing.close()

    hanging = await driver.exec_interactive("box", ExecProcess(exec_id="h", process={"args": ["sleep", "100"],
                                                                                      **env}))
    await hanging.close()  # kills it
    assert await hanging.wait() == 137
    assert not list((driver.state_dir / "tasks" / "box" / "exec").iterdir())


async def test_an_oom_kill_is_reported(driver: ShimV2Runtime, bundle: Callable[..., Path]) -> None:
    """The shim publishes TaskOOM to crirt's event server; the exit says oom_killed."""
    limit = {"memory": {"limit": 16 << 20, "swap": 16 << 20}}
    await driver.create(task("hog", "pod1", bundle("hog", "exec dd if=/dev/zero of=/dev/fill bs=1M count=64",
                                                   resources=limit)))
    await driver.start("hog")
    exit_status = await asyncio.wait_for(driver.wait("hog"), 30)
    assert (exit_status.exit_code, exit_status.oom_killed) == (137, True)
    assert (await driver.delete("hog")).oom_killed
    await driver.create(task("fine", "pod1", bundle("fine", "exit 0")))
    await driver.start("fine")
    assert not (await driver.wait("fine")).oom_killed


async def test_attach_carries_stdin_and_output_to_several_clients(driver: ShimV2Runtime,
                                                                  bundle: Callable[..., Path],
                                                                  tmp_path: Path) -> None:
    log = tmp_path / "cat.log"
    script = "while read line; do echo \"got $line\"; echo \"err $line\" >&2; done; echo bye"
    await driver.create(task("cat", "pod1", bundle("cat", script), log, stdin=True, stdin_once=True))
    await driver.start("cat")
    first = await driver.attach("cat", stdin=True, terminal=False)
    second = await driver.attach("cat", stdin=False, terminal=False)
    await first.write_stdin(b"one\n")
    got = {await first.read_output(), await first.read_output()}
    assert got == {(1, b"got one\n"), (2, b"err one\n")}
    assert {await second.read_output(), await second.read_output()} == got  # every client sees the output
    await first.close_stdin()  # end of input: the task was created with stdin_once
    assert await first.read_output() == (1, b"bye\n")
    assert await first.wait() == 0
    assert await second.read_output() == (1, b"bye\n")
    assert await second.read_output() == (0, b"")  # the task ended: the connection is closed
    await first.close()
    await second.close()
    assert sorted(log_text(log)) == ["stderr F err one", "stdout F bye", "stdout F got one"]
    await driver.delete("cat")
