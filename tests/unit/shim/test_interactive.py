"""The pure parts of crirt.shim.interactive (the runs with real runc are in shims/runc-shim/tests)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from crirt.shim import interactive
from crirt.shim.interactive import ForegroundExec, parent_of, read_pid_file, session_of

KILL_WAIT_LIMIT = 0.4
"""Less than the KILL_WAIT the tests set: a close that took longer had to kill the runtime itself."""


def test_session_id_is_read_after_the_command_name_whatever_it_contains() -> None:
    assert session_of("42 (a) b) c) S 1 40 41 0 -1") == 41
    assert session_of(Path("/proc/self/stat").read_text()) == os.getsid(0)


def test_pid_files(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    assert read_pid_file(pid_file) is None
    pid_file.write_text("")  # the runtime has created it but not written it yet
    assert read_pid_file(pid_file) is None
    pid_file.write_text("1234")
    assert read_pid_file(pid_file) == 1234


def test_parent_is_read_after_the_command_name_whatever_it_contains() -> None:
    assert parent_of("42 (a) b) c) S 7 40 41 0 -1") == 7
    assert parent_of(Path("/proc/self/stat").read_text()) == os.getppid()


async def _close_with_pid_file(tmp_path: Path, runtime_script: str, pid_of: Callable[[], int] | None) -> int:
    """Run ``sh -c runtime_script`` as a foreground exec's runtime and close the session once its pid file is
    written (by the script, or with ``pid_of()``); returns the session's exit code."""
    pid_file = tmp_path / "pid"
    session = await ForegroundExec.start(["sh", "-c", runtime_script], terminal=False, stdin=False,
                                         pid_file=pid_file, cleanup=lambda: None)
    if pid_of is not None:
        pid_file.write_text(str(pid_of()))
    async with asyncio.timeout(10):
        while session.pid is None:  # noqa: ASYNC110 - the runtime writes the file; nothing to wait on but time
            await asyncio.sleep(0.01)
    await session.close()
    return await session.wait()


def test_close_kills_the_runtimes_process_but_never_one_that_got_its_pid(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(interactive, "KILL_WAIT", 0.5)
    unrelated = subprocess.Popen(["sleep", "1000"], start_new_session=True)  # a session leader, like an exec
    try:
        # The pid file names a process the runtime did not start (the exec's own pid was reused): only the
        # runtime, which outlives KILL_WAIT, is killed.
        assert asyncio.run(_close_with_pid_file(tmp_path, "sleep 1000", lambda: unrelated.pid)) == 137
        assert unrelated.poll() is None
    finally:
        unrelated.kill()
        unrelated.wait()
    # The runtime's own child, in a session of its own, is killed, and the runtime exits with it.
    script = f"setsid sleep 1000 & echo $! > {tmp_path / 'pid'}; wait"
    began = time.monotonic()
    assert asyncio.run(_close_with_pid_file(tmp_path, script, None)) == 0
    assert time.monotonic() - began < KILL_WAIT_LIMIT
