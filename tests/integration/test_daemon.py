"""The daemon as an operator meets it: the socket, start-up refusals, config errors, and the CLI."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
from pathlib import Path

from support.daemon import CRIRT, Daemon, start_daemon, write_config

import crirt


def run_crirt(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CRIRT, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_socket_is_0660_and_owned_by_root(daemon: Daemon) -> None:
    info = daemon.socket.stat()
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o660
    assert (info.st_uid, info.st_gid) == (0, 0)


def test_refuses_to_start_on_a_live_socket(daemon: Daemon) -> None:
    second = run_crirt("serve", "--config", str(daemon.config))
    assert second.returncode == 1
    assert f"another server is already answering on {daemon.socket}" in second.stderr
    assert daemon.proc.poll() is None  # the first one is untouched


def test_replaces_a_stale_socket(tmp_path: Path) -> None:
    base = tmp_path / "d"
    base.mkdir()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(base / "crirt.sock"))
    stale.close()  # the file stays, nobody listens
    daemon = start_daemon(base)
    try:
        assert stat.S_ISSOCK(daemon.socket.stat().st_mode)
        assert "removing stale socket" in daemon.log_text()
    finally:
        assert daemon.stop() == 0


def test_invalid_config_prints_one_line_per_bad_key_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('log_level = "loud"\nno_such_option = 1\n[grpc]\nmax_recv_message_size = "big"\n')
    result = run_crirt("serve", "--config", str(bad))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3, result.stderr
    assert any(line.startswith("crirt: config error: log_level:") for line in lines)
    assert any("no_such_option: unknown option" in line for line in lines)
    assert any("grpc.max_recv_message_size:" in line for line in lines)
    assert run_crirt("serve", "--config", str(tmp_path / "absent.toml")).returncode == 2


def test_config_command_prints_the_effective_config_with_env_overrides(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.toml", tmp_path)
    result = run_crirt("config", "--config", str(config), env={"CRIRT_CGROUP_DRIVER": "systemd",
                                                               "CRIRT_GRPC__MAX_SEND_MESSAGE_SIZE": "2048"})
    assert result.returncode == 0, result.stderr
    effective = json.loads(result.stdout)
    assert effective["cgroup_driver"] == "systemd"
    assert effective["grpc"]["max_send_message_size"] == 2048
    assert effective["root"] == str(tmp_path / "root")
    assert effective["default_runtime"] == "runc"


def test_version_flag() -> None:
    result = run_crirt("--version")
    assert (result.returncode, result.stdout.strip()) == (0, f"crirt {crirt.__version__}")


def test_ctl_version_and_info(daemon: Daemon, tmp_path: Path) -> None:
    version = run_crirt("ctl", "--runtime-endpoint", daemon.endpoint, "version")
    assert version.returncode == 0, version.stderr
    assert "RuntimeName:  crirt" in version.stdout and "RuntimeApiVersion:  v1" in version.stdout
    crictl_yaml = tmp_path / "crictl.yaml"
    crictl_yaml.write_text(f"runtime-endpoint: {daemon.endpoint}\nimage-endpoint: {daemon.endpoint}\ntimeout: 5\n")
    info = run_crirt("ctl", "--config", str(crictl_yaml), "info")
    assert info.returncode == 0, info.stderr
    document = json.loads(info.stdout)
    types = [c["type"] for c in document["status"]["conditions"]]
    assert types[:2] == ["RuntimeReady", "NetworkReady"]
    assert document["config"]["root"] == str(daemon.root)


def test_ctl_reports_an_unreachable_endpoint(tmp_path: Path) -> None:
    result = run_crirt("ctl", "-r", f"unix://{tmp_path}/nothing.sock", "version")
    assert result.returncode == 1
    assert "cannot reach" in result.stderr
