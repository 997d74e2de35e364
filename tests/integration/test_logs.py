"""Structured logs from a real daemon: with ``log_format = "json"`` every line it writes is a JSON object, and
the lines of one RunPodSandbox call share its request id and name the pod; text logs carry the same tags."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from support.daemon import Daemon, start_daemon
from support.pods import force_delete_all, kill_processes_mentioning, pod_config, remove_pod, run_pod

MISSING = [tool for tool in ("runc", "conmon", "catatonit") if not shutil.which(tool)]
MISSING += [] if os.geteuid() == 0 else ["root"]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"needs {', '.join(MISSING)}")


def run_and_remove_a_pod(daemon: Daemon, pb: ModuleType, logs: Path) -> str:
    """Run a host-network pod on runc and remove it; its id."""
    with daemon.channel() as channel:
        runtime = pb.grpc.RuntimeServiceStub(channel)
        sandbox_id = run_pod(runtime, pb, pod_config(pb, "logged", logs, network="NODE"), "runc")
        remove_pod(runtime, pb, sandbox_id)
    return sandbox_id


@pytest.fixture
def start(tmp_path: Path) -> Iterator[list[Daemon]]:
    """Daemons a test starts under ``tmp_path``; stopped, and whatever they left killed, afterwards."""
    daemons: list[Daemon] = []
    yield daemons
    for daemon in daemons:
        daemon.stop()
    force_delete_all("runc", tmp_path / "d" / "state" / "shims" / "runc" / "runc-root")
    kill_processes_mentioning(f"{tmp_path}/")


def test_json_logs_are_one_object_a_line_tagged_with_the_call(start: list[Daemon], pb: ModuleType,
                                                                tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path / "d", 'log_format = "json"\n[runtimes.runc]\nshim = "runc"\n')
    start.append(daemon)
    sandbox_id = run_and_remove_a_pod(daemon, pb, tmp_path / "logs")
    assert daemon.stop() == 0
    lines = daemon.log_text().splitlines()
    entries = [json.loads(line) for line in lines]  # every line the daemon wrote, stdout and stderr
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= entry.keys(), entry
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"]), entry
    run = [e for e in entries if e.get("rpc") == "RunPodSandbox"]
    assert run and len({e["request_id"] for e in run}) == 1, run
    done = [e for e in run if e["message"].startswith("RunPodSandbox done in")]
    assert len(done) == 1 and done[0]["pod"] == sandbox_id, run
    removes = [e for e in entries if e.get("rpc") == "RemovePodSandbox"]
    assert removes and all(e["pod"] == sandbox_id for e in removes), removes
    assert {e["request_id"] for e in removes}.isdisjoint({run[0]["request_id"]})
    assert entries[-1]["message"] == "crirt stopped" and "request_id" not in entries[-1]


def test_text_logs_show_the_request_id_and_the_pod(start: list[Daemon], pb: ModuleType, tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path / "d", '[runtimes.runc]\nshim = "runc"\n')
    start.append(daemon)
    sandbox_id = run_and_remove_a_pod(daemon, pb, tmp_path / "logs")
    log = daemon.log_text()
    assert re.search(rf" DEBUG crirt\.bus \[req=[0-9a-f]{{8}} RunPodSandbox pod={sandbox_id[:12]}\]: "
                     r"RunPodSandbox done in ", log), log
    assert re.search(r" INFO crirt\.server: crirt \S+ serving CRI on ", log), log  # no call, no tags
