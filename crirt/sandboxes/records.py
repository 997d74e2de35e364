"""What crirt remembers about each pod sandbox, and where its files live.

Two tables in the store: ``sandbox_records`` (this module's ``SandboxRecord``, the source of truth, written
first) and ``sandboxes`` (the ``PodSandbox`` listing the hot ListPodSandbox path serves, derived from the record).
On start, crirt rebuilds the listing from the records, so a crash between the two writes is harmless.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from pydantic import Field

from crirt.model.base import Model
from crirt.model.common import LinuxContainerResources, NamespaceOption
from crirt.model.enums import PodSandboxState
from crirt.model.sandbox import (
    LinuxPodSandboxStatus,
    Namespace,
    PodIP,
    PodSandbox,
    PodSandboxConfig,
    PodSandboxMetadata,
    PodSandboxNetworkStatus,
    PodSandboxStatus,
)

RECORDS = "sandbox_records"


class Phase(StrEnum):
    """Where a sandbox is in its life. Every phase but LEFTOVER reserves the sandbox's name."""

    CREATING = "creating"
    """RunPodSandbox is setting it up; a crash here means "undo everything" on the next start."""
    READY = "ready"
    STOPPING = "stopping"
    """StopPodSandbox started; listed as NOTREADY; a crash here means "finish stopping"."""
    STOPPED = "stopped"
    REMOVING = "removing"
    """RemovePodSandbox started; a crash here means "finish removing"."""
    LEFTOVER = "leftover"
    """A failed RunPodSandbox whose undo could not finish (e.g. CNI DEL failed): not listed, name released,
    retried in the background and on every start until nothing is left."""


def name_key(metadata: PodSandboxMetadata) -> str:
    """The reservation key of a sandbox name: (name, namespace, uid, attempt), as the kubelet sees it."""
    return f"{metadata.namespace}/{metadata.name}/{metadata.uid}/{metadata.attempt}"


class SandboxRecord(Model):
    """One sandbox as crirt keeps it; immutable, replaced as a whole on each change."""

    id: str
    config: PodSandboxConfig
    runtime_handler: str = ""
    created_at: int
    phase: Phase
    namespace_options: NamespaceOption
    pinned: list[str] = Field(default_factory=list)
    """Namespace kinds crirt pinned for the pod (net, ipc, uts)."""
    shm: bool = False
    network: str = ""
    """The CNI network's name ("" for a hostNetwork pod)."""
    ips: list[str] = Field(default_factory=list)
    infra: bool = False
    infra_pid: int = 0
    """Host pid of the infra container's init while the pod is ready (0 without one)."""
    cgroup_parent: str = ""
    hostname: str = ""
    resources: LinuxContainerResources | None = None
    overhead: LinuxContainerResources | None = None
    problem: str = ""
    """The last cleanup error, while one is pending."""

    @property
    def name_key(self) -> str:
        assert self.config.metadata is not None
        return name_key(self.config.metadata)

    @property
    def state(self) -> PodSandboxState:
        return PodSandboxState.SANDBOX_READY if self.phase == Phase.READY else PodSandboxState.SANDBOX_NOTREADY

    @property
    def listed(self) -> bool:
        return self.phase not in (Phase.CREATING, Phase.LEFTOVER)

    def status(self) -> PodSandboxStatus:
        """The sandbox as PodSandboxStatus shows it."""
        network = PodSandboxNetworkStatus(ip=self.ips[0] if self.ips else "",
                                          additional_ips=[PodIP(ip=ip) for ip in self.ips[1:]])
        return PodSandboxStatus(
            id=self.id, metadata=self.config.metadata, state=self.state, created_at=self.created_at,
            network=network, linux=LinuxPodSandboxStatus(namespaces=Namespace(options=self.namespace_options)),
            labels=self.config.labels, annotations=self.config.annotations, runtime_handler=self.runtime_handler)

    def listing(self) -> PodSandbox:
        """The sandbox as ListPodSandbox shows it."""
        return PodSandbox(id=self.id, metadata=self.config.metadata, state=self.state, created_at=self.created_at,
                          labels=self.config.labels, annotations=self.config.annotations,
                          runtime_handler=self.runtime_handler)


@dataclass(frozen=True)
class PodPaths:
    """The files of one pod under ``<state>/pods/<id>/`` (a shared mount, see crirt.network.netns)."""

    pods_dir: Path
    sandbox_id: str

    @property
    def dir(self) -> Path:
        return self.pods_dir / self.sandbox_id

    def namespace(self, kind: str) -> Path:
        return self.dir / kind

    @property
    def shm(self) -> Path:
        return self.dir / "shm"

    @property
    def hostname(self) -> Path:
        return self.dir / "hostname"

    @property
    def hosts(self) -> Path:
        return self.dir / "hosts"

    @property
    def resolv_conf(self) -> Path:
        return self.dir / "resolv.conf"

    @property
    def infra_bundle(self) -> Path:
        return self.dir / "infra"
