"""Live reload of a real daemon: the test rewrites its config file, sends SIGHUP and checks each class of change
through the CRI and the log: log level and format, a registry mirror, the CNI conf dir and a new handler apply
at once; removing a handler a pod uses, changing ``root`` and an invalid file are refused, and the running
configuration stays whole."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest
from support.daemon import NO_REGISTRIES, Daemon, start_daemon, write_config
from support.pods import busybox_registry, force_delete_all, kill_processes_mentioning, pod_config, remove_pod, run_pod

MISSING = [tool for tool in ("runc", "conmon", "catatonit", "docker-registry") if not shutil.which(tool)]
MISSING += [] if os.geteuid() == 0 else ["root"]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"needs {', '.join(MISSING)}")

RUNC = '[runtimes.runc]\nshim = "runc"\n'
OUTCOME = re.compile(r"configuration reloaded: [^\n\"]*|configuration reload refused[^\n\"]*")


@dataclass
class Env:
    """One daemon for the module, its base directory, the CRI stubs and the test registry's busybox image."""

    daemon: Daemon
    base: Path
    runtime: Any
    images: Any
    pb: ModuleType
    image: str

    def write(self, top: str = "", tables: str = "", registries: str = NO_REGISTRIES, **replace: str) -> None:
        """Write the daemon's config file: the one it started with, plus top-level keys and tables, with text
        replaced (``log_level='"info"'`` replaces the value of ``log_level =``)."""
        write_config(self.daemon.config, self.base, top + RUNC + tables, registries=registries)
        text = self.daemon.config.read_text()
        for key, value in replace.items():
            text, count = re.subn(rf"^{key} = .*$", f"{key} = {value}", text, count=1, flags=re.M)
            assert count == 1, f"no {key} in {text}"
        self.daemon.config.write_text(text)

    def reload(self) -> tuple[str, str]:
        """Send SIGHUP; the outcome line of the reload and everything logged since the signal."""
        start = len(self.daemon.log_text())
        os.kill(self.daemon.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            since = self.daemon.log_text()[start:]
            found = OUTCOME.search(since)
            if found:
                return found.group(0), since
            assert self.daemon.proc.poll() is None, f"crirt exited on SIGHUP:\n{since}"
            time.sleep(0.05)
        raise AssertionError(f"no reload outcome within 30s:\n{self.daemon.log_text()[start:]}")

    def status(self) -> Any:
        return self.runtime.Status(self.pb.StatusRequest(verbose=True), timeout=10)

    def handlers(self) -> list[str]:
        return [h.name for h in self.status().runtime_handlers]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, pb: ModuleType) -> Iterator[Env]:
    base = tmp_path_factory.mktemp("reload")
    with busybox_registry(base) as image:
        daemon = start_daemon(base / "d", RUNC)
        try:
            with daemon.channel() as channel:
                yield Env(daemon, base / "d", pb.grpc.RuntimeServiceStub(channel), pb.grpc.ImageServiceStub(channel),
                          pb, image)
        finally:
            daemon.stop()
            force_delete_all("runc", base / "d" / "state" / "shims" / "runc" / "runc-root")
            kill_processes_mentioning(f"{base}/")


@pytest.fixture(autouse=True)
def back_to_the_start(env: Env) -> Iterator[None]:
    """After each test, the config the daemon started with, reloaded."""
    yield
    env.write()
    outcome, _ = env.reload()
    assert outcome.startswith("configuration reloaded"), outcome


def test_log_level_and_format_apply_at_once(env: Env) -> None:
    env.runtime.Version(env.pb.VersionRequest(), timeout=10)
    assert "Version done in" in env.daemon.log_text()  # debug, as the daemon started
    env.write('log_format = "json"\n', log_level='"info"')
    outcome, _ = env.reload()
    assert outcome == "configuration reloaded: changed log_level, log_format"
    start = len(env.daemon.log_text())
    env.runtime.Version(env.pb.VersionRequest(), timeout=10)
    with pytest.raises(grpc.RpcError):  # logged at info, with the pod id asked for
        env.runtime.PodSandboxStatus(env.pb.PodSandboxStatusRequest(pod_sandbox_id="f" * 64), timeout=10)
    entries = [json.loads(line) for line in env.daemon.log_text()[start:].splitlines()]
    assert not [e for e in entries if e["level"] == "debug"], entries
    failed = [e for e in entries if e.get("rpc") == "PodSandboxStatus"]
    assert failed and failed[0]["pod"] == "f" * 64 and failed[0]["level"] == "info", entries


def test_a_new_registry_mirror_serves_the_next_pull(env: Env) -> None:
    mirrored = "mirror.invalid/" + env.image.split("/", 1)[1]
    request = env.pb.PullImageRequest(image=env.pb.ImageSpec(image=mirrored))
    with pytest.raises(grpc.RpcError) as refused:
        env.images.PullImage(request, timeout=60)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "blocked" in refused.value.details()
    registry = env.image.split("/", 1)[0]
    env.write(registries=NO_REGISTRIES + f'[registries."mirror.invalid"]\nmirrors = ["http://{registry}"]\n'
                                         "fallback_to_origin = false\n")
    outcome, _ = env.reload()
    assert outcome == "configuration reloaded: changed registries"
    try:
        assert env.images.PullImage(request, timeout=60).image_ref
    finally:
        env.images.RemoveImage(env.pb.RemoveImageRequest(image=env.pb.ImageSpec(image=mirrored)), timeout=60)


def test_a_new_cni_conf_dir_applies_at_once(env: Env) -> None:
    def network_ready() -> Any:
        return next(c for c in env.status().status.conditions if c.type == "NetworkReady")

    assert not network_ready().status and f"{env.base}/cni" in network_ready().message
    other = env.base / "cni-other"
    other.mkdir(exist_ok=True)
    (other / "10-reload.conflist").write_text(json.dumps(
        {"cniVersion": "1.0.0", "name": "reload", "plugins": [{"type": "bridge", "bridge": "crirt-rl0"}]}))
    env.write(conf_dir=f'"{other}"')
    outcome, _ = env.reload()
    assert outcome == "configuration reloaded: changed cni"
    assert network_ready().status
    assert json.loads(env.status().info["cniConfigFiles"]) == [str(other / "10-reload.conflist")]


def test_a_new_handler_serves_pods_and_one_in_use_is_not_removed(env: Env, tmp_path: Path) -> None:
    assert "fast" not in env.handlers()
    env.write(tables='[runtimes.fast]\nshim = "runc"\n')
    outcome, _ = env.reload()
    assert outcome == "configuration reloaded: changed runtimes; runtime handlers added: 'fast'"
    assert env.handlers() == ["", "runc", "fast"]
    sandbox_id = run_pod(env.runtime, env.pb, pod_config(env.pb, "on-fast", tmp_path, network="NODE"), "fast")
    try:
        env.write(log_level='"info"')  # fast removed, and a change that alone would apply
        outcome, since = env.reload()
        assert outcome == ("configuration reload refused, keeping the running configuration: runtimes.fast: "
                           "cannot be removed while 1 pod(s) use it; remove them first"), since
        assert env.handlers() == ["", "runc", "fast"]
        env.runtime.Version(env.pb.VersionRequest(), timeout=10)
        assert "Version done in" in env.daemon.log_text()[-2000:]  # the log level stayed debug
        status = env.runtime.PodSandboxStatus(env.pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id), timeout=10)
        assert (status.status.state, status.status.runtime_handler) == (env.pb.SANDBOX_READY, "fast")
    finally:
        remove_pod(env.runtime, env.pb, sandbox_id)
    outcome, _ = env.reload()
    assert outcome == "configuration reloaded: changed log_level, runtimes; runtime handlers removed: 'fast'"
    assert env.handlers() == ["", "runc"]


def test_a_changed_root_is_refused_and_named(env: Env) -> None:
    env.write(root=f'"{env.base}/elsewhere"', state=f'"{env.base}/state2"')
    outcome, since = env.reload()
    assert outcome == ("configuration reload refused, keeping the running configuration: "
                       f"root: changing it needs a restart ('{env.base}/root' -> '{env.base}/elsewhere'); "
                       f"state: changing it needs a restart ('{env.base}/state' -> '{env.base}/state2')"), since
    assert " ERROR crirt.reload: configuration reload refused" in since
    assert json.loads(env.status().info["config"])["root"] == f"{env.base}/root"


def test_an_invalid_file_is_refused_with_its_errors(env: Env) -> None:
    env.write('event_queue_size = 0\ntypo = true\n', log_level='"info"')
    outcome, since = env.reload()
    assert outcome == "configuration reload refused: the configuration is invalid; keeping the running one"
    assert "ERROR crirt.reload: config error: event_queue_size: Input should be greater than or equal to 1" in since
    assert "ERROR crirt.reload: config error: typo: unknown option" in since
    assert json.loads(env.status().info["config"])["log_level"] == "debug"
