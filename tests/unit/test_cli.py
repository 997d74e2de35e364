"""``crirt config`` without a ``[runtimes]`` table: the default handlers found are in the JSON, the ones left
out on stderr (the plugins are stand-ins; tests/integration/test_default_handlers.py uses the real ones)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from crirt.cli import app
from crirt.shim.defaults import DefaultHandlers
from crirt.shim.registry import HandlerSpec

LEFT_OUT = "runtime handler 'kata' (shim plugin 'kata') is not served: 'containerd-shim-kata-v2' not found on PATH"


@pytest.fixture(autouse=True)
def fake_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    found = DefaultHandlers({"runsc": HandlerSpec("runsc", "gvisor", {"network": "host"})}, [LEFT_OUT])
    monkeypatch.setattr("crirt.cli.find_default_handlers", lambda: found)


def crirt_config(tmp_path: Path, text: str) -> tuple[int, str, str]:
    file = tmp_path / "c.toml"
    file.write_text(text)
    result = CliRunner().invoke(app, ["config", "--config", str(file)])
    return result.exit_code, result.stdout, result.stderr


def test_config_shows_the_default_handlers_and_says_which_are_left_out(tmp_path: Path) -> None:
    code, stdout, stderr = crirt_config(tmp_path, 'default_runtime = "runsc"\n')
    assert code == 0, stderr
    effective = json.loads(stdout)
    assert effective["runtimes"] == {"runc": {"shim": "runc", "options": {}},
                                     "runsc": {"shim": "gvisor", "options": {"network": "host"}}}
    assert stderr == f"crirt: {LEFT_OUT}\n"


def test_config_with_a_runtimes_table_looks_for_no_defaults(tmp_path: Path) -> None:
    code, stdout, stderr = crirt_config(tmp_path, '[runtimes.fast]\nshim = "runc"\n')
    assert code == 0 and stderr == ""
    assert sorted(json.loads(stdout)["runtimes"]) == ["fast", "runc"]


def test_a_default_runtime_left_out_is_explained(tmp_path: Path) -> None:
    code, _, stderr = crirt_config(tmp_path, 'default_runtime = "kata"\n')
    assert code == 2
    assert stderr.splitlines() == [
        "crirt: config error: default_runtime: 'kata' is not a key of [runtimes] (known: runc, runsc)",
        f"crirt: {LEFT_OUT}"]
