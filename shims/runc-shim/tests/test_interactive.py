"""Interactive exec through the runc shim with the real runc: pipes and a pty, stdin and EOF, resize, exit
codes, and what closing a session leaves behind (nothing)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from crirt_runc_shim import RuncShim

from crirt.shim import CreateTask, ExecProcess, Stdio
from crirt.shim.contract import ProcessIO
from crirt.shim.interactive import ForegroundExec

from .conftest import container_pids

BundleFactory = Callable[..., Path]


def process(*args: str) -> dict[str, Any]:
    return {"args": list(args), "env": ["PATH=/bin", "TERM=xterm"], "cwd": "/", "user": {"uid": 0, "gid": 0}}


async def collect(target: ProcessIO, until: bytes | None = None) -> dict[int, bytes]:
    """Output by stream until it ends (or until ``until`` shows on stdout), within 10 s."""
    seen: dict[int, bytes] = {1: b"", 2: b""}
    async with asyncio.timeout(10):
        while True:
            stream, data = await target.read_output()
            if stream == 0:
                return seen
            seen[stream] += data
            if until is not None and until in seen[1]:
                return seen


async def running(shim: RuncShim, make_bundle: BundleFactory, name: str = "c1") -> None:
    await shim.create(CreateTask(id=name, sandbox_id="p", bundle=make_bundle(name, ["sleep", "1000"])))
    await shim.start(name)


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def children() -> list[int]:
    """Our own child processes, zombies included."""
    me = os.getpid()
    found = []
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            if int(Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[1]) == me:
                found.append(int(name))
        except (OSError, IndexError, ValueError):
            pass
    return found


def test_pipes_carry_stdin_and_output_and_eof_ends_the_input(shim: RuncShim, make_bundle: BundleFactory) -> None:
    async def scenario() -> None:
        await running(shim, make_bundle)
        fds, others = open_fds(), children()  # other tests' daemons may be children of this process too
        session = await shim.exec_interactive("c1", ExecProcess(
            exec_id="e1", process=process("sh", "-c", "cat; echo done >&2; exit 3"), stdio=Stdio(stdin=True)))
        assert isinstance(session, ForegroundExec)
        await session.write_stdin(b"hello\n")
        assert (await collect(session, until=b"hello\n"))[1] == b"hello\n"
        big = os.urandom(300_000)  # more than a pipe holds: the write waits for cat, cat for our reading
        writer = asyncio.ensure_future(session.write_stdin(big))
        echoed = b""
        async with asyncio.timeout(10):
            while len(echoed) < len(big):
                stream, data = await session.read_output()
                assert stream == 1
                echoed += data
        await writer
        assert echoed == big
        await session.close_stdin()
        rest = await collect(session)
        assert rest == {1: b"", 2: b"done\n"}
        assert await session.wait() == 3
        await session.close()
        await session.close()  # idempotent
        assert open_fds() == fds
        assert children() == others
        assert not (shim.runtime.files("c1").exec_dir("e1")).exists()
        await shim.delete("c1")

    asyncio.run(scenario())


@pytest.mark.parametrize(("script", "code"), [("exit 0", 0), ("exit 42", 42), ("kill -TERM $$", 143),
                                              ("kill -KILL $$", 137)])
def test_exit_codes_including_signals(shim: RuncShim, make_bundle: BundleFactory, script: str, code: int) -> None:
    async def scenario() -> None:
        await running(shim, make_bundle)
        for terminal in (False, True):
            session = await shim.exec_interactive("c1", ExecProcess(
                exec_id=f"e-{terminal}", process=process("sh", "-c", script), stdio=Stdio(terminal=terminal)))
            await collect(session)
            assert await session.wait() == code
            await session.close()
        await shim.delete("c1")

    asyncio.run(scenario())


async def terminal_size_becomes(session: ProcessIO, size: bytes) -> None:
    """Ask the shell for its terminal's size until it is ``size``: the runtime applies a size that comes with
    the start of the process only once it has set up the terminal, possibly after the shell's first command."""
    for _ in range(20):
        await session.write_stdin(b"stty size\n")
        if size in (await collect(session, until=b"\n/ # "))[1]:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the terminal never became {size!r}")


def test_terminal_echo_and_resize(shim: RuncShim, make_bundle: BundleFactory) -> None:
    async def scenario() -> None:
        await running(shim, make_bundle)
        session = await shim.exec_interactive("c1", ExecProcess(
            exec_id="t1", process=process("sh"), stdio=Stdio(stdin=True, terminal=True)))
        await session.resize(100, 33)
        await session.write_stdin(b"tty; echo x$((6*7))\n")
        out = await collect(session, until=b"x42")
        assert b"/dev/pts/" in out[1] and out[2] == b""
        await terminal_size_becomes(session, b"33 100")
        await session.resize(132, 40)
        await terminal_size_becomes(session, b"40 132")
        await session.close_stdin()  # a terminal's input stays open: the shell still answers
        await session.write_stdin(b"exit 5\n")
        await collect(session)
        assert await session.wait() == 5
        await session.close()
        await shim.delete("c1")

    asyncio.run(scenario())


def test_close_kills_the_process_and_its_children(shim: RuncShim, make_bundle: BundleFactory) -> None:
    async def scenario() -> None:
        await running(shim, make_bundle)
        before = set(container_pids(shim, "c1"))
        fds, others = open_fds(), children()
        for terminal in (False, True):
            session = await shim.exec_interactive("c1", ExecProcess(
                exec_id=f"k-{terminal}", process=process("sh", "-c", "sleep 1000 & echo started; cat"),
                stdio=Stdio(stdin=True, terminal=terminal)))
            await collect(session, until=b"started")
            assert len(set(container_pids(shim, "c1")) - before) == 2  # the shell and its sleep
            began = time.monotonic()
            await session.close()
            assert time.monotonic() - began < 2
            assert set(container_pids(shim, "c1")) == before
            assert await session.wait() == 137
        assert open_fds() == fds
        assert children() == others
        await shim.delete("c1")

    asyncio.run(scenario())


def test_a_daemon_started_by_an_exec_outlives_it(shim: RuncShim, make_bundle: BundleFactory) -> None:
    """The exec ends with its process once the child it leaves behind has let go of its stdio; closing the
    finished session leaves that child alone."""
    async def scenario() -> None:
        await running(shim, make_bundle)
        before = len(container_pids(shim, "c1"))
        session = await shim.exec_interactive("c1", ExecProcess(
            exec_id="b1", process=process("sh", "-c", "sleep 1000 >/dev/null 2>&1 & echo bye")))
        assert (await collect(session))[1] == b"bye\n"
        assert await session.wait() == 0
        await session.close()
        assert len(container_pids(shim, "c1")) == before + 1
        await shim.delete("c1")

    asyncio.run(scenario())


def test_a_program_that_cannot_start_says_why(shim: RuncShim, make_bundle: BundleFactory) -> None:
    async def scenario() -> None:
        await running(shim, make_bundle)
        session = await shim.exec_interactive("c1", ExecProcess(exec_id="m1", process=process("no-such-program")))
        out = await collect(session)
        assert await session.wait() == 255
        assert b'"no-such-program": executable file not found' in out[2] and b"level=error" not in out[2]
        await session.close()
        await shim.delete("c1")

    asyncio.run(scenario())
