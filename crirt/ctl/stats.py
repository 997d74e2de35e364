"""``crirt ctl stats`` and ``statsp``: container and pod resource usage, in crictl's columns and JSON.

The CPU column needs a rate: when the runtime has no earlier sample (its ``usage_nano_cores`` is unset), the
command samples again after ``--seconds`` and shows the rate between the two, as crictl does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import typer

from crirt._gen.runtime.v1 import (
    ContainerFilter,
    ContainerState,
    ContainerStateValue,
    ContainerStatsFilter,
    ListContainersRequest,
    ListContainerStatsRequest,
    ListPodSandboxStatsRequest,
    PodSandboxStatsFilter,
)
from crirt.ctl.app import app, call_runtime, fail, human_size, parse_labels, print_listing


def cpu_percent(cpu: Any) -> str:
    """``usage_nano_cores`` as a percentage of one core, two decimals; "" without a rate."""
    if cpu is None or cpu.usage_nano_cores is None:
        return ""
    return f"{cpu.usage_nano_cores.value / 1e9 * 100:.2f}"


def sampled(fetch: Callable[[], Sequence[Any]], seconds: float) -> Sequence[Any]:
    """The stats; fetched a second time ``seconds`` later when some item has no CPU rate yet."""
    items = fetch()
    if seconds > 0 and any(i.cpu is None or i.cpu.usage_nano_cores is None for i in _cpu_holders(items)):
        time.sleep(seconds)
        items = fetch()
    return items


def _cpu_holders(items: Sequence[Any]) -> list[Any]:
    return [getattr(i, "linux", None) or i for i in items]


@app.command()
def stats(
    ctx: typer.Context,
    all_states: Annotated[bool, typer.Option("--all", "-a", help="all containers, not only running ones")] = False,
    container_id: Annotated[str, typer.Option("--id", help="only the container with this id (or prefix)")] = "",
    pod: Annotated[str, typer.Option("--pod", "-p", help="only containers of this pod")] = "",
    label: Annotated[list[str] | None, typer.Option("--label", help="key=value, repeatable")] = None,
    output: Annotated[str, typer.Option("--output", "-o", help="table or json")] = "table",
    seconds: Annotated[float, typer.Option("--seconds", "-s", help="sampling interval for the CPU rate")] = 1.0,
) -> None:
    """Show the resource usage of containers (running ones unless --all)."""
    if output not in ("table", "json"):
        raise fail(f"--output {output!r}: expected table or json")
    filter_ = ContainerStatsFilter(id=container_id, pod_sandbox_id=pod, label_selector=parse_labels(label or []))
    request = ListContainerStatsRequest(filter=filter_)
    items = list(sampled(lambda: call_runtime(ctx, lambda stub: stub.list_container_stats(request)).stats,
                         seconds))
    if not all_states:
        running = ContainerFilter(state=ContainerStateValue(state=ContainerState.CONTAINER_RUNNING))
        listed = call_runtime(ctx, lambda stub: stub.list_containers(ListContainersRequest(filter=running)))
        ids = {c.id for c in listed.containers}
        items = [i for i in items if i.attributes and i.attributes.id in ids]

    def row(item: Any) -> tuple[str, ...]:
        attributes, memory, layer = item.attributes, item.memory, item.writable_layer
        return (attributes.id[:13], attributes.metadata.name if attributes.metadata else "", cpu_percent(item.cpu),
                human_size(memory.working_set_bytes.value, 4) if memory and memory.working_set_bytes else "",
                human_size(layer.used_bytes.value, 4) if layer and layer.used_bytes else "",
                str(layer.inodes_used.value) if layer and layer.inodes_used else "")

    print_listing(items, "stats", False, output, ("CONTAINER", "NAME", "CPU %", "MEM", "DISK", "INODES"), row)


@app.command()
def statsp(
    ctx: typer.Context,
    pod_id: Annotated[str, typer.Option("--id", help="only the pod with this id (or prefix)")] = "",
    label: Annotated[list[str] | None, typer.Option("--label", help="key=value, repeatable")] = None,
    output: Annotated[str, typer.Option("--output", "-o", help="table or json")] = "table",
    seconds: Annotated[float, typer.Option("--seconds", "-s", help="sampling interval for the CPU rate")] = 1.0,
) -> None:
    """Show the resource usage of pods."""
    if output not in ("table", "json"):
        raise fail(f"--output {output!r}: expected table or json")
    request = ListPodSandboxStatsRequest(filter=PodSandboxStatsFilter(id=pod_id,
                                                                      label_selector=parse_labels(label or [])))
    items = sampled(lambda: call_runtime(ctx, lambda stub: stub.list_pod_sandbox_stats(request)).stats, seconds)

    def row(item: Any) -> tuple[str, ...]:
        attributes, linux = item.attributes, item.linux
        memory = linux.memory if linux else None
        return (attributes.metadata.name if attributes and attributes.metadata else "",
                attributes.id[:13] if attributes else "", cpu_percent(linux.cpu if linux else None),
                human_size(memory.working_set_bytes.value, 4) if memory and memory.working_set_bytes else "")

    print_listing(items, "stats", False, output, ("POD", "POD ID", "CPU %", "MEM"), row)
