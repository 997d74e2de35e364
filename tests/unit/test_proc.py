"""crirt.proc: output, exit codes, stdin from a file descriptor, time limits and cancellation."""

from __future__ import annotations

import asyncio
import os
import sys
import time

import pytest

from crirt import proc


def test_output_and_exit_code() -> None:
    done = asyncio.run(proc.run(["sh", "-c", "echo out; echo err >&2; exit 3"]))
    assert (done.returncode, done.stdout, done.stderr) == (3, b"out\n", b"err\n")


def test_large_output_and_stdin_fd() -> None:
    fd = os.memfd_create("input")
    os.write(fd, b"x" * 300_000)
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        done = asyncio.run(proc.run(["cat"], stdin=fd))
    finally:
        os.close(fd)
    assert done.stdout == b"x" * 300_000


def test_environment_is_exactly_the_one_given() -> None:
    done = asyncio.run(proc.run(["/usr/bin/env"], env={"ONLY": "this"}))
    assert done.stdout == b"ONLY=this\n"


def test_time_limit_kills() -> None:
    started = time.monotonic()
    with pytest.raises(proc.ProcessTimeout, match=r"ran longer than 0\.2s"):
        asyncio.run(proc.run(["sleep", "10"], time_limit=0.2))
    assert time.monotonic() - started < 5


def test_missing_binary_is_oserror() -> None:
    with pytest.raises(OSError):
        asyncio.run(proc.run(["/nonexistent/binary"]))


@pytest.mark.parametrize("given_output", [False, True])  # True: stdio handed over, as gVisor's ``runsc start``
def test_cancellation_lets_the_process_finish_within_the_grace(tmp_path, given_output: bool) -> None:
    marker = tmp_path / "finished"
    out = os.open(tmp_path / "output", os.O_WRONLY | os.O_CREAT)

    async def cancel() -> None:
        task = asyncio.ensure_future(proc.run(["sh", "-c", f"sleep 0.4; echo done; touch {marker}"], grace=5,
                                              output=(out, out) if given_output else None))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        asyncio.run(cancel())
    finally:
        os.close(out)
    assert marker.exists()
    assert (tmp_path / "output").read_bytes() == (b"done\n" if given_output else b"")


def test_cancellation_kills_after_the_grace() -> None:
    async def cancel() -> float:
        task = asyncio.ensure_future(proc.run(["sleep", "10"], grace=0.2))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic() - started

    assert asyncio.run(cancel()) < 3


def test_works_on_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")
    assert uvloop.run(proc.run(["echo", "hi"])).stdout == b"hi\n"


def test_drain_answers_once_the_process_exits_with_what_was_read_while_a_child_holds_the_pipes() -> None:
    done = asyncio.run(proc.run(["sh", "-c", "echo ok; sleep 30 & echo $! >&2"], drain=0.2))
    child = int(done.stderr)
    try:
        assert (done.returncode, done.stdout) == (0, b"ok\n")
        assert os.path.exists(f"/proc/{child}")  # the background child still holds stdout: no EOF was awaited
    finally:
        os.kill(child, 9)


def test_passed_descriptors_reach_the_process_and_stay_the_callers() -> None:
    read_end, write_end = proc.nonblocking_pipe()
    try:
        done = asyncio.run(proc.run([sys.executable, "-c", f"import os; os.write({write_end}, b'report\\n')"],
                                    pass_fds=(write_end,)))
        assert done.returncode == 0 and os.read(read_end, 100) == b"report\n"
        os.fstat(write_end)  # still open: closing it is the caller's business
    finally:
        os.close(read_end)
        os.close(write_end)


def test_output_limit_caps_stdout_and_stderr_together_while_reading() -> None:
    script = "head -c 300000 /dev/zero; head -c 300000 /dev/zero >&2; echo done >&2"
    done = asyncio.run(proc.run(["sh", "-c", script], output_limit=400_000))
    assert (len(done.stdout), len(done.stderr), done.returncode) == (300_000, 100_000, 0)


def test_time_limit_calls_stop_and_a_cancelled_caller_stops_too(tmp_path) -> None:
    stopped: list[str] = []

    async def scenario() -> None:
        pid_file = tmp_path / "pid"

        async def stop() -> None:
            stopped.append("stop")
            os.kill(int(pid_file.read_text()), 9)

        with pytest.raises(proc.ProcessTimeout):
            await proc.run(["sh", "-c", f"echo $$ > {pid_file}; exec sleep 30"], time_limit=0.5, stop=stop)
        task = asyncio.ensure_future(proc.run(["sh", "-c", f"echo $$ > {pid_file}; exec sleep 30"], stop=stop))
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert stopped == ["stop", "stop"]


def test_a_killed_process_whose_child_holds_the_pipes_still_ends_at_its_time_limit() -> None:
    """A plugin killed at its time limit may leave a child holding its stdout (a CNI plugin's helper): its output
    is read for ``KILLED_DRAIN`` more seconds at most, not until that child exits."""
    began = time.monotonic()
    with pytest.raises(proc.ProcessTimeout):
        asyncio.run(proc.run(["sh", "-c", "sleep 30 & echo started; sleep 30"], time_limit=0.3))
    assert time.monotonic() - began < 0.3 + proc.KILLED_DRAIN + 1.0
