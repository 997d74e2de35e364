"""Commands crirt's services send each other on the bus (no CRI RPC has them): a service asks another through
the bus instead of holding a reference to it, and the work runs under the bus's locks like any RPC's."""

from __future__ import annotations

from crirt.commands.base import Command, Result
from crirt.model.types import RequiredId


class PodContainersResult(Result):
    """Acknowledges that the pod's containers were dealt with."""


class KillPodContainersCommand(Command):
    """SIGKILL every running container of a pod at once and wait for their ends (StopPodSandbox's first step;
    the kubelet has given each container its grace period already). Idempotent."""

    rpc = "internal.KillPodContainers"
    result = PodContainersResult

    pod_sandbox_id: RequiredId


class RemovePodContainersCommand(Command):
    """Remove every container of a pod, killing those still running (RemovePodSandbox's first step)."""

    rpc = "internal.RemovePodContainers"
    result = PodContainersResult

    pod_sandbox_id: RequiredId
