"""Runtime-call metrics: the registry's shims are timed per handler and operation, and otherwise unchanged."""

from __future__ import annotations

import asyncio
import sys
import types
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from crirt.errors import NotFound
from crirt.metrics.runtime import TIMED_OPERATIONS, RuntimeMetrics
from crirt.shim import ExitStatus, HandlerFeatures, Shim, TaskState
from crirt.shim.registry import HandlerSpec, ShimRegistry


class CountingShim(Shim):
    """Answers ``state`` and ``wait`` at once; ``kill`` of an unknown task fails."""

    api_version = "2.2"
    needs_infra_container = True

    async def features(self) -> HandlerFeatures:
        return HandlerFeatures(recursive_read_only_mounts=True)

    async def state(self, task_id: str) -> TaskState:
        await asyncio.sleep(0.01)
        return TaskState(id=task_id, pid=1, status="running")

    async def kill(self, task_id: str, signal: int, all_processes: bool = False) -> None:
        raise NotFound(f"task {task_id} not found")

    async def wait(self, task_id: str) -> ExitStatus:
        return ExitStatus(exit_code=0, exited_at=1)

    async def _unused(self, *args: object) -> None:
        raise NotImplementedError

    create = start = delete = attach = resize = update = stats = _unused


sys.modules["fake_metered_shims"] = types.SimpleNamespace(CountingShim=CountingShim)  # type: ignore[assignment]


def load(calls: RuntimeMetrics | None) -> ShimRegistry:
    available = [EntryPoint(name="counting", value="fake_metered_shims:CountingShim", group="crirt.shims")]
    return ShimRegistry.load([HandlerSpec("fast", "counting")], "fast", Path("/tmp/r"), Path("/tmp/s"),
                             available=available, calls=calls)


def test_calls_through_the_registry_are_timed_by_handler_and_operation() -> None:
    metrics_registry = CollectorRegistry()
    registry = load(RuntimeMetrics(metrics_registry))

    def sample(name: str, operation: str) -> float | None:
        return metrics_registry.get_sample_value(name, {"handler": "fast", "operation": operation})

    async def calls() -> None:
        shim = registry.resolve("")
        assert (await shim.state("t1")).pid == 1
        await shim.state("t1")
        with pytest.raises(NotFound):
            await shim.kill("gone", 9)
        assert (await shim.wait("t1")).exit_code == 0

    asyncio.run(calls())
    assert sample("crirt_runtime_call_duration_seconds_count", "state") == 2
    assert sample("crirt_runtime_call_duration_seconds_sum", "state") >= 0.02
    assert sample("crirt_runtime_call_failures_total", "state") == 0
    assert sample("crirt_runtime_call_duration_seconds_count", "kill") == 1
    assert sample("crirt_runtime_call_failures_total", "kill") == 1
    assert sample("crirt_runtime_call_duration_seconds_count", "wait") is None  # lasts until the task exits
    assert {sample("crirt_runtime_call_failures_total", op) for op in TIMED_OPERATIONS} <= {0, 1}


def test_a_metered_shim_is_otherwise_the_plugins_own() -> None:
    registry = load(RuntimeMetrics())
    shim = registry.resolve("fast")
    assert shim is registry.resolve("")  # one wrapper per handler, made when the registry is built
    assert shim.needs_infra_container and shim.context.root == Path("/tmp/r/shims/fast")
    asyncio.run(registry.probe_features())
    assert registry.features("fast") == HandlerFeatures(recursive_read_only_mounts=True)


def test_without_metrics_the_registry_holds_the_plugins_shims() -> None:
    assert type(load(None).resolve("fast")) is CountingShim
