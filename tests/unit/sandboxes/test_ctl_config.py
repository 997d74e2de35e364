"""crictl sandbox and container files: JSON or YAML, snake_case, camelCase, enum names and numbers, clear errors."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from crirt._gen.runtime.v1 import PodSandbox, PodSandboxMetadata
from crirt.ctl.app import ago
from crirt.ctl.sandboxes import ConfigFileError, load_config, load_sandbox_config, select_pods
from crirt.model.container import ContainerConfig
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
    ([], "must be an object of CRI fields .* not list"),
])
def test_bad_files(tmp_path: Path, data: object, words: str) -> None:
    with pytest.raises(ConfigFileError, match=words):
        load_sandbox_config(write(tmp_path, data))
    (tmp_path / "x.json").write_text('{\n  "metadata": {"name": "n"},\n  "hostname": "h",,\n}')
    with pytest.raises(ConfigFileError, match=r"x\.json:3: not valid JSON: .*column"):
        load_sandbox_config(tmp_path / "x.json")
    with pytest.raises(ConfigFileError, match="No such file"):
        load_sandbox_config(tmp_path / "missing.json")


POD_YAML = """\
# crictl's pod-config.yaml, as its docs show it
metadata:
  name: nginx-sandbox
  namespace: default
  attempt: 1
  uid: hdishd83djaidwnduwk28bcsb
log_directory: /tmp
portMappings:
  - {protocol: UDP, container_port: 53, hostPort: 5353}
linux:
  security_context:
    namespace_options: {network: NODE}
"""


@pytest.mark.parametrize("name", ["pod.yaml", "pod.yml", "pod-config"])
def test_yaml_files_by_suffix_or_content(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text(POD_YAML)
    config = load_sandbox_config(path)
    assert config.metadata and (config.metadata.name, config.metadata.attempt) == ("nginx-sandbox", 1)
    assert config.port_mappings[0].protocol == Protocol.UDP and config.port_mappings[0].host_port == 5353
    assert config.linux.security_context.namespace_options.network == NamespaceMode.NODE  # type: ignore[union-attr]


def test_container_yaml_and_json_without_a_suffix(tmp_path: Path) -> None:
    (tmp_path / "ctr.yml").write_text("metadata: {name: web}\nimage: {image: busybox}\ncommand: [sleep, '60']\n"
                                      "envs:\n  - {key: A, value: b}\n")
    config = load_config(tmp_path / "ctr.yml", ContainerConfig)
    assert config.image and config.image.image == "busybox" and config.command == ["sleep", "60"]
    assert [(e.key, e.value) for e in config.envs] == [("A", b"b")]
    (tmp_path / "ctr").write_text(json.dumps({"metadata": {"name": "web"}, "image": {"image": "busybox"}}))
    assert load_config(tmp_path / "ctr", ContainerConfig).metadata.name == "web"  # type: ignore[union-attr]


@pytest.mark.parametrize(("text", "words"), [
    ("metadata:\n  name: n\n log_directory: /tmp\n", r"pod\.yaml:3: not valid YAML: .*"),
    ("metadata: {name: n\nhostname: h\n", r"pod\.yaml:2: not valid YAML: expected .,. or .}."),
    ("metadata:\n  name: n\n  nmae: x\n", r"pod\.yaml: metadata\.nmae: unknown field"),
    ("- just\n- a list\n", "must be an object of CRI fields .* not list"),
    ("", "not NoneType"),
    ("metadata: !!python/object:os.system {}\n", r"pod\.yaml:1: not valid YAML: could not determine a constructor"),
])
def test_bad_yaml_names_the_file_and_line(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "pod.yaml"
    path.write_text(text)
    with pytest.raises(ConfigFileError, match=words):
        load_sandbox_config(path)


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
