"""A daemon whose config has no ``[runtimes]`` table serves the installed plugins' default handlers whose
runtime is on this node: ``runc`` and, with Debian's runsc installed, ``runsc``, which runs a pod in gVisor.
``crirt config`` and crictl show the same handlers; a missing runtime (Kata) is left out with a log line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType

import pytest
from support.daemon import CRIRT, Daemon, start_daemon
from support.pods import force_delete_all, kill_processes_mentioning, pod_config, remove_pod, run_pod
from support.shared import shared_dir

RUNSC_FLAGS = ("--network=host", "--platform=ptrace")
CRICTL = shared_dir() / "tools" / "cri-tools" / "crictl"

_plugins = {ep.name for ep in entry_points(group="crirt.shims")}
MISSING = [tool for tool in ("runc", "runsc", "conmon", "catatonit") if not shutil.which(tool)]
MISSING += [f"the {name!r} shim plugin" for name in ("runc", "gvisor") if name not in _plugins]
MISSING += [] if os.geteuid() == 0 else ["root"]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"needs {', '.join(MISSING)}")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    base = tmp_path_factory.mktemp("defaults") / "d"
    daemon = start_daemon(base)  # support.daemon writes no [runtimes] table
    try:
        yield daemon
    finally:
        daemon.stop()
        force_delete_all("runsc", base / "state" / "shims" / "runsc" / "runsc-root", *RUNSC_FLAGS)
        kill_processes_mentioning(f"{base}/")


def test_status_lists_runc_and_runsc_ready(daemon: Daemon, pb: ModuleType) -> None:
    assert "[runtimes" not in daemon.config.read_text()
    with daemon.channel() as channel:
        reply = pb.grpc.RuntimeServiceStub(channel).Status(pb.StatusRequest(verbose=True), timeout=10)
    names = [h.name for h in reply.runtime_handlers]
    assert names[0] == "" and {"runc", "runsc"} <= set(names[1:]), names
    status = json.loads(reply.info["handlerStatus"])
    assert (status["runc"]["shim"], status["runc"]["ready"]) == ("runc", True)
    assert (status["runsc"]["shim"], status["runsc"]["ready"]) == ("gvisor", True)
    conditions = {c.type: c for c in reply.status.conditions}
    assert conditions["RuntimeReady"].status
    assert "ShimPluginsReady" not in conditions  # only there with a problem: a handler left out is none
    log = daemon.log_text()
    assert "serving the default runtime handlers 'runc', 'runsc'" in log, log
    if "kata" in _plugins and not shutil.which("containerd-shim-kata-v2"):
        assert "kata" not in status
        assert ("runtime handler 'kata' (shim plugin 'kata') is not served: 'containerd-shim-kata-v2' not found "
                "on PATH") in log


def test_a_pod_runs_on_the_default_runsc_handler(daemon: Daemon, pb: ModuleType, tmp_path: Path) -> None:
    with daemon.channel() as channel:
        runtime = pb.grpc.RuntimeServiceStub(channel)
        sandbox_id = run_pod(runtime, pb, pod_config(pb, "gvisor-by-default", tmp_path / "logs", network="NODE"),
                             "runsc")
        try:
            status = runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id),
                                              timeout=10).status
            assert (status.state, status.runtime_handler) == (pb.SANDBOX_READY, "runsc")
            root = daemon.root.parent / "state" / "shims" / "runsc" / "runsc-root"
            assert root.is_dir() and any(root.iterdir())  # runsc, not runc, keeps the pod's sandbox
        finally:
            remove_pod(runtime, pb, sandbox_id)
        assert not runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10).items


@pytest.mark.skipif(not CRICTL.exists(), reason=f"needs crictl at {CRICTL}")
def test_crictl_info_shows_the_runsc_handler(daemon: Daemon, tmp_path: Path) -> None:
    empty = tmp_path / "crictl.yaml"
    empty.write_text("")
    done = subprocess.run([str(CRICTL), "--config", str(empty), "-r", daemon.endpoint, "info"],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    handlers = json.loads(done.stdout)["runtimeHandlers"]
    names = [h.get("name", "") for h in handlers]  # Go's encoding/json leaves the default's empty name out
    assert names[0] == "" and {"runc", "runsc"} <= set(names[1:]), handlers


def test_crirt_config_shows_the_handlers_it_would_serve(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('log_level = "debug"\n')
    done = subprocess.run([*CRIRT, "config", "--config", str(config)], capture_output=True, text=True,
                          timeout=60, check=True)
    runtimes = json.loads(done.stdout)["runtimes"]
    assert runtimes["runc"] == {"shim": "runc", "options": {}}
    assert runtimes["runsc"] == {"shim": "gvisor", "options": {}}
    config.write_text('[runtimes.fast]\nshim = "runc"\n')  # a table is served as written: no runsc
    done = subprocess.run([*CRIRT, "config", "--config", str(config)], capture_output=True, text=True,
                          timeout=60, check=True)
    assert sorted(json.loads(done.stdout)["runtimes"]) == ["fast", "runc"]
    assert done.stderr == ""
