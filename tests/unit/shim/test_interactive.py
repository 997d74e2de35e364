"""The pure parts of crirt.shim.interactive (the runs with real runc are in shims/runc-shim/tests)."""

from __future__ import annotations

import os
from pathlib import Path

from crirt.shim.interactive import read_pid_file, session_of


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
