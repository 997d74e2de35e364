"""The registry of CDI devices: directories merged by priority, conflicts, requested names, reloads on change,
and the resolved edits (device nodes completed from the host)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from crirt.cdi.registry import CdiRegistry, catalog, requested_devices
from crirt.cdi.schema import parse_spec
from crirt.config import CdiConfig
from crirt.errors import InvalidArgument
from crirt.model.container import ContainerConfig

NULL = os.stat("/dev/null")


def spec(kind: str, *names: str, env: str = "", edits: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"cdiVersion": "0.6.0", "kind": kind, "containerEdits": edits or {},
            "devices": [{"name": n, "containerEdits": {"env": [f"{n.upper()}={env or n}"]}} for n in names]}


def write(directory: Path, name: str, document: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(json.dumps(document))
    return directory / name


def asking(*names: str, annotations: dict[str, str] | None = None) -> ContainerConfig:
    return ContainerConfig.model_validate({"CDI_devices": [{"name": n} for n in names],
                                           "annotations": annotations or {}})


def registry(*dirs: Path, enabled: bool = True) -> CdiRegistry:
    return CdiRegistry(CdiConfig(enabled=enabled, spec_dirs=list(dirs)))


def test_a_later_directory_wins_and_a_conflict_within_one_is_kept_apart() -> None:
    first = [("/etc/cdi/a.json", parse_spec("a.json", json.dumps(spec("v.com/c", "x", "y", env="etc"))))]
    second = [("/run/cdi/b.json", parse_spec("b.json", json.dumps(spec("v.com/c", "x", "z", env="run")))),
              ("/run/cdi/c.json", parse_spec("c.json", json.dumps(spec("v.com/c", "z"))))]
    found = catalog([first, second], ["/etc/cdi/bad.json: kind: unknown field"])
    assert {n: e.file for n, e in found.devices.items()} == {"v.com/c=x": "/run/cdi/b.json",
                                                             "v.com/c=y": "/etc/cdi/a.json"}
    assert found.conflicts == {"v.com/c=z": ("/run/cdi/b.json", "/run/cdi/c.json")}
    assert found.errors == ("/etc/cdi/bad.json: kind: unknown field",)


def test_requested_devices_come_from_the_field_and_the_annotations_once_each() -> None:
    config = asking("v.com/c=a", annotations={"cdi.k8s.io/plugin_b": "v.com/c=b, v.com/c=a", "other": "x=y"})
    assert requested_devices(config) == {"v.com/c=a": "config.CDI_devices[0].name",
                                         "v.com/c=b": "config.annotations['cdi.k8s.io/plugin_b']"}
    with pytest.raises(InvalidArgument, match=r"config.CDI_devices\[0\].name: 'gpu0' is not a fully qualified"):
        requested_devices(asking("gpu0"))
    with pytest.raises(InvalidArgument, match=r"config.annotations\['cdi.k8s.io/x'\]: 'v.com/c' is not"):
        requested_devices(asking(annotations={"cdi.k8s.io/x": "v.com/c"}))


def test_edits_come_spec_first_then_each_device_with_nodes_completed_from_the_host(tmp_path: Path) -> None:
    document = spec("v.com/c", "a", "b", edits={"env": ["SPEC=1"]})
    document["devices"][0]["containerEdits"]["deviceNodes"] = [{"path": "/dev/vendor0", "hostPath": "/dev/null"}]
    write(tmp_path / "etc", "v.json", document)
    edits = registry(tmp_path / "etc").edits_for(asking("v.com/c=b", "v.com/c=a"))
    assert [e.env for e in edits] == [["SPEC=1"], ["B=b"], ["A=a"]]
    node = edits[2].device_nodes[0]
    assert (node.type, node.major, node.minor, node.file_mode) == (
        "c", os.major(NULL.st_rdev), os.minor(NULL.st_rdev), NULL.st_mode & 0o7777)


def test_nothing_is_read_for_a_container_without_cdi_devices(tmp_path: Path) -> None:
    write(tmp_path, "v.json", spec("v.com/c", "a"))
    cdi = registry(tmp_path)
    assert cdi.edits_for(asking()) == ()
    assert cdi.status()["devices"] == 0


def test_the_specs_are_read_again_when_a_file_changes(tmp_path: Path) -> None:
    path = write(tmp_path, "v.json", spec("v.com/c", "a"))
    cdi = registry(tmp_path)
    assert cdi.edits_for(asking("v.com/c=a"))[1].env == ["A=a"]
    path.write_text(json.dumps(spec("v.com/c", "a", "b", env="new")))
    os.utime(path, ns=(1, 1))  # a different mtime even within the file system's time granularity
    assert cdi.edits_for(asking("v.com/c=a"))[1].env == ["A=new"]
    assert cdi.status() == {"enabled": True, "specDirs": [str(tmp_path)], "devices": 2, "conflicts": [],
                            "errors": []}
    path.unlink()
    with pytest.raises(InvalidArgument, match=r"'v\.com/c=a' is unresolvable"):
        cdi.edits_for(asking("v.com/c=a"))


def test_unresolvable_devices_name_the_device_and_the_refused_files(tmp_path: Path) -> None:
    write(tmp_path / "a", "one.json", spec("v.com/c", "a"))
    write(tmp_path / "a", "two.yaml", spec("v.com/c", "a"))
    write(tmp_path / "a", "bad.json", {**spec("v.com/c", "z"), "colour": "red"})
    cdi = registry(tmp_path / "a", tmp_path / "missing")
    with pytest.raises(InvalidArgument) as caught:
        cdi.edits_for(asking("v.com/c=z"))
    assert str(caught.value) == (
        f"config.CDI_devices[0].name: CDI device 'v.com/c=z' is unresolvable: no spec file in {tmp_path}/a, "
        f"{tmp_path}/missing defines it; refused spec files: {tmp_path}/a/bad.json: colour: unknown field")
    with pytest.raises(InvalidArgument, match=f"'v.com/c=a' is defined by more than one spec file of the same "
                                              f"directory: {tmp_path}/a/one.json, {tmp_path}/a/two.yaml"):
        cdi.edits_for(asking("v.com/c=a"))
    assert cdi.status()["conflicts"] == ["v.com/c=a"]
    assert cdi.status()["errors"] == [f"{tmp_path}/a/bad.json: colour: unknown field"]


def test_device_nodes_and_edits_crirt_cannot_make_are_refused(tmp_path: Path) -> None:
    document = spec("v.com/c", "gone", "file", "net")
    document["cdiVersion"] = "1.1.0"
    document["devices"][0]["containerEdits"]["deviceNodes"] = [{"path": f"{tmp_path}/nothing"}]
    document["devices"][1]["containerEdits"]["deviceNodes"] = [{"path": "/dev/x", "hostPath": f"{tmp_path}/v.json"}]
    document["devices"][2]["containerEdits"]["netDevices"] = [{"hostInterfaceName": "eth9", "name": "net0"}]
    write(tmp_path, "v.json", document)
    cdi = registry(tmp_path)
    with pytest.raises(InvalidArgument, match=rf"CDI device v.com/c=gone \(config.CDI_devices\[0\].name\): "
                                              rf"{tmp_path}/v.json: devices\[0\].containerEdits.deviceNodes\[0\] "
                                              rf"{tmp_path}/nothing: No such file or directory"):
        cdi.edits_for(asking("v.com/c=gone"))
    with pytest.raises(InvalidArgument, match=rf"deviceNodes\[0\] {tmp_path}/v.json: not a device node"):
        cdi.edits_for(asking("v.com/c=file"))
    with pytest.raises(InvalidArgument, match=r"devices\[2\].containerEdits.netDevices: crirt does not support"):
        cdi.edits_for(asking("v.com/c=net"))


def test_a_node_with_a_wrong_type_is_refused_and_a_complete_one_is_not_looked_up(tmp_path: Path) -> None:
    document = spec("v.com/c", "wrong", "given")
    document["devices"][0]["containerEdits"]["deviceNodes"] = [{"path": "/dev/null", "type": "b"}]
    document["devices"][1]["containerEdits"]["deviceNodes"] = [{"path": "/dev/absent", "type": "c", "major": 7,
                                                                 "minor": 9}]
    write(tmp_path, "v.json", document)
    cdi = registry(tmp_path)
    with pytest.raises(InvalidArgument, match="/dev/null: the spec says type 'b', the host node is 'c'"):
        cdi.edits_for(asking("v.com/c=wrong"))
    node = cdi.edits_for(asking("v.com/c=given"))[1].device_nodes[0]
    assert (node.type, node.major, node.minor, node.file_mode) == ("c", 7, 9, None)


def test_cdi_devices_on_a_node_with_cdi_disabled_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"config.CDI_devices\[0\].name: CDI devices are requested but \[cdi\] "
                                              "enabled is false"):
        registry(tmp_path, enabled=False).edits_for(asking("v.com/c=a"))
