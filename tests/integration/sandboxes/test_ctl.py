"""``crirt ctl runp/pods/inspectp/stopp/rmp`` with crictl's sandbox JSON against a real daemon."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from support.network import PodEnv


def ctl(pods: PodEnv, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "crirt", "ctl", "-r", pods.daemon.endpoint, *args],
                          capture_output=True, text=True, timeout=120)


CRICTL_SANDBOX = {  # crictl's documented example, plus what kubelet-like pods carry
    "metadata": {"name": "nginx-sandbox", "namespace": "default", "attempt": 1, "uid": "hdishd83djaidwnduwk28bcsb"},
    "log_directory": "LOGDIR",
    "hostname": "nginx",
    "port_mappings": [{"protocol": 0, "container_port": 80, "host_port": 0}],
    "labels": {"app": "nginx"},
    "linux": {"security_context": {"namespace_options": {"pid": 1}}, "sysctls": {}},
}


def test_runp_pods_inspectp_stopp_rmp(pods: PodEnv, tmp_path: Path) -> None:
    before = pods.snapshot()
    config = json.loads(json.dumps(CRICTL_SANDBOX).replace("LOGDIR", str(tmp_path / "logs")))
    path = tmp_path / "sandbox.json"
    path.write_text(json.dumps(config))
    run = ctl(pods, "runp", str(path))
    assert run.returncode == 0, run.stderr
    sandbox_id = run.stdout.strip()
    assert len(sandbox_id) == 64 and (tmp_path / "logs").is_dir()

    table = ctl(pods, "pods")
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()[:2]
    assert header.split()[:3] == ["POD", "ID", "CREATED"]
    assert row.startswith(sandbox_id[:13]) and "Ready" in row and "nginx-sandbox" in row and "default" in row
    assert ctl(pods, "pods", "-q").stdout.split() == [sandbox_id]
    assert ctl(pods, "pods", "-q", "--name", "^nginx").stdout.split() == [sandbox_id]
    assert ctl(pods, "pods", "-q", "--name", "other").stdout.split() == []
    assert ctl(pods, "pods", "-q", "--label", "app=nginx", "--state", "ready").stdout.split() == [sandbox_id]
    listed = json.loads(ctl(pods, "pods", "-o", "json").stdout)["items"]
    assert listed[0]["metadata"]["name"] == "nginx-sandbox" and listed[0]["state"] == "SANDBOX_READY"

    inspect = ctl(pods, "inspectp", sandbox_id[:12])
    assert inspect.returncode == 0, inspect.stderr
    document = json.loads(inspect.stdout)
    assert document["status"]["id"] == sandbox_id and document["status"]["state"] == "SANDBOX_READY"
    assert document["status"]["network"]["ip"] and document["status"]["metadata"]["attempt"] == 1
    assert document["info"]["config"]["hostname"] == "nginx" and document["info"]["namespaces"]["net"]

    refused = ctl(pods, "rmp", sandbox_id)
    assert refused.returncode == 1 and "--force" in refused.stderr
    assert ctl(pods, "stopp", sandbox_id).stdout.strip() == f"Stopped sandbox {sandbox_id}"
    assert "NotReady" in ctl(pods, "pods").stdout
    assert ctl(pods, "rmp", sandbox_id).stdout.strip() == f"Removed sandbox {sandbox_id}"
    assert ctl(pods, "pods", "-q").stdout.split() == []
    assert pods.snapshot() == before


def test_runp_camel_case_enum_names_and_force_all(pods: PodEnv, tmp_path: Path) -> None:
    path = tmp_path / "host.json"
    path.write_text(json.dumps({"metadata": {"name": "h", "namespace": "default", "uid": "h1"},
                                "linux": {"securityContext": {"namespaceOptions": {
                                    "network": "NODE", "pid": "CONTAINER", "ipc": "NODE"}}}}))
    run = ctl(pods, "runp", str(path))
    assert run.returncode == 0, run.stderr
    assert json.loads(ctl(pods, "inspectp", run.stdout.strip()).stdout)["status"]["linux"]["namespaces"][
        "options"]["network"] == "NODE"
    removed = ctl(pods, "rmp", "-f", "-a")
    assert removed.returncode == 0 and run.stdout.strip() in removed.stdout


def test_runp_reports_bad_files_and_server_errors(pods: PodEnv, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"metadata": {"name": "x", "namespace": "d", "uid": "u"}, "hostnam": "typo"}))
    result = ctl(pods, "runp", str(bad))
    assert result.returncode == 1 and "hostnam: unknown field" in result.stderr
    bad.write_text(json.dumps({"metadata": {"name": "x", "namespace": "d", "uid": "u"},
                               "linux": {"security_context": {"namespace_options": {"network": "SIDEWAYS"}}}}))
    result = ctl(pods, "runp", str(bad))
    assert result.returncode == 1 and "'SIDEWAYS' is not one of" in result.stderr
    bad.write_text(json.dumps({"metadata": {"name": "x", "namespace": "d", "uid": "u"},
                               "linux": {"sysctls": {"kernel.panic": "1"}}}))
    result = ctl(pods, "runp", str(bad))
    assert result.returncode == 1 and "INVALID_ARGUMENT" in result.stderr and "kernel.panic" in result.stderr
