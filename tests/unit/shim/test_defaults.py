"""Which default handlers of the installed plugins crirt serves without a ``[runtimes]`` table (in-memory entry
points; the daemon that serves them is tests/integration/test_default_handlers.py)."""

from __future__ import annotations

import sys
import types
from collections.abc import Mapping
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any, ClassVar

import pytest

from crirt.shim import HandlerFeatures, Shim, missing_programs
from crirt.shim.defaults import find_default_handlers
from crirt.shim.registry import HandlerSpec


async def _not_used_here(self, *args: object) -> None:
    raise NotImplementedError


class PresentShim(Shim):
    """Offers two handlers whose runtime is always there."""

    api_version = "2.1"
    default_handlers: ClassVar[Mapping[str, Mapping[str, Any]]] = {"fast": {"speed": 2}, "slow": {}}

    async def features(self) -> HandlerFeatures:
        return HandlerFeatures()

    create = start = kill = wait = delete = state = attach = resize = update = stats = _not_used_here


class AbsentShim(PresentShim):
    """Its runtime is a program no node has; one handler is also offered by PresentShim."""

    default_handlers: ClassVar[Mapping[str, Mapping[str, Any]]] = {"ghost": {}, "slow": {}}

    @classmethod
    def available(cls, options: Mapping[str, Any]) -> str | None:
        return missing_programs("sh", "no-such-runtime-binary")


class CrashingShim(PresentShim):
    default_handlers: ClassVar[Mapping[str, Mapping[str, Any]]] = {"crash": {}}

    @classmethod
    def available(cls, options: Mapping[str, Any]) -> str | None:
        raise OSError("probe exploded")


class QuietShim(PresentShim):
    """A plugin of the 2.0 contract: no default handlers."""

    api_version = "2.0"
    default_handlers: ClassVar[Mapping[str, Mapping[str, Any]]] = {}


class FutureShim(PresentShim):
    api_version = "3.0"
    default_handlers: ClassVar[Mapping[str, Mapping[str, Any]]] = {"future": {}}


module = types.ModuleType("fake_default_shims")
for cls in (PresentShim, AbsentShim, CrashingShim, QuietShim, FutureShim):
    setattr(module, cls.__name__, cls)
sys.modules["fake_default_shims"] = module


def entry(name: str, target: str) -> EntryPoint:
    return EntryPoint(name=name, value=f"fake_default_shims:{target}", group="crirt.shims")


def test_handlers_whose_runtime_is_present_are_served_with_their_options() -> None:
    found = find_default_handlers([entry("present", "PresentShim"), entry("quiet", "QuietShim")])
    assert found.enabled == {"fast": HandlerSpec("fast", "present", {"speed": 2}),
                             "slow": HandlerSpec("slow", "present", {})}
    assert found.left_out == []


def test_handlers_whose_runtime_is_missing_are_left_out_with_the_reason() -> None:
    found = find_default_handlers([entry("absent", "AbsentShim"), entry("crashing", "CrashingShim")])
    assert found.enabled == {}
    assert found.left_out == [
        "runtime handler 'ghost' (shim plugin 'absent') is not served: 'no-such-runtime-binary' not found on PATH",
        "runtime handler 'slow' (shim plugin 'absent') is not served: 'no-such-runtime-binary' not found on PATH",
        "runtime handler 'crash' (shim plugin 'crashing') is not served: checking for its runtime failed: "
        "OSError: probe exploded",
    ]


def test_the_first_plugin_by_name_gets_a_handler_name_offered_twice() -> None:
    found = find_default_handlers([entry("zeta", "PresentShim"), entry("alpha", "PresentShim")])
    assert {name: spec.plugin for name, spec in found.enabled.items()} == {"fast": "alpha", "slow": "alpha"}
    assert found.left_out == [
        "runtime handler 'fast' of shim plugin 'zeta' is not served: shim plugin 'alpha' serves that name",
        "runtime handler 'slow' of shim plugin 'zeta' is not served: shim plugin 'alpha' serves that name",
    ]


def test_a_broken_plugin_is_left_out_and_the_others_still_count() -> None:
    found = find_default_handlers([entry("future", "FutureShim"), entry("odd", "NoSuchClass"),
                                   entry("present", "PresentShim")])
    assert sorted(found.enabled) == ["fast", "slow"]
    assert len(found.left_out) == 2
    assert "shim plugin 'future'" in found.left_out[0] and "built for shim API 3.0" in found.left_out[0]
    assert "shim plugin 'odd'" in found.left_out[1] and "failed to import" in found.left_out[1]
    assert all(line.endswith("its default handlers are not served") for line in found.left_out)


def test_a_plugin_name_installed_twice_is_asked_once() -> None:
    found = find_default_handlers([entry("present", "PresentShim"), entry("present", "PresentShim")])
    assert sorted(found.enabled) == ["fast", "slow"] and found.left_out == []


def test_the_base_contract_offers_nothing_and_calls_every_runtime_available() -> None:
    assert Shim.default_handlers == {}
    assert Shim.available({}) is None


def test_missing_programs_names_only_the_missing_ones() -> None:
    assert missing_programs("sh", sys.executable) is None
    assert missing_programs("sh", "no-such-a", "no-such-b") == "'no-such-a', 'no-such-b' not found on PATH"


def test_crirts_own_plugins_offer_runc_runsc_and_kata_when_their_programs_are_on_path(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for program in ("runc", "conmon", "containerd-shim-kata-v2"):  # no runsc on this PATH
        (tmp_path / program).write_text("#!/bin/sh\n")
        (tmp_path / program).chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    plugins = [EntryPoint(name=name, value=value, group="crirt.shims") for name, value in (
        ("runc", "crirt_runc_shim:RuncShim"), ("gvisor", "crirt_gvisor_shim:GvisorShim"),
        ("kata", "crirt_kata_shim:KataShim"))]
    found = find_default_handlers(plugins)
    assert found.enabled == {"kata": HandlerSpec("kata", "kata", {}), "runc": HandlerSpec("runc", "runc", {})}
    assert found.left_out == ["runtime handler 'runsc' (shim plugin 'gvisor') is not served: 'runsc' not found on PATH"]
