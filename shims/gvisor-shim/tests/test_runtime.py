"""The gvisor shim's driver against the real runsc and conmon, without a daemon: a sandbox container and
sub-containers on busybox bundles (``--network=none``), their stdio, terminals, exit codes, failures and a
driver restart."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from crirt_gvisor_shim import GvisorShim
from crirt_gvisor_shim.runtime import RUNSC_CAPABILITIES
from support.network import wait_until

from crirt.errors import AlreadyExists, FailedPrecondition, Unimplemented
from crirt.shim import CreateTask, ExecProcess, ShimContext, Stdio
from crirt.shim.conmon import RuntimeFailure

from .conftest import needs_gvisor, runsc_processes

pytestmark = needs_gvisor

SANDBOX = "sb"
NEWER_CAPABILITIES = ["CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE"]
"""Linux 5.8's and 5.9's capabilities, which crirt gives a privileged container and runsc 20221219 refuses."""
JOIN = {"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": SANDBOX}


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rootfs")
    (root / "bin").mkdir()
    shutil.copy2("/bin/busybox", root / "bin" / "busybox")
    for applet in ("sh", "sleep", "echo", "cat", "ps", "hostname", "stty", "grep"):
        (root / "bin" / applet).symlink_to("busybox")
    for directory in ("proc", "dev", "tmp"):
        (root / directory).mkdir()
    return root


class Pod:
    """A GvisorShim on private directories, with a running sandbox container; everything removed after."""

    def __init__(self, base: Path, rootfs: Path) -> None:
        self.base, self.rootfs = base, rootfs
        self.shim = self.new_shim()
        (base / "logs").mkdir()

    def new_shim(self) -> GvisorShim:
        return GvisorShim(ShimContext(handler="runsc", root=self.base / "root", state=self.base / "state"),
                          {"network": "none"})

    def bundle(self, name: str, args: list[str], terminal: bool, annotations: dict[str, str]) -> Path:
        bundle = self.base / "bundles" / name
        bundle.mkdir(parents=True)
        spec: dict[str, Any] = {
            "ociVersion": "1.0.2",
            "process": {"terminal": terminal, "user": {"uid": 0, "gid": 0}, "args": args, "env": ["PATH=/bin"],
                        "cwd": "/"},
            "root": {"path": str(self.rootfs), "readonly": True},
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
            "annotations": annotations,
            "linux": {"namespaces": [{"type": t} for t in ("pid", "ipc", "mount", "network")],
                      "cgroupsPath": f"/crirt-gvisor-test-{self.base.name}-{name}"},
        }
        (bundle / "config.json").write_text(json.dumps(spec))
        return bundle

    def log(self, name: str) -> Path:
        return self.base / "logs" / f"{name}.log"

    def task(self, name: str, args: list[str], terminal: bool = False, join: bool = True,
             stdin: bool = False) -> CreateTask:
        annotations = JOIN if join else {"io.kubernetes.cri.container-type": "sandbox"}
        return CreateTask(id=name, sandbox_id=SANDBOX, bundle=self.bundle(name, args, terminal, annotations),
                          annotations=annotations,
                          stdio=Stdio(log_path=self.log(name), terminal=terminal, stdin=stdin))

    async def run(self, name: str, args: list[str], terminal: bool = False) -> None:
        await self.shim.create(self.task(name, args, terminal))
        await self.shim.start(name)


@pytest.fixture
def pod(tmp_path: Path, rootfs: Path) -> Iterator[Pod]:
    pod = Pod(tmp_path, rootfs)
    asyncio.run(pod.shim.create(pod.task(SANDBOX, ["/bin/sleep", "1000"], join=False)))
    asyncio.run(pod.shim.start(SANDBOX))
    yield pod
    root = pod.shim.runtime.root
    for container in pod.base.glob("state/containers/*"):
        asyncio.run(pod.shim.delete(container.name))
    for pid, _ in runsc_processes(root):
        os.kill(pid, 9)


def lines(path: Path) -> list[tuple[str, str]]:
    found = []
    for line in path.read_text().splitlines():
        match = re.fullmatch(r"\S+ (stdout|stderr) F (.*)", line)
        assert match, line
        found.append((match.group(1), match.group(2)))
    return found


def test_sub_containers_log_and_record_their_exit(pod: Pod) -> None:
    async def scenario() -> None:
        shim = pod.shim
        await pod.run("talker", ["/bin/sh", "-c", "echo out; echo err >&2; exec sleep 1000"])
        await pod.run("quitter", ["/bin/sh", "-c", "echo bye; exit 3"])
        assert (await asyncio.wait_for(shim.wait("quitter"), 15)).exit_code == 3
        assert lines(pod.log("quitter")) == [("stdout", "bye")]
        assert (await shim.state("quitter")).status == "stopped"
        assert (await shim.state("quitter")).exit_code == 3
        running = await shim.state("talker")
        assert running.status == "running" and running.pid == (await shim.state(SANDBOX)).pid
        wait_until(lambda: len(lines(pod.log("talker"))) == 2, 10)  # conmon writes it, not this loop
        assert sorted(lines(pod.log("talker"))) == [("stderr", "err"), ("stdout", "out")]
        stats = await shim.stats("talker")
        assert stats["memory"]["usage_bytes"] > 0 and stats["process"]["process_count"] >= 1
        await shim.kill("talker", 9)
        killed = await asyncio.wait_for(shim.wait("talker"), 15)
        assert (killed.exit_code, killed.oom_killed) == (137, False)
        with pytest.raises(FailedPrecondition, match="stopped"):
            await shim.stats("talker")
        assert (await shim.delete("talker")).exit_code == 137
        assert await shim.delete("talker") is None  # deleting twice is fine

    asyncio.run(scenario())
    sandboxes = [pid for pid, argv in runsc_processes(pod.shim.runtime.root) if argv[0] == "runsc-sandbox"]
    assert len(sandboxes) == 1


def test_sub_container_with_a_terminal(pod: Pod) -> None:
    async def scenario() -> None:
        await pod.run("tty", ["/bin/sh", "-c", "stty size; exec sleep 1000"], terminal=True)
        wait_until(lambda: pod.log("tty").read_text(), 10)
        assert [stream for stream, _ in lines(pod.log("tty"))] == ["stdout"]
        await pod.shim.resize("tty", None, 100, 40)
        await pod.shim.kill("tty", 9)
        assert (await asyncio.wait_for(pod.shim.wait("tty"), 15)).exit_code == 137

    asyncio.run(scenario())


def test_a_sub_container_reads_what_attach_sends(pod: Pod) -> None:
    async def scenario() -> None:
        await pod.shim.create(pod.task("reader", ["/bin/sh", "-c", "read line; echo got $line"], stdin=True))
        await pod.shim.start("reader")
        io = await pod.shim.attach("reader", stdin=True, terminal=False)
        try:
            await io.write_stdin(b"hello\n")
            assert (await asyncio.wait_for(pod.shim.wait("reader"), 15)).exit_code == 0
        finally:
            await io.close()
        assert lines(pod.log("reader")) == [("stdout", "got hello")]  # its stdin was /dev/null: "got"

    asyncio.run(scenario())


def test_capabilities_runsc_does_not_know_are_dropped(pod: Pod) -> None:
    """A privileged container's spec lists every Linux capability; runsc 20221219 refuses CAP_PERFMON and the
    later ones ("unknown capability"), so the shim keeps those it knows."""
    async def scenario() -> None:
        task = pod.task("privileged", ["/bin/sh", "-c", "grep CapEff /proc/self/status"])
        spec = json.loads((task.bundle / "config.json").read_text())
        every = [*sorted(RUNSC_CAPABILITIES), *NEWER_CAPABILITIES]
        spec["process"]["capabilities"] = {name: every for name in
                                           ("bounding", "effective", "permitted", "inheritable", "ambient")}
        (task.bundle / "config.json").write_text(json.dumps(spec))
        await pod.shim.create(task)
        await pod.shim.start("privileged")
        assert (await asyncio.wait_for(pod.shim.wait("privileged"), 15)).exit_code == 0
        caps = json.loads((task.bundle / "config.json").read_text())["process"]["capabilities"]
        assert all(caps[name] == sorted(RUNSC_CAPABILITIES) for name in caps)
        wait_until(lambda: pod.log("privileged").read_text(), 10)
        # capabilities 0-37 but CAP_NET_RAW (13), which runsc drops unless it runs with --net-raw
        assert lines(pod.log("privileged")) == [("stdout", "CapEff:\t0000003fffffdfff")]

    asyncio.run(scenario())


def test_exec_in_a_sub_container(pod: Pod) -> None:
    async def scenario() -> None:
        await pod.run("box", ["/bin/sleep", "1000"])
        process = {"args": ["/bin/sh", "-c", "cat; echo err >&2; exit 4"], "cwd": "/", "env": ["PATH=/bin"],
                   "user": {"uid": 0, "gid": 0}}
        result = await pod.shim.exec_sync("box", ExecProcess(exec_id="e1", process=process), 10)
        assert (result.exit_code, result.stdout, result.stderr) == (4, b"", b"err\n")
        began = time.monotonic()  # answered at the exit, though a child inside the sandbox holds stdout
        probe = {**process, "args": ["/bin/sh", "-c", "echo ok; sleep 100 &"]}
        result = await pod.shim.exec_sync("box", ExecProcess(exec_id="e3", process=probe), 10)
        assert (result.exit_code, result.stdout, time.monotonic() - began < 2) == (0, b"ok\n", True)
        session = await pod.shim.exec_interactive("box", ExecProcess(exec_id="e2", process=process,
                                                                     stdio=Stdio(stdin=True)))
        try:
            await session.write_stdin(b"typed\n")
            await session.close_stdin()
            output = []
            while (chunk := await asyncio.wait_for(session.read_output(), 10)) != (0, b""):
                output.append(chunk)
            assert (1, b"typed\n") in output and (2, b"err\n") in output
            assert await asyncio.wait_for(session.wait(), 10) == 4
        finally:
            await session.close()

    asyncio.run(scenario())


def test_failures_are_reported_and_leave_nothing(pod: Pod) -> None:
    async def scenario() -> None:
        shim = pod.shim
        await shim.create(pod.task("bad", ["/no/such/program"]))
        with pytest.raises(RuntimeFailure, match=r"runsc start bad: .*no/such/program"):
            await shim.start("bad")
        started = time.monotonic()
        assert (await shim.delete("bad")).exit_code == 128  # never ran
        await shim.create(pod.task("idle", ["/bin/sleep", "1"]))
        with pytest.raises(AlreadyExists):
            await shim.create(pod.task("idle-again", ["/bin/true"]).model_copy(update={"id": "idle"}))
        assert (await shim.delete("idle")).exit_code == 128
        assert time.monotonic() - started < 5  # no monitor lingers for its grace period
        orphan = pod.task("orphan", ["/bin/true"])
        spec = json.loads((orphan.bundle / "config.json").read_text())
        spec["annotations"]["io.kubernetes.cri.sandbox-id"] = "no-such-sandbox"
        (orphan.bundle / "config.json").write_text(json.dumps(spec))
        with pytest.raises(FailedPrecondition, match="no-such-sandbox"):
            await shim.create(orphan)
        with pytest.raises(Unimplemented, match="update"):
            await shim.update(SANDBOX, {})
        assert sorted(p.name for p in pod.base.glob("state/containers/*")) == [SANDBOX]

    asyncio.run(scenario())
    holders = [pid for pid, argv in runsc_processes(pod.shim.runtime.root) if "wait" in argv]
    assert holders == []


def test_a_new_driver_takes_over_running_sub_containers(pod: Pod) -> None:
    asyncio.run(pod.run("survivor", ["/bin/sh", "-c", "echo before; exec sleep 1000"]))
    restarted = pod.new_shim()  # what a restarted crirt does: nothing is kept in memory

    async def scenario() -> None:
        assert (await restarted.state("survivor")).status == "running"
        await restarted.kill("survivor", 15)
        status = await asyncio.wait_for(restarted.wait("survivor"), 15)
        assert status.exit_code == 143
        assert (await restarted.delete("survivor")).exit_code == 143

    asyncio.run(scenario())
