"""The gvisor shim's options, feature report and the pure helpers of its driver."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from crirt_gvisor_shim import GvisorShim, platforms_listed, runsc_flags
from crirt_gvisor_shim.runtime import (
    join_sandbox_pid_namespace,
    network_namespace,
    parse_stats_event,
    refuse_bidirectional,
    runsc_capabilities,
    sandbox_of,
    uts_namespace,
)

from crirt.errors import InvalidArgument
from crirt.shim import ShimContext

needs_runsc = pytest.mark.skipif(not (shutil.which("runsc") and shutil.which("conmon")),
                                 reason="needs runsc and conmon (Debian: runsc conmon)")


def make(tmp_path: Path, **options: Any) -> GvisorShim:
    return GvisorShim(ShimContext(handler="runsc", root=tmp_path / "root", state=tmp_path / "state"), options)


def test_default_flags_use_ptrace_and_the_host_network() -> None:
    assert runsc_flags({}) == ["--platform=ptrace", "--network=host"]


def test_every_option_becomes_a_global_flag() -> None:
    flags = runsc_flags({"platform": "kvm", "network": "none", "overlay": "root:memory", "net_raw": True,
                         "oci_seccomp": True, "debug_log_dir": "/var/log/runsc", "extra_args": ["--cgroupfs"]})
    assert flags == ["--platform=kvm", "--network=none", "--overlay2=root:memory", "--net-raw", "--oci-seccomp",
                     "--debug", "--debug-log=/var/log/runsc/", "--cgroupfs"]
    assert runsc_flags({"net_raw": False, "oci_seccomp": False}) == runsc_flags({})


@pytest.mark.parametrize(("options", "named"), [
    ({"platform": "qemu"}, "'platform'"),
    ({"network": "bridge"}, "'network'"),
    ({"overlay": "everything"}, "'overlay'"),
    ({"debug_log_dir": "relative/dir"}, "'debug_log_dir'"),
    ({"extra_args": ["--a b"]}, "'extra_args'"),
    ({"extra_args": "--net-raw"}, "'extra_args'"),
    ({"net_raw": "yes"}, "'net_raw' must be true or false"),
    ({"oci_seccomp": 1}, "'oci_seccomp' must be true or false"),
])
def test_bad_options_are_refused_naming_the_option(options: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        runsc_flags(options)


@needs_runsc
def test_unknown_options_and_missing_binaries_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown option.*'bogus'.*the gvisor shim knows 'binary'"):
        make(tmp_path, bogus=1)
    with pytest.raises(ValueError, match=r"'binary'.*not an executable"):
        make(tmp_path, binary="/no/such/runsc")
    with pytest.raises(ValueError, match="'root' must be an absolute path"):
        make(tmp_path, root="relative")


@needs_runsc
def test_the_shim_carries_its_flags_on_every_runsc_call(tmp_path: Path) -> None:
    shim = make(tmp_path, network="none")
    assert shim.runtime.global_args == [f"--root={tmp_path / 'state' / 'runsc-root'}", "--platform=ptrace",
                                        "--network=none"]
    assert GvisorShim.needs_infra_container is True


@needs_runsc
def test_features_report_what_runsc_lacks_and_check_the_platform(tmp_path: Path) -> None:
    features = asyncio.run(make(tmp_path).features())
    assert (features.recursive_read_only_mounts, features.user_namespaces) == (False, False)
    listed = platforms_listed(subprocess.run(["runsc", "help", "platforms"], capture_output=True, text=True).stdout)
    assert "ptrace" in listed
    missing = [name for name in ("systrap", "kvm") if name not in listed]
    if not missing:
        pytest.skip("this runsc offers every platform the shim knows: none to refuse")
    with pytest.raises(ValueError, match=f"does not offer '{missing[0]}'"):
        asyncio.run(make(tmp_path, platform=missing[0]).features())


def test_platforms_are_read_from_runsc_help() -> None:
    assert platforms_listed("kvm\nptrace\n") == ["kvm", "ptrace"]
    assert platforms_listed("Usage: something else\n") == []


def test_container_type_annotations() -> None:
    assert sandbox_of({}) is None
    assert sandbox_of({"io.kubernetes.cri.container-type": "sandbox", "io.kubernetes.cri.sandbox-id": "x"}) is None
    assert sandbox_of({"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": "sb"}) == "sb"
    with pytest.raises(InvalidArgument, match="sandbox-id"):
        sandbox_of({"io.kubernetes.cri.container-type": "container"})
    with pytest.raises(InvalidArgument, match="'pod'"):
        sandbox_of({"io.kubernetes.cri.container-type": "pod"})


def test_uts_namespace_of_a_spec() -> None:
    assert uts_namespace({"linux": {"namespaces": [{"type": "uts", "path": "/p/uts"}]}}) == (True, "/p/uts")
    assert uts_namespace({"linux": {"namespaces": [{"type": "uts"}]}}) == (True, None)
    assert uts_namespace({"linux": {"namespaces": [{"type": "pid"}]}}) == (False, None)


def test_stats_event_becomes_the_contract_stats() -> None:
    event = {"type": "stats", "id": "c", "data": {
        "cpu": {"usage": {"total": 3798127232}},
        "memory": {"usage": {"limit": 0, "usage": 18210816, "failcnt": 0}, "swap": {"limit": 0, "failcnt": 0}},
        "pids": {"current": 5}}}
    stats = parse_stats_event(json.dumps(event))
    assert stats["cpu"] == {"usage_core_nano_seconds": 3798127232}
    assert stats["memory"] == {"usage_bytes": 18210816, "working_set_bytes": 18210816}
    assert stats["process"] == {"process_count": 5} and stats["timestamp"] > 0
    idle_root = parse_stats_event(json.dumps({"type": "stats", "id": "s", "data": {"cpu": {"usage": {}}}}))
    assert set(idle_root) == {"timestamp"}


def test_capabilities_runsc_does_not_know_are_dropped_from_every_set() -> None:
    spec = {"process": {"capabilities": {"bounding": ["CAP_CHOWN", "CAP_PERFMON", "CAP_BPF"],
                                         "effective": ["CAP_SYS_ADMIN", "CAP_CHECKPOINT_RESTORE"]}}}
    assert runsc_capabilities(spec) is True
    assert spec["process"]["capabilities"] == {"bounding": ["CAP_CHOWN"], "effective": ["CAP_SYS_ADMIN"]}
    assert runsc_capabilities(spec) is False
    assert runsc_capabilities({"process": {}}) is False


def test_bidirectional_propagation_is_refused_naming_the_mount() -> None:
    refuse_bidirectional({"mounts": [{"destination": "/a", "options": ["rbind", "rslave"]}],
                          "linux": {"rootfsPropagation": "rslave"}})
    spec = {"mounts": [{"destination": "/data", "options": ["rbind", "rshared", "rw"]}],
            "linux": {"rootfsPropagation": "rshared"}}
    with pytest.raises(InvalidArgument, match=r"config.mounts: '/data' asks for PROPAGATION_BIDIRECTIONAL"):
        refuse_bidirectional(spec)


def test_network_namespace_of_a_spec() -> None:
    assert network_namespace({"linux": {"namespaces": [{"type": "network", "path": "/run/netns/p"}]}}) == "/run/netns/p"
    assert network_namespace({"linux": {"namespaces": [{"type": "network"}]}}) is None
    assert network_namespace({"linux": {"namespaces": [{"type": "pid"}]}}) is None


def test_a_sub_container_joining_the_pods_pid_namespace_runs_in_the_sandboxs() -> None:
    spec = {"linux": {"namespaces": [{"type": "pid", "path": "/proc/7/ns/pid"}, {"type": "ipc", "path": "/p"}]}}
    assert join_sandbox_pid_namespace(spec) is True
    assert spec["linux"]["namespaces"] == [{"type": "ipc", "path": "/p"}]
    own = {"linux": {"namespaces": [{"type": "pid"}]}}
    assert join_sandbox_pid_namespace(own) is False and own["linux"]["namespaces"] == [{"type": "pid"}]
