"""The infra container's OCI spec (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from crirt.model.sandbox import PodSandboxConfig, PodSandboxMetadata
from crirt.oci.infra import clamp_oom_score_adj, infra_cgroups_path, infra_spec, own_oom_score_adj
from crirt.sandboxes.infra import cri_annotations


def spec(**changes):
    args = {"sandbox_id": "abc", "binary": Path("/usr/bin/catatonit"),
            "join": {"net": Path("/run/p/net"), "ipc": Path("/run/p/ipc"), "uts": Path("/run/p/uts")},
            "cgroups_path": "/kubepods/pod1/crirt-abc", "own_oom_score_adj": 0, **changes}
    return infra_spec(**args)


def test_catatonit_pause_mode_bind_mounted_read_only_into_an_empty_rootfs() -> None:
    s = spec()
    assert s["process"]["args"] == ["/catatonit", "-P"]
    assert s["root"] == {"path": "rootfs", "readonly": True}
    bind = [m for m in s["mounts"] if m["destination"] == "/catatonit"]
    assert bind == [{"destination": "/catatonit", "type": "bind", "source": "/usr/bin/catatonit",
                     "options": ["rbind", "ro", "nosuid", "nodev"]}]
    assert {m["destination"] for m in s["mounts"]} == {"/proc", "/dev", "/catatonit"}


def test_joins_pinned_namespaces_by_path_with_a_new_pid_namespace() -> None:
    namespaces = spec()["linux"]["namespaces"]
    assert {"type": "pid"} in namespaces and {"type": "mount"} in namespaces
    assert {"type": "network", "path": "/run/p/net"} in namespaces
    assert {"type": "ipc", "path": "/run/p/ipc"} in namespaces and {"type": "uts", "path": "/run/p/uts"} in namespaces
    host_network = spec(join={"ipc": Path("/run/p/ipc")})["linux"]["namespaces"]
    assert not [n for n in host_network if n["type"] in ("network", "uts")]  # the node's
    with pytest.raises(ValueError, match="pid"):
        spec(join={"pid": Path("/x")})


def test_no_capabilities_and_no_new_privileges() -> None:
    process = spec()["process"]
    assert all(v == [] for v in process["capabilities"].values()) and process["noNewPrivileges"]
    assert spec(uid=65535, gid=65535)["process"]["user"] == {"uid": 65535, "gid": 65535}


def test_oom_score_adj_is_clamped_to_crirts_own() -> None:
    assert spec()["process"]["oomScoreAdj"] == 0  # -998 asked, crirt runs at 0 without CAP_SYS_RESOURCE
    assert spec(own_oom_score_adj=-999)["process"]["oomScoreAdj"] == -998
    assert clamp_oom_score_adj(-2000, -1000) == -1000 and clamp_oom_score_adj(5000, 0) == 1000
    assert isinstance(own_oom_score_adj(), int)
    assert own_oom_score_adj(Path("/nonexistent")) == 0


def test_cgroups_path_per_driver() -> None:
    assert infra_cgroups_path("cgroupfs", "/kubepods/pod1", "abc") == "/kubepods/pod1/crirt-abc"
    assert infra_cgroups_path("cgroupfs", "/", "abc") == "/crirt-abc"
    assert infra_cgroups_path("systemd", "kubepods-pod1.slice", "abc") == "kubepods-pod1.slice:crirt:abc"
    assert spec(cgroups_path="x")["linux"]["cgroupsPath"] == "x"


def test_cri_sandbox_annotations() -> None:
    config = PodSandboxConfig(metadata=PodSandboxMetadata(name="n", namespace="ns", uid="u"), log_directory="/l")
    annotations = cri_annotations("abc", config)
    assert annotations["io.kubernetes.cri.container-type"] == "sandbox"
    assert annotations["io.kubernetes.cri.sandbox-id"] == "abc"
    assert spec(annotations=annotations)["annotations"] == annotations
