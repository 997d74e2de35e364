"""ListContainers and StreamContainers, answered from the store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from crirt.bus import Bus
from crirt.commands.containers import (
    ListContainersCommand,
    ListContainersResult,
    StreamContainersCommand,
    StreamContainersResult,
)
from crirt.filters import batches, id_matches, labels_match
from crirt.model.container import Container, ContainerFilter
from crirt.store import Store, Table

CONTAINERS = "containers"


def select_containers(containers: list[Container], spec: ContainerFilter | None) -> list[Container]:
    """The containers that pass every criterion of the filter, newest first."""
    if spec is not None:
        containers = [
            c for c in containers
            if id_matches(spec.id, c.id)
            and id_matches(spec.pod_sandbox_id, c.pod_sandbox_id)
            and (spec.state is None or c.state == spec.state.state)
            and labels_match(spec.label_selector, c.labels)
        ]
    return sorted(containers, key=lambda c: c.created_at, reverse=True)


@dataclass
class ContainerQueries:
    store: Store

    @property
    def table(self) -> Table[Container]:
        return self.store.table(CONTAINERS, Container)

    def register(self, bus: Bus) -> None:
        bus.register(ListContainersCommand, self.list)
        bus.register(StreamContainersCommand, self.stream)

    async def list(self, command: ListContainersCommand) -> ListContainersResult:
        return ListContainersResult(containers=select_containers(list(self.table), command.filter))

    async def stream(self, command: StreamContainersCommand) -> AsyncIterator[StreamContainersResult]:
        for batch in batches(select_containers(list(self.table), command.filter)):
            yield StreamContainersResult(containers=list(batch))
