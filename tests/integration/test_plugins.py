"""Shim plugin discovery through real entry points: tiny distributions are pip-installed into the running venv.

The module installs (and at the end uninstalls) five throwaway distributions: a good plugin, one written for
another contract major version, one that fails to import, and two that both claim the same entry-point
name. A real daemon configured with handlers on all of them must serve, load the good one, and report
every broken one, with its reason, in the log and in ``Status``; a daemon whose config uses the name both
claim refuses to start. Then the example plugin of docs/plugins.md is built from the page, installed, and
runs a pod and container on runc through a real daemon whose config only adds the page's two lines.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from support.daemon import CRIRT, Daemon, start_daemon, write_config
from support.images import unmount_under
from support.network import wait_until
from support.pods import (
    busybox_registry,
    force_delete_all,
    log_stdout,
    oci_runtime_ids,
    pod_config,
    remove_pod,
    run_container,
    run_pod,
)

from crirt.errors import FailedPrecondition, InvalidArgument
from crirt.shim import API_VERSION
from crirt.shim.registry import HandlerSpec, ShimRegistry

GOOD_SHIM = '''
from crirt.shim import HandlerFeatures, Shim


class GoodShim(Shim):
    api_version = "2.0"

    def __init__(self, context, options):
        if options:
            raise ValueError(f"unknown option(s): {', '.join(sorted(options))}")
        super().__init__(context, options)

    async def features(self):
        return HandlerFeatures(recursive_read_only_mounts=True, user_namespaces=True)

    async def create(self, task):
        raise NotImplementedError("test plugin")

    async def start(self, task_id):
        raise NotImplementedError("test plugin")

    async def kill(self, task_id, signal, all_processes=False):
        raise NotImplementedError("test plugin")

    async def wait(self, task_id):
        raise NotImplementedError("test plugin")

    async def delete(self, task_id):
        raise NotImplementedError("test plugin")

    async def state(self, task_id):
        raise NotImplementedError("test plugin")

    async def attach(self, task_id, *, stdin, terminal):
        raise NotImplementedError("test plugin")

    async def resize(self, task_id, exec_id, width, height):
        raise NotImplementedError("test plugin")

    async def update(self, task_id, resources):
        raise NotImplementedError("test plugin")

    async def stats(self, task_id):
        raise NotImplementedError("test plugin")
'''

OLD_API_SHIM = '''
from crirt.shim import Shim


class OldApiShim(Shim):
    api_version = "1.2"
'''

IMPORT_ERROR = "crirt-testshim-broken needs libtestshim.so.3"
BROKEN_SHIM = f"raise ImportError({IMPORT_ERROR!r})\n"

DUP_SHIM = '''
from crirt.shim import Shim


class DupShim(Shim):
    api_version = "2.0"
'''

# distribution name -> (entry-point name, class name, module source)
DISTRIBUTIONS = {
    "crirt-testshim-good": ("testshim-good", "GoodShim", GOOD_SHIM),
    "crirt-testshim-oldapi": ("testshim-oldapi", "OldApiShim", OLD_API_SHIM),
    "crirt-testshim-broken": ("testshim-broken", "BrokenShim", BROKEN_SHIM),
    "crirt-testshim-dup-a": ("testshim-dup", "DupShim", DUP_SHIM),
    "crirt-testshim-dup-b": ("testshim-dup", "DupShim", DUP_SHIM),
}

CONFIG = """
default_runtime = "good"
[runtimes.good]
shim = "testshim-good"
[runtimes.fast]
shim = "testshim-good"
options = { }
[runtimes.old]
shim = "testshim-oldapi"
[runtimes.broken]
shim = "testshim-broken"
[runtimes.missing]
shim = "no-such-plugin"
[runtimes.badopts]
shim = "testshim-good"
options = { bogus = 1 }
"""
CONFIGURED_HANDLERS = ("good", "fast", "old", "broken", "missing", "badopts")
BROKEN_HANDLERS = ("old", "broken", "missing", "badopts")

PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]


def _write_distribution(parent: Path, dist: str, entry_point: str, class_name: str, source: str) -> Path:
    module = dist.replace("-", "_")
    root = parent / dist
    root.mkdir()
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    (root / "pyproject.toml").write_text(textwrap.dedent(f"""\
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{dist}"
        version = "0.1.0"

        [project.entry-points."crirt.shims"]
        {entry_point} = "{module}:{class_name}"

        [tool.setuptools]
        py-modules = ["{module}"]
        """))
    return root


def _uninstall(*dists: str) -> None:
    subprocess.run([*PIP, "uninstall", "-y", "-q", *dists], capture_output=True, check=False)
    importlib.invalidate_caches()


def _install(*dirs: str) -> None:
    result = subprocess.run([*PIP, "install", "--no-deps", "--no-build-isolation", "--no-index", "-q", *dirs],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"pip install failed:\n{result.stdout}\n{result.stderr}"
    importlib.invalidate_caches()


@pytest.fixture(scope="module")
def installed_plugins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The test distributions, installed into this venv for the module and uninstalled afterwards."""
    _uninstall(*DISTRIBUTIONS)  # leftovers of a crashed earlier run
    sources = tmp_path_factory.mktemp("plugin_sources")
    dirs = [str(_write_distribution(sources, dist, *spec)) for dist, spec in DISTRIBUTIONS.items()]
    try:
        _install(*dirs)
        yield
    finally:
        _uninstall(*DISTRIBUTIONS)


@pytest.fixture(scope="module")
def plugin_daemon(installed_plugins: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    daemon = start_daemon(tmp_path_factory.mktemp("plugins") / "d", CONFIG)
    try:
        yield daemon
    finally:
        assert daemon.stop() == 0, daemon.log_text()


def _names_version(text: str, version: str) -> bool:
    """Whether ``text`` holds ``version`` as a whole version number (so "1.0" is not found in "0.1.0")."""
    return re.search(rf"(?<![\d.]){re.escape(version)}(?![\d.])", text) is not None


def _status(daemon: Daemon, pb: ModuleType) -> Any:
    with daemon.channel() as channel:
        return pb.grpc.RuntimeServiceStub(channel).Status(pb.StatusRequest(verbose=True))


def test_daemon_loads_good_plugin_and_reports_each_broken_one(plugin_daemon: Daemon, pb: ModuleType) -> None:
    reply = _status(plugin_daemon, pb)
    conditions = {c.type: c for c in reply.status.conditions}
    assert conditions["RuntimeReady"].status, conditions["RuntimeReady"].message

    handlers = {h.name: h.features for h in reply.runtime_handlers}
    # The built-in "runc" handler is listed too (docs/configuration.md); whether its plugin is installed in
    # this venv is none of this test's business.
    expected = ["", *CONFIGURED_HANDLERS]
    assert [name for name in handlers if name in expected] == expected
    for name in ("", "good", "fast"):
        assert handlers[name].recursive_read_only_mounts and handlers[name].user_namespaces, name

    status = json.loads(reply.info["handlerStatus"])
    assert [name for name in CONFIGURED_HANDLERS if status[name]["ready"]] == ["good", "fast"]
    problems = {name: status[name]["problem"] for name in BROKEN_HANDLERS}
    assert "crirt-testshim-oldapi" in problems["old"]
    assert _names_version(problems["old"], "1.2") and _names_version(problems["old"], API_VERSION)
    assert "failed to import" in problems["broken"] and IMPORT_ERROR in problems["broken"]
    assert "no-such-plugin" in problems["missing"] and "not installed" in problems["missing"]
    assert "rejected its options" in problems["badopts"] and "bogus" in problems["badopts"]

    plugins_ready = conditions["ShimPluginsReady"]
    assert not plugins_ready.status
    for name, problem in problems.items():
        assert problem in plugins_ready.message, name

    log_lines = plugin_daemon.log_text().splitlines()
    for name, problem in problems.items():
        assert any(repr(name) in line and problem in line for line in log_lines), (name, log_lines)

    assert plugin_daemon.proc.poll() is None
    with plugin_daemon.channel() as channel:
        assert pb.grpc.RuntimeServiceStub(channel).Version(pb.VersionRequest()).runtime_name == "crirt"


def test_entry_point_provided_by_two_distributions_is_a_startup_error(installed_plugins: None, tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.toml", tmp_path, '[runtimes.dup]\nshim = "testshim-dup"\n')
    result = subprocess.run([*CRIRT, "serve", "--config", str(config)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 1, (result.stdout, result.stderr)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("crirt: shim plugin 'testshim-dup' (used by runtime handler 'dup') is provided by more "
                           "than one package: "), result.stderr
    assert "crirt-testshim-dup-a 0.1.0" in last and "crirt-testshim-dup-b 0.1.0" in last, last
    assert not (tmp_path / "crirt.sock").exists()


def test_registry_resolve_names_unknown_and_broken_handlers(installed_plugins: None, tmp_path: Path) -> None:
    specs = [HandlerSpec("good", "testshim-good"), HandlerSpec("broken", "testshim-broken")]
    registry = ShimRegistry.load(specs, "good", tmp_path / "root", tmp_path / "state")

    assert registry.resolve("") is registry.resolve("good")
    with pytest.raises(InvalidArgument) as unknown:
        registry.resolve("nope")
    assert "'nope'" in str(unknown.value)
    assert "'good'" in str(unknown.value) and "'broken'" in str(unknown.value)
    with pytest.raises(FailedPrecondition) as broken:
        registry.resolve("broken")
    assert "'broken'" in str(broken.value) and "failed to import" in str(broken.value)
    assert IMPORT_ERROR in str(broken.value)



DOC = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"
EXAMPLE_DIST = "crirt-example-shim"
MISSING_FOR_EXAMPLE = [tool for tool in ("runc", "conmon") if not shutil.which(tool)]
MISSING_FOR_EXAMPLE += [] if Path("/bin/busybox").exists() else ["/bin/busybox (busybox-static)"]
MISSING_FOR_EXAMPLE += [] if os.geteuid() == 0 else ["root"]


def doc_files() -> dict[str, str]:
    """The code blocks of docs/plugins.md that start with a comment naming a file, by that name."""
    files = {}
    for body in re.findall(r"^```(?:toml|python)\n(.*?)^```$", DOC.read_text(), re.MULTILINE | re.DOTALL):
        first = body.partition("\n")[0]
        if first.startswith("# "):
            files[first[2:]] = body
    return files


@pytest.fixture(scope="module")
def example_plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The example plugin built from docs/plugins.md, pip-installed for the module; yields the page's config."""
    files = doc_files()
    source = tmp_path_factory.mktemp("example") / EXAMPLE_DIST
    source.mkdir()
    for name in ("pyproject.toml", "crirt_example_shim.py"):
        (source / name).write_text(files[name])
    _uninstall(EXAMPLE_DIST)
    try:
        _install(str(source))
        yield files["/etc/crirt/config.toml"]
    finally:
        _uninstall(EXAMPLE_DIST)


@pytest.mark.skipif(bool(MISSING_FOR_EXAMPLE), reason=f"needs {', '.join(MISSING_FOR_EXAMPLE)}")
def test_example_plugin_from_the_docs_runs_a_container(example_plugin: str, tmp_path: Path, pb: ModuleType) -> None:
    handler = re.findall(r"^\[runtimes\.([\w-]+)\]$", example_plugin, re.MULTILINE)[0]
    greeting = re.findall(r'greeting = "([^"]*)"', example_plugin)[0]
    plugin_state = tmp_path / "d" / "state" / "shims" / handler
    logs = tmp_path / "logs"
    with busybox_registry(tmp_path) as image:
        daemon = start_daemon(tmp_path / "d", example_plugin, registries="")
        sandbox_id = ""
        try:
            with daemon.channel() as channel:
                runtime = pb.grpc.RuntimeServiceStub(channel)
                handlers = json.loads(runtime.Status(pb.StatusRequest(verbose=True)).info["handlerStatus"])
                assert handlers[handler]["shim"] == "example" and handlers[handler]["ready"], handlers
                pb.grpc.ImageServiceStub(channel).PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=image)),
                                                            timeout=60)
                sandbox_id = run_pod(runtime, pb, pod_config(pb, "greeter", logs, network="NODE"), handler)
                status = runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id)).status
                assert status.runtime_handler == handler
                container_id = run_container(runtime, pb, sandbox_id, image, "hello",
                                             'echo "greeting: $EXAMPLE_GREETING"; exec /bin/busybox sleep 1000')
                # The plugin's marks: the variable it adds to every container, and runc state under its own root
                # (the pod's infra container, for its shared PID namespace, went through the plugin as well).
                wait_until(lambda: f"greeting: {greeting}\n" in log_stdout(logs / "hello.log"), 10)
                assert sorted(oci_runtime_ids("runc", plugin_state / "root")) == sorted([sandbox_id, container_id])
                assert (plugin_state / "containers" / container_id / "conmon.pid").exists()

                remove_pod(runtime, pb, sandbox_id)
                sandbox_id = ""
                assert oci_runtime_ids("runc", plugin_state / "root") == []
                assert list((plugin_state / "containers").iterdir()) == []
        finally:
            if sandbox_id:
                with daemon.channel() as channel, contextlib.suppress(Exception):
                    remove_pod(pb.grpc.RuntimeServiceStub(channel), pb, sandbox_id)
            daemon.stop()
            force_delete_all("runc", plugin_state / "root")
            unmount_under(tmp_path)
