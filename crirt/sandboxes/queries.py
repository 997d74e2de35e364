"""ListPodSandbox and StreamPodSandboxes, answered from the store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from crirt.bus import Bus
from crirt.commands.sandboxes import (
    ListPodSandboxCommand,
    ListPodSandboxResult,
    StreamPodSandboxesCommand,
    StreamPodSandboxesResult,
)
from crirt.filters import batches, id_matches, labels_match
from crirt.model.sandbox import PodSandbox, PodSandboxFilter
from crirt.store import Store, Table

SANDBOXES = "sandboxes"


def select_sandboxes(sandboxes: list[PodSandbox], spec: PodSandboxFilter | None) -> list[PodSandbox]:
    """The sandboxes that pass every criterion of the filter, newest first."""
    if spec is not None:
        sandboxes = [
            s for s in sandboxes
            if id_matches(spec.id, s.id)
            and (spec.state is None or s.state == spec.state.state)
            and labels_match(spec.label_selector, s.labels)
        ]
    return sorted(sandboxes, key=lambda s: s.created_at, reverse=True)


@dataclass
class SandboxQueries:
    store: Store

    @property
    def table(self) -> Table[PodSandbox]:
        return self.store.table(SANDBOXES, PodSandbox)

    def register(self, bus: Bus) -> None:
        bus.register(ListPodSandboxCommand, self.list)
        bus.register(StreamPodSandboxesCommand, self.stream)

    async def list(self, command: ListPodSandboxCommand) -> ListPodSandboxResult:
        return ListPodSandboxResult(items=select_sandboxes(list(self.table), command.filter))

    async def stream(self, command: StreamPodSandboxesCommand) -> AsyncIterator[StreamPodSandboxesResult]:
        for batch in batches(select_sandboxes(list(self.table), command.filter)):
            yield StreamPodSandboxesResult(pod_sandboxes=list(batch))
