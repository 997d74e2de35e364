"""crirt and its shim plugins as wheels: ``python -m build`` makes them, pip installs them into a fresh venv (no
editable installs, crirt's dependencies from the package index), and that venv's ``crirt serve`` runs a pod.
The shims' ``Requires-Dist`` on crirt is what pip checks at install time: a crirt outside the range is refused.

Each project is copied to a temp dir and built there with the build tools of this environment
(``--no-isolation``), so the build leaves nothing in the source tree and needs no network.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path
from types import ModuleType

import pytest
from packaging.requirements import Requirement
from packaging.version import Version
from support.daemon import start_daemon
from support.images import unmount_under
from support.network import wait_until
from support.pods import (
    busybox_registry,
    force_delete_all,
    kill_processes_mentioning,
    log_stdout,
    pod_config,
    remove_pod,
    run_container,
    run_pod,
)

from crirt.shim import API_VERSION

ROOT = Path(__file__).resolve().parents[2]
SHIMS = {"crirt-runc-shim": "runc-shim", "crirt-gvisor-shim": "gvisor-shim", "crirt-kata-shim": "kata-shim"}
PIP = ["-m", "pip", "--disable-pip-version-check", "--no-input"]
CLEAN_ENV = {"PYTHONPATH": ""}  # the fresh venv must import the installed wheels, not this checkout
NEUTRAL_CWD = "/"  # neither is ``python -m``'s current directory this checkout (or its crirt.egg-info)
MISSING = [tool for tool in ("runc", "conmon", "catatonit") if not shutil.which(tool)]
MISSING += [] if os.geteuid() == 0 else ["root"]


def _run(*argv: str | Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run a command with this checkout kept off the child's import path; fail with its output."""
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout, check=False,
                            env={**os.environ, **CLEAN_ENV}, cwd=NEUTRAL_CWD)
    assert result.returncode == 0, f"{argv} exited with {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


def _copy_project(source: Path, into: Path) -> Path:
    """The tracked parts of one project (its pyproject, README and packages) in a fresh directory."""
    target = into / source.name
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist",
                                                                  "tests"))
    return target


def build(project: Path, workdir: Path, outdir: Path, version: str | None = None) -> Path:
    """``python -m build`` (sdist, then the wheel from it) of a copy of ``project``, its version replaced by
    ``version`` if given; returns the wheel."""
    copy = _copy_project(project, workdir)
    if version is not None:
        pyproject = copy / "pyproject.toml"
        text, count = re.subn(r'^version = ".*"$', f'version = "{version}"', pyproject.read_text(), count=1,
                              flags=re.MULTILINE)
        assert count == 1
        pyproject.write_text(text)
    before = set(outdir.glob("*.whl"))
    _run(sys.executable, "-m", "build", "--no-isolation", "--outdir", outdir, copy)
    (wheel,) = set(outdir.glob("*.whl")) - before
    return wheel


def metadata(wheel: Path) -> dict[str, list[str]]:
    """A wheel's METADATA fields, each with all its values."""
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        message = Parser().parsestr(archive.read(name).decode())
    return {key: message.get_all(key) or [] for key in set(message.keys())}


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """crirt's wheel and each shim's, by distribution name."""
    work = tmp_path_factory.mktemp("build")
    out = work / "wheels"
    out.mkdir()
    built = {"crirt": build(ROOT, work / "crirt", out)}
    for dist, directory in SHIMS.items():
        built[dist] = build(ROOT / "shims" / directory, work / dist, out)
    return built


@pytest.fixture(scope="module")
def venv(wheels: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with crirt's wheel (its dependencies from the index) and then the shims' wheels, which
    resolve their crirt requirement against the installed crirt only (``--no-index``)."""
    path = tmp_path_factory.mktemp("venv") / "crirt"
    _run(sys.executable, "-m", "venv", path)
    python = path / "bin" / "python"
    _run(python, *PIP, "install", "-q", wheels["crirt"])
    _run(python, *PIP, "install", "-q", "--no-index", "--find-links", wheels["crirt"].parent, *SHIMS)
    return path


def test_shim_wheels_require_the_crirt_that_serves_their_contract(wheels: dict[str, Path]) -> None:
    """docs/plugins.md: crirt 0.N.x serves shim contract N.x, and each shim asks for one such series."""
    crirt_version = Version(metadata(wheels["crirt"])["Version"][0])
    assert (crirt_version.major, crirt_version.minor) == (0, int(API_VERSION.split(".")[0])), crirt_version
    for dist in SHIMS:
        requirements = [Requirement(r) for r in metadata(wheels[dist])["Requires-Dist"]]
        (crirt,) = [r for r in requirements if r.name == "crirt"]
        assert crirt_version in crirt.specifier, (dist, str(crirt.specifier), crirt_version)
        assert Version(f"{crirt_version.major}.{crirt_version.minor + 1}.0") not in crirt.specifier, dist


def test_wheels_install_without_editable_parts(venv: Path, wheels: dict[str, Path]) -> None:
    python = venv / "bin" / "python"
    assert json.loads(_run(python, *PIP, "list", "--editable", "--format", "json").stdout) == []
    where = _run(python, "-c", "import crirt, crirt_gvisor_shim, crirt_kata_shim, crirt_runc_shim as m; "
                 "print(crirt.__file__); print(m.__file__); print(crirt_gvisor_shim.__file__); "
                 "print(crirt.__version__)").stdout.split()
    site = str(venv / "lib")
    assert all(line.startswith(site) for line in where[:3]), where
    assert where[3] == metadata(wheels["crirt"])["Version"][0]
    holder = Path(where[2]).with_name("holder.sh")  # run by conmon as a program: the wheel keeps its mode
    assert os.access(holder, os.X_OK), oct(holder.stat().st_mode)
    assert _run(venv / "bin" / "crirt", "--version").stdout.strip() == f"crirt {where[3]}"


@pytest.mark.skipif(bool(MISSING), reason=f"needs {', '.join(MISSING)}")
def test_installed_crirt_serves_a_pod(venv: Path, tmp_path: Path, pb: ModuleType) -> None:
    base = tmp_path / "d"
    logs = tmp_path / "logs"
    with busybox_registry(tmp_path) as image:
        daemon = start_daemon(base, argv=[str(venv / "bin" / "crirt"), "serve"], env=CLEAN_ENV, registries="")
        sandbox_id = ""
        try:
            with daemon.channel() as channel:
                runtime = pb.grpc.RuntimeServiceStub(channel)
                assert runtime.Version(pb.VersionRequest(), timeout=10).runtime_version == \
                    _run(venv / "bin" / "crirt", "--version").stdout.split()[1]
                reply = runtime.Status(pb.StatusRequest(verbose=True), timeout=10)
                handlers = json.loads(reply.info["handlerStatus"])  # the wheels' entry points were found
                assert (handlers["runc"]["shim"], handlers["runc"]["ready"]) == ("runc", True), handlers
                if shutil.which("runsc"):
                    assert (handlers["runsc"]["shim"], handlers["runsc"]["ready"]) == ("gvisor", True), handlers
                pb.grpc.ImageServiceStub(channel).PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=image)),
                                                            timeout=60)
                sandbox_id = run_pod(runtime, pb, pod_config(pb, "from-wheels", logs, network="NODE"), "runc")
                run_container(runtime, pb, sandbox_id, image, "hello", "echo installed from wheels; sleep 1000")
                wait_until(lambda: "installed from wheels\n" in log_stdout(logs / "hello.log"), 10)
                remove_pod(runtime, pb, sandbox_id)
                sandbox_id = ""
                assert not runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10).items
        finally:
            if sandbox_id:
                with daemon.channel() as channel, contextlib.suppress(Exception):
                    remove_pod(pb.grpc.RuntimeServiceStub(channel), pb, sandbox_id)
            code = daemon.stop()
            force_delete_all("runc", base / "state" / "shims" / "runc" / "runc-root")
            kill_processes_mentioning(f"{base}/")
            unmount_under(tmp_path)
        assert code == 0, daemon.log_text()


def test_pip_refuses_a_shim_with_a_crirt_outside_its_range(venv: Path, wheels: dict[str, Path],
                                                           tmp_path: Path) -> None:
    """A crirt one minor version on (the next contract major) is built and offered with the shims: pip must
    not install it next to them, naming the shim's requirement."""
    current = Version(metadata(wheels["crirt"])["Version"][0])
    newer = f"{current.major}.{current.minor + 1}.0"
    out = tmp_path / "wheels"
    out.mkdir()
    build(ROOT, tmp_path / "crirt", out, version=newer)
    for dist in SHIMS:
        shutil.copy(wheels[dist], out)
    python = venv / "bin" / "python"
    result = subprocess.run([python, *PIP, "install", "--dry-run", "--no-index", "--find-links", out,
                             f"crirt=={newer}", "crirt-runc-shim"], capture_output=True, text=True, timeout=300,
                            check=False, env={**os.environ, **CLEAN_ENV}, cwd=NEUTRAL_CWD)
    assert result.returncode != 0, result.stdout
    assert "ResolutionImpossible" in result.stderr or "conflicting dependencies" in result.stderr, result.stderr
    assert "crirt-runc-shim" in result.stderr and f"crirt=={newer}" in result.stderr, result.stderr
    # The installed pair is untouched and consistent.
    _run(python, *PIP, "check")
