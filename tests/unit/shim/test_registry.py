"""The shim registry with in-memory entry points (the pip-installed proof is in tests/integration)."""

from __future__ import annotations

import asyncio
import sys
import types
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from crirt.errors import FailedPrecondition, InvalidArgument
from crirt.shim import HandlerFeatures, Shim
from crirt.shim.registry import HandlerSpec, PluginConflict, ShimRegistry


async def _not_used_here(self, *args: object) -> None:
    raise NotImplementedError


class GoodShim(Shim):
    api_version = "2.4"

    async def features(self) -> HandlerFeatures:
        return HandlerFeatures(user_namespaces=True)

    create = start = kill = wait = delete = state = attach = resize = update = stats = _not_used_here


class FutureShim(GoodShim):
    api_version = "3.0"


module = types.ModuleType("fake_shims")
module.GoodShim, module.FutureShim, module.NotAShim = GoodShim, FutureShim, object
sys.modules["fake_shims"] = module


def entry(name: str, target: str) -> EntryPoint:
    return EntryPoint(name=name, value=f"fake_shims:{target}", group="crirt.shims")


def load(specs: list[HandlerSpec], default: str = "runc") -> ShimRegistry:
    available = [entry("good", "GoodShim"), entry("future", "FutureShim"), entry("odd", "NotAShim"),
                 entry("twice", "GoodShim"), entry("twice", "GoodShim")]
    return ShimRegistry.load(specs, default, Path("/tmp/r"), Path("/tmp/s"), available=available)


def test_handlers_resolve_to_their_plugin_and_empty_means_default() -> None:
    registry = load([HandlerSpec("runc", "good"), HandlerSpec("other", "good")])
    asyncio.run(registry.probe_features())
    assert isinstance(registry.resolve(""), GoodShim)
    assert registry.resolve("") is registry.resolve("runc")
    assert registry.resolve("other") is not registry.resolve("runc")
    assert registry.handlers["other"].features.user_namespaces
    assert registry.features("other") == registry.features("") == HandlerFeatures(user_namespaces=True)
    assert registry.features("nope") == HandlerFeatures()  # what CreateContainer asks is what Status reports
    assert registry.resolve("other").context.root == Path("/tmp/r/shims/other")
    assert registry.default_ready() and registry.problems == []


def test_unknown_handler_lists_the_known_ones() -> None:
    registry = load([HandlerSpec("runc", "good"), HandlerSpec("fast", "good")])
    with pytest.raises(InvalidArgument, match=r"unknown runtime handler 'nope'.*'fast', 'runc'"):
        registry.resolve("nope")


@pytest.mark.parametrize(("plugin", "problem"), [
    ("future", "built for shim API 3.0, but crirt .* speaks shim API 2\\.2"),
    ("odd", "is not a crirt.shim.Shim subclass"),
    ("absent", "is not installed"),
])
def test_broken_plugins_are_reported_not_fatal(plugin: str, problem: str) -> None:
    registry = load([HandlerSpec("runc", "good"), HandlerSpec("b", plugin)])
    assert registry.default_ready()
    assert len(registry.problems) == 1
    with pytest.raises(FailedPrecondition, match=problem):
        registry.resolve("b")


def test_a_configured_plugin_provided_twice_refuses_to_load() -> None:
    with pytest.raises(PluginConflict, match=r"shim plugin 'twice' \(used by runtime handler 'b', 'c'\) is "
                                             r"provided by more than one package: fake_shims:GoodShim and "
                                             r"fake_shims:GoodShim"):
        load([HandlerSpec("runc", "good"), HandlerSpec("b", "twice"), HandlerSpec("c", "twice")])


def test_a_plugin_provided_twice_but_not_configured_is_ignored() -> None:
    registry = load([HandlerSpec("runc", "good")])
    assert registry.default_ready() and registry.problems == []
