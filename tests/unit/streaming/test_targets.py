"""The pure parts of crirt.streaming.targets (the real exec, attach and dial runs are in
tests/integration/streaming/test_targets.py)."""

from __future__ import annotations

from crirt.streaming.targets import exec_process

SPEC = {"process": {"args": ["/pause"], "env": ["PATH=/bin"], "cwd": "/app", "user": {"uid": 5, "gid": 6},
                    "terminal": False}}


def test_an_exec_runs_the_command_as_the_container_does() -> None:
    assert exec_process(SPEC, ["ls", "-l"], tty=False) == {
        "args": ["ls", "-l"], "env": ["PATH=/bin"], "cwd": "/app", "user": {"uid": 5, "gid": 6}, "terminal": False}
    assert SPEC["process"]["args"] == ["/pause"]  # the bundle's spec is left alone


def test_a_terminal_exec_gets_a_term_unless_the_container_sets_one() -> None:
    assert exec_process(SPEC, ["sh"], tty=True)["env"] == ["PATH=/bin", "TERM=xterm"]
    assert exec_process(SPEC, ["sh"], tty=True)["terminal"] is True
    own = {"process": {**SPEC["process"], "env": ["TERM=vt100"]}}
    assert exec_process(own, ["sh"], tty=True)["env"] == ["TERM=vt100"]
    assert exec_process({"process": {"args": ["x"]}}, ["sh"], tty=False)["env"] == []
