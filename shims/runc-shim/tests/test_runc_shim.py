"""The runc shim and crirt's conmon driver against the real runc and conmon (no fakes): busybox containers
are created, started, exec'd into, signalled, waited for, measured and deleted."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from crirt_runc_shim import RuncShim, features_from

from crirt.errors import FailedPrecondition, InvalidArgument, NotFound
from crirt.shim import CreateTask, ExecProcess, HandlerFeatures, ShimContext, Stdio
from crirt.shim.conmon import RuntimeFailure
from crirt.shim.registry import HandlerSpec, ShimRegistry

from .conftest import container_pids

T = TypeVar("T")
BundleFactory = Callable[..., Path]

CRI_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}(?:Z|[+-]\d\d:\d\d)) (stdout|stderr) ([FP]) (.*)$")
"""A CRI log line: RFC 3339 timestamp with nanoseconds, stream, full or partial line, text."""
# PID 1 ignores SIGTERM unless it handles it, so the test container traps it and exits 143 like a shell would.
SERVE = ["sh", "-c", "trap 'exit 143' TERM; echo hello; echo oops >&2; sleep 1000 & wait"]


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def process(*args: str) -> dict[str, Any]:
    return {"args": list(args), "env": ["PATH=/bin"], "cwd": "/", "user": {"uid": 0, "gid": 0}}


def log_lines(path: Path) -> list[tuple[str, str, str, str]]:
    lines = []
    for line in path.read_text().splitlines():
        match = CRI_LOG_LINE.match(line)
        assert match, f"not a CRI log line: {line!r}"
        lines.append(match.groups())
    return lines


def conmon_pid(shim: RuncShim, container_id: str) -> int:
    return int((shim.runtime.files(container_id).conmon_pid).read_text())


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


async def wait_for_log(path: Path, text: str) -> None:
    """Wait (up to 5 s) until ``text`` shows in the log file."""
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{text!r} never appeared in {path}: {path.read_text() if path.exists() else 'no file'}")


def test_full_lifecycle(shim: RuncShim, make_bundle: BundleFactory, tmp_path: Path) -> None:
    log = tmp_path / "logs" / "c1.log"
    log.parent.mkdir()
    task = CreateTask(id="c1", sandbox_id="pod1", bundle=make_bundle("c1", SERVE), stdio=Stdio(log_path=log))

    async def scenario() -> None:
        created = await shim.create(task)
        assert created.status == "created" and created.pid > 0
        assert (await shim.state("c1")).status == "created"

        started = await shim.start("c1")
        assert started.status == "running" and started.pid == created.pid
        await wait_for_log(log, "oops")

        hi = await shim.exec_sync("c1", ExecProcess(exec_id="e1", process=process("echo", "hi")), 10)
        assert (hi.exit_code, hi.stdout, hi.stderr, hi.timed_out) == (0, b"hi\n", b"", False)
        mixed = await shim.exec_sync("c1", ExecProcess(exec_id="e2", process=process(
            "sh", "-c", "echo out; echo err >&2; exit 7")), None)
        assert (mixed.exit_code, mixed.stdout, mixed.stderr) == (7, b"out\n", b"err\n")

        began = time.monotonic()
        slow = await shim.exec_sync("c1", ExecProcess(exec_id="e4", process=process("sleep", "1000")), 0.5)
        assert slow.timed_out and time.monotonic() - began < 5
        assert len(container_pids(shim, "c1")) == 2  # sh and its sleep: the timed-out exec is gone

        stats = await shim.stats("c1")
        assert stats["memory"]["usage_bytes"] > 0 and stats["memory"]["working_set_bytes"] > 0
        assert stats["cpu"]["usage_core_nano_seconds"] > 0 and stats["process"]["process_count"] == 2

        await shim.kill("c1", 15)
        exit_status = await asyncio.wait_for(shim.wait("c1"), 10)
        assert exit_status.exit_code == 143 and not exit_status.oom_killed
        assert abs(exit_status.exited_at - time.time_ns()) < 10 * 10**9
        stopped = await shim.state("c1")
        assert (stopped.status, stopped.pid, stopped.exit_code) == ("stopped", 0, 143)
        await shim.kill("c1", 15)  # nothing left to signal: not an error

        entries = [entry[1:] for entry in log_lines(log)]
        assert ("stdout", "F", "hello") in entries and ("stderr", "F", "oops") in entries

        conmon = conmon_pid(shim, "c1")
        assert (await shim.delete("c1")) == exit_status
        assert await shim.delete("c1") is None
        with pytest.raises(NotFound):
            await shim.state("c1")
        assert not alive(conmon)
        assert not shim.runtime.files("c1").dir.exists() and not shim.runtime.files("c1").exit.exists()

    run(scenario())


def test_exit_code_of_a_container_that_ends_by_itself(shim: RuncShim, make_bundle: BundleFactory) -> None:
    async def scenario() -> None:
        await shim.create(CreateTask(id="three", sandbox_id="p", bundle=make_bundle("three", ["sh", "-c", "exit 3"])))
        await shim.start("three")
        assert (await asyncio.wait_for(shim.wait("three"), 10)).exit_code == 3
        assert (await shim.state("three")).exit_code == 3
        with pytest.raises(FailedPrecondition):
            await shim.stats("three")
        assert (await shim.delete("three")).exit_code == 3

    run(scenario())


def test_conmon_outlives_the_process_that_created_the_container(
        shim: RuncShim, make_bundle: BundleFactory, tmp_path: Path) -> None:
    """A separate Python process creates and starts a container, then exits. conmon lives on in its own
    session, not as that process's child, and this (new) shim instance controls the container."""
    bundle = make_bundle("orphan", ["sleep", "1000"])
    script = textwrap.dedent(f"""
        import asyncio, json, os
        from pathlib import Path
        from crirt_runc_shim import RuncShim
        from crirt.shim import CreateTask, ShimContext

        async def main():
            shim = RuncShim(ShimContext(handler="runc", root=Path({str(tmp_path / 'root')!r}),
                                        state=Path({str(tmp_path / 'state')!r})), {{}})
            await shim.create(CreateTask(id="orphan", sandbox_id="p", bundle=Path({str(bundle)!r})))
            await shim.start("orphan")
            print(json.dumps({{"pid": os.getpid(), "sid": os.getsid(0)}}))

        asyncio.run(main())
    """)
    creator = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    creator_info = json.loads(creator.stdout)

    async def scenario() -> None:
        assert (await shim.state("orphan")).status == "running"
        conmon = conmon_pid(shim, "orphan")
        fields = Path(f"/proc/{conmon}/stat").read_text().split(") ")[1].split()
        ppid, sid = int(fields[1]), int(fields[3])
        assert ppid != creator_info["pid"] and not alive(creator_info["pid"])
        assert sid == conmon != creator_info["sid"]  # conmon leads its own session
        await shim.kill("orphan", 9, all_processes=True)
        assert (await asyncio.wait_for(shim.wait("orphan"), 10)).exit_code == 137
        await shim.delete("orphan")

    run(scenario())


def test_failed_create_explains_and_leaves_nothing_behind(shim: RuncShim, make_bundle: BundleFactory,
                                                          tmp_path: Path) -> None:
    bundle = make_bundle("bad", ["true"])
    config = json.loads((bundle / "config.json").read_text())
    config["root"]["path"] = str(tmp_path / "no-such-rootfs")
    (bundle / "config.json").write_text(json.dumps(config))

    async def scenario() -> None:
        with pytest.raises(RuntimeFailure) as failure:
            await shim.create(CreateTask(id="bad", sandbox_id="p", bundle=bundle))
        assert "runc create bad" in str(failure.value) and "no-such-rootfs" in str(failure.value)
        with pytest.raises(NotFound):
            await shim.state("bad")
        files = shim.runtime.files("bad")
        assert not files.dir.exists() and not files.socket_link.exists()
        assert not [p for p in Path("/proc").glob("[0-9]*") if _cmdline_has(p, b"conmon", b"bad")]

    run(scenario())


def _cmdline_has(proc_dir: Path, *parts: bytes) -> bool:
    try:
        args = (proc_dir / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(args) and args[0].endswith(parts[0]) and all(p in args for p in parts[1:])


def test_terminal_resize_reaches_the_container(shim: RuncShim, make_bundle: BundleFactory, tmp_path: Path) -> None:
    log = tmp_path / "tty.log"
    bundle = make_bundle("tty", ["sh", "-c", "while true; do stty size; sleep 0.1; done"], terminal=True)

    async def scenario() -> None:
        await shim.create(CreateTask(id="tty", sandbox_id="p", bundle=bundle,
                                     stdio=Stdio(log_path=log, terminal=True)))
        await shim.start("tty")
        await shim.resize("tty", None, 132, 40)
        await wait_for_log(log, "40 132")
        assert all(stream == "stdout" for _, stream, _, _ in log_lines(log))  # a terminal has one stream
        attached = await shim.attach("tty", stdin=False, terminal=True)
        await attached.resize(100, 30)
        stream, _ = await attached.read_output()
        assert stream == 1  # a terminal has one stream
        await wait_for_log(log, "30 100")
        await attached.close()
        with pytest.raises(InvalidArgument):
            await shim.resize("tty", "some-exec", 80, 24)
        with pytest.raises(InvalidArgument):
            await shim.resize("tty", None, 5000, 24)
        await shim.delete("tty")

    run(scenario())


def test_update_and_oom_kill(shim: RuncShim, make_bundle: BundleFactory) -> None:
    """A new memory limit shows in the stats; a container that outgrows it is OOM-killed and reported so."""
    # The shell keeps a command substitution's output in its own memory: 200 MB of "y" lines.
    hog = ["sh", "-c", "while [ ! -e /tmp/go ]; do sleep 0.05; done; x=$(yes | head -c 200000000); echo survived"]
    bundle = make_bundle("hog", hog, resources={"memory": {"limit": 256 << 20}})
    limit = 32 << 20

    async def scenario() -> None:
        await shim.create(CreateTask(id="hog", sandbox_id="p", bundle=bundle))
        await shim.start("hog")
        await shim.update("hog", {"memory": {"limit": limit, "swap": limit}})
        assert 0 < (await shim.stats("hog"))["memory"]["available_bytes"] <= limit
        await shim.exec_sync("hog", ExecProcess(exec_id="go", process=process("sh", "-c", ": > /tmp/go")), 10)
        exit_status = await asyncio.wait_for(shim.wait("hog"), 20)
        assert (exit_status.exit_code, exit_status.oom_killed) == (137, True)
        await shim.delete("hog")

    run(scenario())


def test_missing_containers(shim: RuncShim, tmp_path: Path) -> None:
    async def scenario() -> None:
        assert await shim.delete("ghost") is None
        with pytest.raises(InvalidArgument, match=r"no config\.json"):
            await shim.create(CreateTask(id="ghost", sandbox_id="p", bundle=tmp_path / "no-bundle"))
        for call in (shim.state("ghost"), shim.kill("ghost", 15), shim.start("ghost"),
                     shim.wait("ghost"), shim.attach("ghost", stdin=False, terminal=False), shim.update("ghost", {}),
                     shim.exec_sync("ghost", ExecProcess(exec_id="x", process=process("true")), 1)):
            with pytest.raises(NotFound):
                await call
        for call in (shim.state("../escape"), shim.kill("--all", 9), shim.start("-h"), shim.delete("a/b")):
            with pytest.raises(InvalidArgument):
                await call

    run(scenario())


def test_exec_sync_answers_when_the_process_exits_though_a_background_child_holds_its_output(
        shim: RuncShim, make_bundle: BundleFactory) -> None:
    """kubernetes#92057: ``runc exec`` in the foreground waits for the end of the output, which a background child
    of the process holds; the answer must come at the process's exit, with everything it wrote before."""
    async def scenario() -> None:
        await shim.create(CreateTask(id="c", sandbox_id="p", bundle=make_bundle("c", ["sleep", "1000"])))
        await shim.start("c")
        began = time.monotonic()
        probe = await shim.exec_sync("c", ExecProcess(exec_id="probe", process=process(
            "sh", "-c", "echo ok; sleep 100 &")), 10)
        assert time.monotonic() - began < 2
        assert (probe.exit_code, probe.stdout, probe.stderr, probe.timed_out) == (0, b"ok\n", b"", False)
        assert len(container_pids(shim, "c")) == 2  # the background child goes on in the container

        bulk = await shim.exec_sync("c", ExecProcess(exec_id="bulk", process=process(
            "sh", "-c", "head -c 1000000 /dev/zero; echo bye >&2; (sleep 1; echo late) & exit 3")), 10)
        assert (bulk.exit_code, bulk.stdout, bulk.stderr) == (3, bytes(1_000_000), b"bye\n")
        await shim.delete("c")

    run(scenario())


def test_exec_of_a_missing_program_is_a_clear_error(shim: RuncShim, make_bundle: BundleFactory) -> None:
    async def scenario() -> None:
        await shim.create(CreateTask(id="c", sandbox_id="p", bundle=make_bundle("c", ["sleep", "1000"])))
        with pytest.raises(FailedPrecondition):  # created, not running yet
            await shim.exec_sync("c", ExecProcess(exec_id="x", process=process("true")), 5)
        await shim.start("c")
        with pytest.raises(RuntimeFailure, match="no-such-program"):
            await shim.exec_sync("c", ExecProcess(exec_id="x", process=process("no-such-program")), 5)
        await shim.delete("c")

    run(scenario())


def test_options_are_validated(tmp_path: Path) -> None:
    context = ShimContext(handler="runc", root=tmp_path / "r", state=tmp_path / "s")
    with pytest.raises(ValueError, match="'bogus', 'other'"):
        RuncShim(context, {"bogus": 1, "other": 2, "root": "/run/x"})
    for bad in ({"systemd_cgroup": "yes"}, {"extra_args": "--debug"}, {"root": "relative"},
                {"binary": "no-such-runc"}, {"conmon": ""}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            RuncShim(context, bad)
    shim = RuncShim(context, {"binary": "/usr/sbin/runc", "root": str(tmp_path / "rr"), "systemd_cgroup": True,
                              "extra_args": ["--debug"]})
    assert shim.runtime.global_args == [f"--root={tmp_path / 'rr'}", "--systemd-cgroup", "--debug"]


def test_features_from_runc_and_from_documents(shim: RuncShim) -> None:
    # Debian's runc 1.1.5 has the rro mount option and joins user namespaces; crirt id-maps the rootfs itself.
    assert run(shim.features()) == HandlerFeatures(recursive_read_only_mounts=True, user_namespaces=True)
    newer = {"mountOptions": ["rro"],
             "linux": {"namespaces": ["user"], "mountExtensions": {"idmap": {"enabled": True}}}}
    assert features_from(newer, (6, 1)) == HandlerFeatures(recursive_read_only_mounts=True, user_namespaces=True)
    assert features_from(newer, (5, 11)).recursive_read_only_mounts is False  # no mount_setattr(2)
    assert features_from(newer, (5, 18)).user_namespaces is False  # overlayfs takes no id-mapped layers
    assert features_from({"linux": {"namespaces": ["pid"]}}, (6, 1)).user_namespaces is False
    assert features_from(None, (6, 1)) == HandlerFeatures()


def test_entry_point_is_discovered(tmp_path: Path) -> None:
    registry = ShimRegistry.load([HandlerSpec("runc", "runc")], "runc", tmp_path / "root", tmp_path / "state")
    run(registry.probe_features())
    handler = registry.handlers["runc"]
    assert handler.problem is None and isinstance(handler.shim, RuncShim)
    assert handler.features.recursive_read_only_mounts
    assert handler.shim.runtime.state_dir == tmp_path / "state" / "shims" / "runc"
