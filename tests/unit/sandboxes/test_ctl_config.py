"""crictl sandbox files: snake_case, camelCase, enum names and numbers, clear errors."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from crirt._gen.runtime.v1 import PodSandbox, PodSandboxMetadata
from crirt.ctl.app import ago
from crirt.ctl.sandboxes import ConfigFileError, load_sandbox_config, select_pods
from crirt.model.enums import NamespaceMode, Protocol


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "sandbox.json"
    path.write_text(json.dumps(data))
    return path


def test_crictl_snake_case_file(tmp_path: Path) -> None:
    config = load_sandbox_config(write(tmp_path, {
        "metadata": {"name": "n", "namespace": "default", "attempt": 1, "uid": "u"},
        "log_directory": "/tmp", "port_mappings": [{"protocol": 1, "container_port": 53, "host_port": 5353}],
        "dns_config": {"servers": ["8.8.8.8"]}, "linux": {"security_context": {"namespace_options": {"network": 2}},
                                                          "sysctls": {"net.ipv4.ip_forward": "1"}}}))
    assert config.metadata and config.metadata.attempt == 1 and config.log_directory == "/tmp"
    assert config.port_mappings[0].protocol == Protocol.UDP and config.port_mappings[0].host_port == 5353
    assert config.linux and config.linux.security_context and config.linux.security_context.namespace_options
    assert config.linux.security_context.namespace_options.network == NamespaceMode.NODE


def test_camel_case_keys_and_enum_names(tmp_path: Path) -> None:
    config = load_sandbox_config(write(tmp_path, {
        "metadata": {"name": "n"}, "logDirectory": "/l", "portMappings": [{"protocol": "sctp", "containerPort": 1}],
        "linux": {"securityContext": {"namespaceOptions": {"pid": "CONTAINER", "IPC": "node"}}}}))
    assert config.log_directory == "/l" and config.port_mappings[0].protocol == Protocol.SCTP
    options = config.linux.security_context.namespace_options  # type: ignore[union-attr]
    assert options and (options.pid, options.ipc) == (NamespaceMode.CONTAINER, NamespaceMode.NODE)


@pytest.mark.parametrize(("data", "words"), [
    ({"metadata": {"nmae": "x"}}, "metadata.nmae: unknown field"),
    ({"linux": {"security_context": {"namespace_options": {"pid": "SHARED"}}}}, "'SHARED' is not one of POD"),
    ({"metadata": {"attempt": -1}}, "metadata.attempt"),
    ([], "must be a JSON object"),
])
def test_bad_files(tmp_path: Path, data: object, words: str) -> None:
    with pytest.raises(ConfigFileError, match=words):
        load_sandbox_config(write(tmp_path, data))
    (tmp_path / "x.json").write_text("{")
    with pytest.raises(ConfigFileError, match="not valid JSON"):
        load_sandbox_config(tmp_path / "x.json")
    with pytest.raises(ConfigFileError, match="No such file"):
        load_sandbox_config(tmp_path / "missing.json")


def test_pods_selection_and_age() -> None:
    pods = [PodSandbox(id=str(i), metadata=PodSandboxMetadata(name=f"web-{i}", namespace="ns" if i % 2 else "kube"),
                       created_at=i) for i in range(4)]
    assert [p.id for p in select_pods(pods, "web", "", False, 0)] == ["3", "2", "1", "0"]
    assert [p.id for p in select_pods(pods, "", "^ns$", False, 0)] == ["3", "1"]
    assert [p.id for p in select_pods(pods, "", "", True, 0)] == ["3"]
    assert [p.id for p in select_pods(pods, "", "", False, 2)] == ["3", "2"]
    now = time.time()
    assert ago(int((now - 5) * 1e9), now) == "5 seconds ago"
    assert ago(int((now - 70) * 1e9), now) == "About a minute ago"
    assert ago(int((now - 7200) * 1e9), now) == "2 hours ago"
