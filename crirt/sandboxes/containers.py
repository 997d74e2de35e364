"""The one thing pod sandboxes need from containers: stop or remove all of a pod's containers.

StopPodSandbox and RemovePodSandbox call this interface first. ``crirt.containers.service.ContainerService``
implements it; ``build_app`` hands it to the sandbox service. ``NoContainers`` is what a sandbox service built
without one uses: nothing to stop or remove.
"""

from __future__ import annotations

from typing import Protocol


class PodContainers(Protocol):
    """Containers of a pod, as the sandbox lifecycle needs them."""

    async def kill_all(self, sandbox_id: str) -> None:
        """Stop every running container of the pod with SIGKILL at once (the kubelet has already given each
        its grace period). Must be idempotent."""

    async def remove_all(self, sandbox_id: str) -> None:
        """Remove every container of the pod, forcibly (stopping with SIGKILL first if needed)."""


class NoContainers:
    """The stand-in until containers exist: there is never anything to stop or remove."""

    async def kill_all(self, sandbox_id: str) -> None:
        return None

    async def remove_all(self, sandbox_id: str) -> None:
        return None
