"""What the container service needs to know of pod sandboxes, as a small interface (the sandbox service
implements it): the service never reads the sandbox service's tables."""

from __future__ import annotations

from typing import Protocol

from crirt.sandboxes.records import PodPaths, SandboxRecord


class Pods(Protocol):
    def find(self, wanted: str) -> SandboxRecord | None:
        """The listed pod sandbox with id ``wanted`` or the one whose id starts with it; InvalidArgument when
        the prefix is ambiguous."""

    def paths(self, sandbox_id: str) -> PodPaths:
        """Where the pod's files (pinned namespaces, hostname, hosts, resolv.conf, /dev/shm) are."""
