"""Pods and containers by state and runtime handler, counted from crirt's records when Prometheus scrapes.

Nothing is counted as pods and containers change: the collector reads the same in-memory records the List RPCs
answer from, so the figures can never drift from them. Every configured handler gets a series for every state,
zeros included, so a dashboard's lines do not vanish when a count drops to nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from crirt.containers.records import ContainerRecord
from crirt.model.enums import ContainerState
from crirt.sandboxes.records import Phase, SandboxRecord
from crirt.shim.registry import ShimRegistry

POD_STATES = [phase.value for phase in Phase]
CONTAINER_STATES = [state.name.removeprefix("CONTAINER_").lower() for state in ContainerState]


class RecordsCollector(Collector):
    """``crirt_pods`` and ``crirt_containers`` gauges by ``state`` and ``handler``."""

    def __init__(self, pods: Iterable[SandboxRecord], containers: Iterable[ContainerRecord],
                 registry: ShimRegistry) -> None:
        self.pods = pods
        self.containers = containers
        self.registry = registry

    def _handler(self, name: str) -> str:
        return name or self.registry.default

    def collect(self) -> Iterator[Metric]:
        pods = Counter((pod.phase.value, self._handler(pod.runtime_handler)) for pod in self.pods)
        containers = Counter((c.state.name.removeprefix("CONTAINER_").lower(), self._handler(c.runtime_handler))
                             for c in self.containers)
        yield _family("crirt_pods", "Pod sandboxes by lifecycle phase and runtime handler.", POD_STATES, pods,
                      self.registry.handlers)
        yield _family("crirt_containers", "Containers by state and runtime handler.", CONTAINER_STATES, containers,
                      self.registry.handlers)


def _family(name: str, documentation: str, states: list[str], counts: Counter[tuple[str, str]],
            handlers: Iterable[str]) -> GaugeMetricFamily:
    """One gauge per (state, handler): every configured handler and every state, plus any pair that has records."""
    family = GaugeMetricFamily(name, documentation, labels=["state", "handler"])
    pairs = dict.fromkeys([*((state, handler) for handler in handlers for state in states), *counts])
    for state, handler in pairs:
        family.add_metric([state, handler], counts[(state, handler)])
    return family
