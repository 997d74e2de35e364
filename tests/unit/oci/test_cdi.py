"""CDI edits made to an OCI spec: env, device nodes and their cgroup rules, mounts, hooks, additional groups."""

from __future__ import annotations

from typing import Any

from crirt.cdi.schema import ContainerEdits
from crirt.oci.cdi import apply_cdi_edits

DENY_ALL = {"allow": False, "access": "rwm"}


def base(uid: int = 0, gid: int = 0) -> dict[str, Any]:
    return {
        "process": {"user": {"uid": uid, "gid": gid, "additionalGids": [10]}, "env": ["PATH=/bin", "MODE=image"]},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                   {"destination": "/data/cache", "source": "/var/cache", "options": ["rbind"]},
                   {"destination": "/etc/hosts", "source": "/pod/hosts", "options": ["rbind"]}],
        "linux": {"devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}],
                  "resources": {"devices": [DENY_ALL]}},
    }


def edits(**fields: Any) -> ContainerEdits:
    return ContainerEdits.model_validate(fields)


def test_no_edits_leave_the_spec_as_it_was() -> None:
    assert apply_cdi_edits(base(), ()) == base()


def test_env_replaces_a_variable_of_the_same_name_and_adds_the_others_in_order() -> None:
    spec = apply_cdi_edits(base(), [edits(env=["MODE=spec", "A=1"]), edits(env=["A=2", "B=x=y"])])
    assert spec["process"]["env"] == ["PATH=/bin", "MODE=spec", "A=2", "B=x=y"]


def test_device_nodes_get_an_entry_an_allow_rule_and_the_users_ownership() -> None:
    original = base(uid=1000, gid=2000)
    spec = apply_cdi_edits(original, [edits(deviceNodes=[
        {"path": "/dev/vendor0", "type": "c", "major": 1, "minor": 3, "fileMode": 0o660, "permissions": "rw"},
        {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "uid": 0, "gid": 5},
        {"path": "/dev/vendor-ctl", "type": "b", "major": 8, "minor": 1, "permissions": "none"},
        {"path": "/dev/pipe", "type": "p"},
    ])])
    assert spec["linux"]["devices"] == [
        {"path": "/dev/vendor0", "type": "c", "major": 1, "minor": 3, "fileMode": 0o660, "uid": 1000, "gid": 2000},
        {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "uid": 0, "gid": 5},
        {"path": "/dev/vendor-ctl", "type": "b", "major": 8, "minor": 1, "uid": 1000, "gid": 2000},
        {"path": "/dev/pipe", "type": "p", "major": 0, "minor": 0, "uid": 1000, "gid": 2000},
    ]
    assert spec["linux"]["resources"]["devices"] == [
        DENY_ALL, {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rw"},
        {"allow": True, "type": "c", "major": 10, "minor": 229, "access": "rwm"}]
    assert original == base(uid=1000, gid=2000)  # the input is not changed


def test_a_root_container_leaves_node_ownership_to_the_runtime() -> None:
    spec = apply_cdi_edits(base(), [edits(deviceNodes=[{"path": "/dev/x", "type": "c", "major": 1, "minor": 3}])])
    assert spec["linux"]["devices"][-1] == {"path": "/dev/x", "type": "c", "major": 1, "minor": 3}


def test_mounts_replace_the_same_destination_and_are_ordered_parents_first() -> None:
    spec = apply_cdi_edits(base(), [edits(mounts=[
        {"hostPath": "/opt/vendor/lib", "containerPath": "/usr/lib/vendor/lib", "options": ["ro", "rbind"]},
        {"hostPath": "/opt/vendor/hosts", "containerPath": "/etc/hosts", "options": ["bind"], "type": "bind"},
        {"hostPath": "tmpfs", "containerPath": "/data", "type": "tmpfs"},
    ])])
    assert [(m["destination"], m["source"]) for m in spec["mounts"]] == [
        ("/proc", "proc"), ("/data", "tmpfs"), ("/data/cache", "/var/cache"), ("/etc/hosts", "/opt/vendor/hosts"),
        ("/usr/lib/vendor/lib", "/opt/vendor/lib")]
    assert spec["mounts"][3] == {"destination": "/etc/hosts", "source": "/opt/vendor/hosts", "options": ["bind"],
                                 "type": "bind"}
    assert spec["mounts"][4] == {"destination": "/usr/lib/vendor/lib", "source": "/opt/vendor/lib",
                                 "options": ["ro", "rbind"]}


def test_hooks_are_appended_under_their_name() -> None:
    spec = apply_cdi_edits(base(), [
        edits(hooks=[{"hookName": "createContainer", "path": "/usr/bin/vendor-hook", "args": ["vendor-hook", "a"],
                      "env": ["X=1"], "timeout": 5}]),
        edits(hooks=[{"hookName": "createContainer", "path": "/usr/bin/other"},
                     {"hookName": "poststop", "path": "/usr/bin/cleanup"}])])
    assert spec["hooks"] == {
        "createContainer": [{"path": "/usr/bin/vendor-hook", "args": ["vendor-hook", "a"], "env": ["X=1"],
                             "timeout": 5}, {"path": "/usr/bin/other"}],
        "poststop": [{"path": "/usr/bin/cleanup"}],
    }


def test_additional_gids_are_added_once_and_zero_is_ignored() -> None:
    spec = apply_cdi_edits(base(), [edits(additionalGids=[44, 0, 10]), edits(additionalGids=[44, 45, 45])])
    assert spec["process"]["user"]["additionalGids"] == [10, 44, 45]
