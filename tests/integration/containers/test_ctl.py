"""``crirt ctl`` container verbs (create, start, ps, inspect, logs, exec, stats, statsp, stop, rm) with crictl's JSON
and YAML config files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from support.network import runc_shim_installed, wait_until

from crirt.ctl.containers import read_cri_log

from .conftest import ContainerEnv

pytestmark = pytest.mark.skipif(not runc_shim_installed(), reason="the runc shim plugin is not installed")


def ctl(env: ContainerEnv, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "crirt", "ctl", "-r", env.daemon.endpoint, *args],
                          capture_output=True, text=True, timeout=120)


def test_container_verbs(env: ContainerEnv, tmp_path: Path) -> None:
    pb = env.pb
    env.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=env.image)), timeout=60)
    sandbox = {"metadata": {"name": "ctl-pod", "namespace": "crirt-test", "uid": "ctl-pod-uid"},
               "log_directory": str(tmp_path / "logs"),
               "linux": {"security_context": {"namespace_options": {"pid": "CONTAINER"}}}}
    container = {"metadata": {"name": "web"}, "image": {"image": env.image},  # crictl's snake_case and camelCase
                 "command": ["/bin/sh", "-c"],
                 "args": ["trap 'exit 0' TERM; echo hello; echo oops >&2; /bin/busybox sleep 1000 & wait"],
                 "logPath": "web/0.log", "labels": {"tier": "front"}, "stop_signal": "SIGTERM"}
    (tmp_path / "pod.json").write_text(json.dumps(sandbox))
    (tmp_path / "pod.yaml").write_text(yaml.safe_dump(sandbox))
    (tmp_path / "container.yaml").write_text(yaml.safe_dump(container))

    run = ctl(env, "runp", str(tmp_path / "pod.json"))
    assert run.returncode == 0, run.stderr
    pod_id = run.stdout.strip()
    cid = ""
    try:
        created = ctl(env, "create", pod_id, str(tmp_path / "container.yaml"), str(tmp_path / "pod.yaml"))
        assert created.returncode == 0, created.stderr
        cid = created.stdout.strip()
        assert len(cid) == 64
        assert ctl(env, "ps", "-q").stdout.split() == []  # only running ones by default
        assert ctl(env, "ps", "-a", "-q", "--pod", pod_id).stdout.split() == [cid]
        assert ctl(env, "start", cid).returncode == 0

        table = ctl(env, "ps")
        assert table.returncode == 0, table.stderr
        header, row = table.stdout.splitlines()[:2]
        assert header.split() == ["CONTAINER", "IMAGE", "CREATED", "STATE", "NAME", "ATTEMPT", "POD", "ID"]
        assert row.startswith(cid[:13]) and "Running" in row and "web" in row and pod_id[:13] in row
        assert ctl(env, "ps", "-q", "--label", "tier=front", "--state", "running").stdout.split() == [cid]
        assert ctl(env, "ps", "-q", "--state", "exited").stdout.split() == []
        listed = json.loads(ctl(env, "ps", "-o", "json").stdout)["containers"]
        assert [c["id"] for c in listed] == [cid] and listed[0]["state"] == "CONTAINER_RUNNING"

        document = json.loads(ctl(env, "inspect", cid).stdout)
        assert document["status"]["id"] == cid and document["status"]["state"] == "CONTAINER_RUNNING"
        assert document["status"]["logPath"] == str(tmp_path / "logs" / "web" / "0.log") and document["info"]

        log = tmp_path / "logs" / "web" / "0.log"
        wait_until(lambda: log.exists() and "oops" in log.read_text(), 10)
        logs = ctl(env, "logs", cid)
        assert (logs.returncode, logs.stdout, logs.stderr) == (0, "hello\n", "oops\n")
        last = ctl(env, "logs", "--tail", "1", cid)
        assert (last.stdout + last.stderr) in ("hello\n", "oops\n")

        hi = ctl(env, "exec", "-s", cid, "echo", "hi")
        assert (hi.returncode, hi.stdout) == (0, "hi\n"), hi.stderr
        failing = ctl(env, "exec", "-s", "--timeout", "10", cid, "sh", "-c", "echo no >&2; exit 3")
        assert (failing.returncode, failing.stderr) == (3, "no\n")
        usage = ctl(env, "stats", "-s", "0.5")
        assert usage.returncode == 0, usage.stderr
        header, row = usage.stdout.splitlines()[:2]
        assert header.split() == ["CONTAINER", "NAME", "CPU", "%", "MEM", "DISK", "INODES"]
        fields = row.split()
        assert fields[:2] == [cid[:13], "web"] and float(fields[2]) >= 0 and fields[3].endswith("B")
        assert int(fields[-1]) > 0  # the writable layer has at least its root directory
        stats_json = json.loads(ctl(env, "stats", "-o", "json", "-s", "0").stdout)["stats"]
        assert [s["attributes"]["id"] for s in stats_json] == [cid]
        pod_usage = ctl(env, "statsp", "-s", "0.5")
        assert pod_usage.returncode == 0, pod_usage.stderr
        header, row = pod_usage.stdout.splitlines()[:2]
        assert header.split() == ["POD", "POD", "ID", "CPU", "%", "MEM"]
        assert row.split()[:2] == ["ctl-pod", pod_id[:13]] and float(row.split()[2]) >= 0

        streaming = ctl(env, "exec", cid, "echo", "hi")  # without -s: through the streaming server
        assert (streaming.returncode, streaming.stdout) == (0, "hi\n"), streaming.stderr

        refused = ctl(env, "rm", cid)
        assert refused.returncode == 1 and "--force" in refused.stderr
        assert ctl(env, "stop", "-t", "5", cid).returncode == 0
        assert json.loads(ctl(env, "inspect", cid).stdout)["status"]["state"] == "CONTAINER_EXITED"
        assert ctl(env, "ps", "-a", "-q", "--state", "exited").stdout.split() == [cid]
        assert len(ctl(env, "stats", "-s", "0").stdout.splitlines()) == 1  # header only: nothing runs
        assert cid[:13] in ctl(env, "stats", "-a", "-s", "0").stdout
        removed = ctl(env, "rm", cid)
        assert removed.returncode == 0, removed.stderr
        assert cid not in ctl(env, "ps", "-a", "-q").stdout.split()
        missing = ctl(env, "inspect", cid)
        assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr
        cid = ""
    finally:
        if cid:
            ctl(env, "rm", "-f", cid)
        ctl(env, "rmp", "-f", pod_id)


def test_read_cri_log_joins_partial_lines_and_tails(tmp_path: Path) -> None:
    log = tmp_path / "0.log"
    log.write_text("2026-01-01T00:00:00Z stdout P hel\n2026-01-01T00:00:00Z stderr F err one\n"
                   "2026-01-01T00:00:01Z stdout F lo world\n2026-01-01T00:00:02Z stdout F \n"
                   "2026-01-01T00:00:03Z stderr F last\n")
    assert read_cri_log(log) == [("stderr", "err one"), ("stdout", "hello world"), ("stdout", ""),
                                 ("stderr", "last")]
    assert read_cri_log(log, 2) == [("stdout", ""), ("stderr", "last")]
    assert read_cri_log(log, 0) == []
