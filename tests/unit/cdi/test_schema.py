"""CDI spec files: what a valid one holds, and how an invalid one is refused (file and field named)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from crirt.cdi.schema import SpecError, parse_spec

GOOD: dict[str, Any] = {
    "cdiVersion": "0.7.0",
    "kind": "vendor.com/gpu",
    "annotations": {"driver": "1.2"},
    "devices": [{
        "name": "gpu0",
        "containerEdits": {
            "deviceNodes": [{"path": "/dev/vendor0", "hostPath": "/dev/null", "permissions": "rw", "uid": 1000}],
            "env": ["GPU=0"],
        },
    }],
    "containerEdits": {
        "env": ["VENDOR_DRIVER=1"],
        "mounts": [{"hostPath": "/opt/vendor/lib", "containerPath": "/usr/lib/vendor", "options": ["ro", "bind"],
                    "type": "bind"}],
        "hooks": [{"hookName": "createContainer", "path": "/usr/bin/vendor-hook", "args": ["vendor-hook", "x"],
                   "env": ["A=1"], "timeout": 5}],
        "additionalGids": [44],
    },
}


def refused(path: str, document: Any) -> str:
    with pytest.raises(SpecError) as caught:
        parse_spec(path, document if isinstance(document, str) else json.dumps(document))
    return str(caught.value)


def test_a_json_spec_with_every_edit_is_read() -> None:
    spec = parse_spec("/etc/cdi/vendor.json", json.dumps(GOOD))
    node = spec.devices[0].container_edits.device_nodes[0]
    assert (spec.kind, spec.devices[0].name, node.path, node.host_path, node.uid) == (
        "vendor.com/gpu", "gpu0", "/dev/vendor0", "/dev/null", 1000)
    assert spec.container_edits.hooks[0].timeout == 5
    assert spec.container_edits.mounts[0].options == ["ro", "bind"]
    assert spec.container_edits.additional_gids == [44]


def test_a_yaml_spec_is_read_the_same() -> None:
    text = """
cdiVersion: "1.1.0"
kind: vendor.com/gpu
devices:
  - name: gpu0
    containerEdits:
      deviceNodes:
        - path: /dev/vendor0
          type: c
          major: 1
          minor: 3
          fileMode: 0666
      netDevices:
        - {hostInterfaceName: eth9, name: net0}
"""
    node = parse_spec("/var/run/cdi/vendor.yaml", text).devices[0].container_edits.device_nodes[0]
    assert (node.type, node.major, node.minor, node.file_mode) == ("c", 1, 3, 0o666)


@pytest.mark.parametrize(("change", "message"), [
    ({"colour": "red"}, "colour: unknown field"),
    ({"devices": [{"name": "a", "containerEdits": {"deviceNode": []}}]},
     "devices[0].containerEdits.deviceNode: unknown field"),
    ({"kind": "gpu"}, "kind: 'gpu' is not vendor/class"),
    ({"kind": "vendor.com/gpu/x"}, "kind: 'vendor.com/gpu/x' is not vendor/class"),
    ({"devices": [{"name": "gpu 0"}]}, "devices[0].name: 'gpu 0' is not a device name"),
    ({"devices": []}, "devices: List should have at least 1 item"),
    ({"devices": [{"name": "a"}, {"name": "a"}]}, "devices[1].name: device 'a' is defined twice"),
    ({"cdiVersion": "2.0.0"}, "cdiVersion: '2.0.0' is not a CDI version crirt knows (0.1.0 to 1.1.0)"),
    ({"containerEdits": {"env": ["NOVALUE"]}}, "containerEdits.env[0]: 'NOVALUE' is not NAME=VALUE"),
    ({"containerEdits": {"deviceNodes": [{"path": "/dev/x", "major": "1"}]}},
     "containerEdits.deviceNodes[0].major: Input should be a valid integer"),
    ({"containerEdits": {"deviceNodes": [{"path": "/dev/x", "permissions": "rx"}]}},
     "containerEdits.deviceNodes[0].permissions: 'rx' is not a combination of r, w and m"),
    ({"containerEdits": {"deviceNodes": [{"path": "dev/x"}]}},
     "containerEdits.deviceNodes[0].path: 'dev/x' is not an absolute path"),
    ({"containerEdits": {"hooks": [{"hookName": "prestop", "path": "/bin/true"}]}},
     "containerEdits.hooks[0].hookName: 'prestop' is not an OCI hook"),
    ({"containerEdits": {"mounts": [{"hostPath": "/a"}]}}, "containerEdits.mounts[0].containerPath: Field required"),
])
def test_invalid_specs_are_refused_naming_file_and_field(change: dict[str, Any], message: str) -> None:
    assert f"/etc/cdi/bad.json: {message}" in refused("/etc/cdi/bad.json", {**GOOD, **change})


@pytest.mark.parametrize(("version", "change", "field", "needed"), [
    ("0.3.0", {"containerEdits": {"mounts": [{"hostPath": "/a", "containerPath": "/b", "type": "bind"}]}},
     "containerEdits.mounts[0].type", "0.4.0"),
    ("0.4.0", {"devices": [{"name": "a", "containerEdits": {"deviceNodes": [{"path": "/x", "hostPath": "/y"}]}}]},
     "devices[0].containerEdits.deviceNodes[0].hostPath", "0.5.0"),
    ("0.4.0", {"devices": [{"name": "0"}]}, "devices[0].name", "0.5.0"),
    ("0.5.0", {"kind": "vendor.com/gpu.v2"}, "kind", "0.6.0"),
    ("0.5.0", {"annotations": {"a": "b"}}, "annotations", "0.6.0"),
    ("0.6.0", {"containerEdits": {"additionalGids": [44]}}, "containerEdits.additionalGids", "0.7.0"),
    ("1.0.0", {"devices": [{"name": "a", "containerEdits": {"netDevices": [
        {"hostInterfaceName": "eth9", "name": "net0"}]}}]}, "devices[0].containerEdits.netDevices", "1.1.0"),
])
def test_a_field_newer_than_the_cdi_version_is_refused(version: str, change: dict[str, Any], field: str,
                                                        needed: str) -> None:
    minimal = {"kind": "vendor.com/gpu", "devices": [{"name": "gpu0"}]}
    message = refused("/etc/cdi/old.json", {**minimal, "cdiVersion": version, **change})
    assert message == f"/etc/cdi/old.json: {field}: needs cdiVersion {needed} or later (the spec says {version})"


def test_unparsable_files_are_refused_naming_the_format() -> None:
    assert refused("/etc/cdi/a.json", "{").startswith("/etc/cdi/a.json: not valid JSON")
    assert refused("/etc/cdi/a.yaml", "devices: [").startswith("/etc/cdi/a.yaml: not valid YAML")
    assert refused("/etc/cdi/a.yaml", "- a\n") == (
        "/etc/cdi/a.yaml: a CDI spec is an object with cdiVersion, kind and devices")
